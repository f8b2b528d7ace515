"""Checkpoint -> npsam3 bundle converters. Needs the ``convert`` extra (torch + sam3).

``export_bundle`` and ``export_detector`` are imported on first use, so that importing the
package (e.g. for ``npsam3-convert --help``) does not import torch.
"""

__all__ = ["export_bundle", "export_detector"]


def __getattr__(name):
    if name == "export_bundle":
        from .bundle import export_bundle
        return export_bundle
    if name == "export_detector":
        from .detector import export_detector
        return export_detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
