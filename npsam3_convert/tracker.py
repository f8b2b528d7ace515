"""The interactive predictor's SAM heads of a built Sam3Image -> float32 arrays for the bundle's
tracker.safetensors (the reference's names, conv_s0 / conv_s1 left to the tracker-neck graph)."""

import torch

from npsam3.errors import Npsam3Error
from npsam3.tracker.config import MASK_DECODER, NECK_CONVS, PROMPT_ENCODER, check_weights, infer_config


def tracker_arrays(model):
    """{name: float32 array} of ``sam_prompt_encoder.*`` and ``sam_mask_decoder.*`` of the model's
    interactive predictor, with the configuration they imply; Npsam3Error if any is missing,
    mis-shaped or not finite."""
    state = model.inst_interactive_predictor.model.state_dict()
    heads = {k: v for k, v in state.items()
             if k.startswith((PROMPT_ENCODER, MASK_DECODER)) and not k.startswith(NECK_CONVS)}
    shapes = {k: tuple(v.shape) for k, v in heads.items()}
    cfg = infer_config(shapes)
    check_weights(shapes, cfg, "model")
    bad = sorted(k for k, v in heads.items() if not torch.isfinite(v).all())
    if bad:
        raise Npsam3Error(f"interactive head tensor {bad[0]} contains NaN or infinite values")
    return {k: v.detach().to(torch.float32).contiguous().numpy() for k, v in heads.items()}, cfg
