"""npsam3: SAM3-family concept segmentation without PyTorch (NumPy detector, onnxruntime encoders)."""

from .detector import Detector, load_detector
from .errors import Npsam3Error

__version__ = "0.1.0"
__all__ = ["Detector", "Npsam3Error", "load_detector"]
