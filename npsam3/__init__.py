"""npsam3: SAM3-family segmentation without PyTorch (NumPy detector, onnxruntime encoders).

The public names are imported on first use, so that ``import npsam3`` (and ``npsam3 --help``)
stays instant.
"""

__version__ = "0.1.0"
__all__ = ["Detector", "InteractivePredictor", "Model", "Npsam3Error", "Sam3Processor",
           "load_detector", "load_model"]

_WHERE = {"Detector": "detector", "load_detector": "detector", "Model": "model",
          "load_model": "model", "Npsam3Error": "errors", "Sam3Processor": "processor",
          "InteractivePredictor": "tracker.predictor"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'npsam3' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__():
    return sorted(__all__ + ["__version__"])
