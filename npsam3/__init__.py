"""npsam3: SAM3-family concept segmentation without PyTorch (NumPy detector, onnxruntime encoders)."""

from .detector import Detector, load_detector
from .errors import Npsam3Error
from .model import Model, load_model
from .processor import Sam3Processor

__version__ = "0.1.0"
__all__ = ["Detector", "Model", "Npsam3Error", "Sam3Processor", "load_detector", "load_model"]
