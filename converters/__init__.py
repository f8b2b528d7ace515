"""Checkpoint -> npsam3 bundle converters. Needs the ``convert`` extra (torch + sam3)."""

from .detector import export_detector

__all__ = ["export_detector"]
