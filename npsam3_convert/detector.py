"""export_detector: a checkpoint's detector tensors -> detector.safetensors + manifest.json."""

from pathlib import Path

import torch
from safetensors.numpy import save_file

from npsam3.detector import DETECTOR_FILE
from npsam3.detector.config import PREFIXES, check_weights, infer_config
from npsam3.errors import Npsam3Error

from .checkpoint import load_checkpoint, normalize_state_dict
from .staging import staged_bundle, write_manifest


def detector_arrays(state, source):
    """The detector's tensors of a normalised state dict as float32 NumPy arrays, with the
    configuration they imply; raises Npsam3Error listing whatever is missing or mis-shaped."""
    det = {k: v for k, v in state.items() if k.startswith(PREFIXES)}
    if not det:
        sample = ", ".join(sorted(state)[:3])
        raise Npsam3Error(f"{source} holds no SAM3 detector weights (nothing under "
                          f"{', '.join(PREFIXES)}; its keys look like {sample}): "
                          "not a SAM3-family checkpoint")
    shapes = {k: tuple(v.shape) for k, v in det.items()}
    cfg = infer_config(shapes)
    check_weights(shapes, cfg, source)
    arrays = {}
    for k, v in det.items():
        if not v.is_floating_point():
            raise Npsam3Error(f"{source}: detector tensor {k} has dtype {v.dtype}, expected float")
        a = v.detach().to(torch.float32).contiguous().numpy()
        if not torch.isfinite(v).all():
            raise Npsam3Error(f"{source}: detector tensor {k} contains NaN or infinite values")
        arrays[k] = a
    return arrays, cfg


def export_detector(state_dict_or_path, out_dir, force=False):
    """Write ``out_dir/detector.safetensors`` (reference key names, float32) and ``manifest.json``.

    state_dict_or_path: a checkpoint file (.pt/.pth) or an in-memory state dict (keys with or
    without ``detector.``; ``tracker.*`` and encoder keys are ignored). Returns the manifest.
    """
    if isinstance(state_dict_or_path, (str, Path)):
        source = Path(state_dict_or_path)
        state = load_checkpoint(source)
    else:
        source = "state dict"
        state = normalize_state_dict(state_dict_or_path, source)
    arrays, cfg = detector_arrays(state, source)
    with staged_bundle(out_dir, force) as tmp:
        save_file(arrays, str(tmp / DETECTOR_FILE))
        return write_manifest(tmp, source={"checkpoint": getattr(source, "name", source)},
                              detector=cfg)
