"""MaskDecoder (sam3/sam/mask_decoder.py) as Sam3TrackerBase._build_sam_heads builds it: high-res
features, an object-score token with an MLP head, sigmoid IoU head, and in single-mask mode the
dynamic fallback to the best multimask output when token 0's mask is unstable.
Weights under ``sam_mask_decoder.``.

conv_s0 / conv_s1 are not applied here: callers pass high_res_features already projected
(Sam3Processor.set_image does the same before predict_inst).
"""

import numpy as np

from .. import nn
from .transformer import two_way_transformer

f32 = np.float32
BAND_ROWS = 8  # input rows per band of the upscaling: a band's outputs stay in cache


def _mlp(x, p, name):
    """sam3 MLP (ReLU between the layers) with as many layers as the weights have."""
    n = 0
    while f"{name}.layers.{n}.weight" in p:
        n += 1
    return nn.mlp(x, p, name, n)


def upscaled_masks(p, src, feat_s0, feat_s1, hyper_in):
    """output_upscaling with high-res features, then the hypernetwork product: src [C, h, w],
    feat_s0 [C/8, 4h, 4w], feat_s1 [C/4, 2h, 2w], hyper_in [M, C/8] -> masks [M, 4h, 4w] =
    hyper_in @ GELU(ConvT(GELU(LN2d(ConvT(src) + feat_s1))) + feat_s0).

    Output rows 2i, 2i + 1 of each transposed convolution come from input row i alone, so both
    stages run on bands of rows over threads, in cache; the [C/8, 4h, 4w] upscaled embedding
    never exists whole."""
    c, h, w = src.shape
    x = np.empty((c // 4, 2 * h, 2 * w), f32)
    masks = np.empty((len(hyper_in), 4 * h, 4 * w), f32)

    def stage1(i, j):
        for a in range(i, j, BAND_ROWS):
            b = min(a + BAND_ROWS, j)
            y = nn.conv_transpose2d(src[:, a:b], p, "output_upscaling.0")
            y += feat_s1[:, 2 * a:2 * b]
            x[:, 2 * a:2 * b] = nn.gelu(nn.layer_norm_2d(y, p, "output_upscaling.1"))

    def stage2(i, j):
        for a in range(i, j, BAND_ROWS):
            b = min(a + BAND_ROWS, j)
            y = nn.conv_transpose2d(x[:, a:b], p, "output_upscaling.3")
            y += feat_s0[:, 2 * a:2 * b]
            masks[:, 2 * a:2 * b] = (hyper_in @ nn.gelu(y).reshape(len(y), -1)).reshape(
                len(hyper_in), 2 * (b - a), 4 * w)
    nn.parallel_for(stage1, h)
    nn.parallel_for(stage2, 2 * h)
    return masks


def predict_masks(p, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                  high_res_features, num_heads):
    """MaskDecoder.predict_masks: image_embeddings [1, C, h, w], image_pe [1, C, h, w], sparse
    [B, T, C], dense [1 or B, C, h, w], high_res_features [1, C/8, 4h, 4w], [1, C/4, 2h, 2w].

    Returns all mask logits [B, M, 4h, 4w] (M = 4 mask tokens), iou_pred [B, M] (sigmoid),
    mask_tokens_out [B, M, C] and object_score_logits [B, 1].
    """
    b, _, c = sparse_prompt_embeddings.shape
    output_tokens = np.concatenate([p["obj_score_token.weight"], p["iou_token.weight"],
                                    p["mask_tokens.weight"]])
    tokens = np.concatenate([np.broadcast_to(output_tokens, (b, *output_tokens.shape)),
                             sparse_prompt_embeddings], 1)
    # repeat_image's copies of the image embedding are a broadcast over the batch here
    src = image_embeddings + dense_prompt_embeddings
    transformer = {k[12:]: v for k, v in p.items() if k.startswith("transformer.")}
    hs, src = two_way_transformer(transformer, src, image_pe, tokens, num_heads)
    num_mask_tokens = len(p["mask_tokens.weight"])
    iou_token_out, mask_tokens_out = hs[:, 1], hs[:, 2:2 + num_mask_tokens]

    h, w = image_embeddings.shape[-2:]
    feat_s0, feat_s1 = (f[0] for f in high_res_features)
    hyper_in = np.stack([_mlp(mask_tokens_out[:, i], p, f"output_hypernetworks_mlps.{i}")
                         for i in range(num_mask_tokens)], 1)  # [B, M, C/8]
    masks = np.stack([upscaled_masks(p, keys.T.reshape(c, h, w), feat_s0, feat_s1, hyper)
                      for hyper, keys in zip(hyper_in, src)])

    iou_pred = nn.sigmoid(_mlp(iou_token_out, p, "iou_prediction_head"))
    object_score_logits = _mlp(hs[:, 0], p, "pred_obj_score_head")
    return masks, iou_pred, mask_tokens_out, object_score_logits


def get_stability_scores(mask_logits, stability_delta):
    """_get_stability_scores: [..., H, W] -> [...] area(logit > delta) / area(logit > -delta),
    1.0 where the second area is empty."""
    flat = mask_logits.reshape(*mask_logits.shape[:-2], -1)
    area_i = np.count_nonzero(flat > f32(stability_delta), -1).astype(f32)
    area_u = np.count_nonzero(flat > -f32(stability_delta), -1).astype(f32)
    return np.where(area_u > 0, area_i / np.maximum(area_u, 1), f32(1))


def dynamic_multimask_via_stability(all_mask_logits, all_iou_scores, stability_delta,
                                    stability_thresh):
    """_dynamic_multimask_via_stability: per batch entry, token 0's mask and IoU if its stability
    is >= stability_thresh, else those of the multimask token (1..3) with the highest predicted
    IoU (the first on ties) -> masks [B, 1, H, W], iou [B, 1]."""
    batch = np.arange(len(all_iou_scores))
    best = np.argmax(all_iou_scores[:, 1:], -1) + 1
    stability = get_stability_scores(all_mask_logits[:, 0], stability_delta)
    choice = np.where(stability >= f32(stability_thresh), 0, best)
    return all_mask_logits[batch, choice][:, None], all_iou_scores[batch, choice][:, None]


def forward(p, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
            multimask_output, high_res_features, num_heads, stability_delta, stability_thresh):
    """MaskDecoder.forward in eval mode (inputs as predict_masks). Returns masks [B, K, 4h, 4w],
    iou_pred [B, K], sam_tokens_out [B, K, C] (K = 3 with multimask_output, else 1: the dynamic
    choice for masks and IoU, always token 0 for sam_tokens_out) and object_score_logits [B, 1]."""
    masks, iou_pred, mask_tokens_out, object_score_logits = predict_masks(
        p, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
        high_res_features, num_heads)
    if multimask_output:
        return masks[:, 1:], iou_pred[:, 1:], mask_tokens_out[:, 1:], object_score_logits
    masks, iou_pred = dynamic_multimask_via_stability(masks, iou_pred, stability_delta,
                                                      stability_thresh)
    return masks, iou_pred, mask_tokens_out[:, 0:1], object_score_logits
