"""DotProductScoring (sam3/model/model_misc.py): query logits as a scaled dot product with the
mean-pooled prompt. Weights under ``dot_prod_scoring.``."""

import numpy as np

from .. import nn

f32 = np.float32


def dot_product_scoring(p, hs, prompt, prompt_mask, clamp_max_val=12.0):
    """hs [..., Q, C], prompt [L, C], prompt_mask [L] (True = padding) -> logits [..., Q, 1],
    clamped to [-12, 12] like the reference (which clamps in place)."""
    prompt = nn.mlp(prompt, p, "prompt_mlp", 2, residual=True, out_norm="prompt_mlp.out_norm")
    valid = (~prompt_mask).astype(f32)[:, None]
    pooled = (prompt * valid).sum(0) / max(valid.sum(), f32(1))
    proj_prompt = nn.linear(pooled, p, "prompt_proj")  # [d_proj]
    proj_hs = nn.linear(hs, p, "hs_proj")  # [..., Q, d_proj]
    scores = (proj_hs @ proj_prompt[:, None]) * f32(1 / np.sqrt(proj_prompt.shape[0]))
    return np.clip(scores, -clamp_max_val, clamp_max_val)
