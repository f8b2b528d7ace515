"""Read a SAM3-family checkpoint safely (``torch.load(weights_only=True)``) into a flat state dict.

Published checkpoints are ``{"model": {key: tensor}}`` (sometimes with more top-level entries) with
keys under ``detector.`` (image model) and ``tracker.`` (video tracker, whose SAM heads the
interactive predictor uses); plain state dicts with or without the ``detector.`` prefix are
accepted too.
"""

import pickle
from pathlib import Path

import torch

from npsam3.errors import Npsam3Error

from .variants import canonical_name


def load_checkpoint(path):
    """{key: tensor} of the image model in a .pt/.pth file, named as
    ``variants.canonical_name`` names them (``detector.`` removed, the interactive heads kept as
    ``tracker.*``, the video tracker dropped). Raises Npsam3Error for a missing, unreadable or
    non-checkpoint file."""
    return read_checkpoint(path)[0]


def read_checkpoint(path):
    """(state dict as load_checkpoint gives it, the checkpoint's top-level "meta" dict or None)."""
    path = Path(path)
    if not path.is_file():
        raise Npsam3Error(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on foreign or damaged files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise Npsam3Error(f"{path} is not a plain PyTorch checkpoint (it pickles objects "
                              "other than tensors; refusing to unpickle them)") from None
        raise Npsam3Error(f"{path} is not a readable PyTorch checkpoint "
                          f"(truncated or another format: {first})") from None
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    return normalize_state_dict(ckpt, path), meta if isinstance(meta, dict) else None


def normalize_state_dict(ckpt, source="state dict"):
    """Unwrap ``{"model": ...}`` and rename the keys as ``variants.canonical_name`` (dropping
    what no image model uses); every value must be a tensor."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict) or not ckpt:
        raise Npsam3Error(f"{source} holds no state dict of tensors")
    out = {}
    for key, value in ckpt.items():
        name = canonical_name(key) if isinstance(key, str) else None
        if name is None:
            continue
        if not torch.is_tensor(value):
            raise Npsam3Error(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[name] = value
    return out
