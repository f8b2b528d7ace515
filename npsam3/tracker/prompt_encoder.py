"""PromptEncoder (sam3/sam/prompt_encoder.py): clicks, box corners and a previous mask -> the mask
decoder's sparse tokens and dense embedding, with PositionEmbeddingRandom for the points and the
image grid. Weights under ``sam_prompt_encoder.``.

In the interactive path (SAM3InteractiveImagePredictor._predict) a box arrives as two points
labelled 2 and 3 placed before the clicks, so PromptEncoder.forward never gets ``boxes`` and
always pads the points: that is the only path here.
"""

import numpy as np

from .. import nn

f32 = np.float32


def pe_encoding(p, coords):
    """PositionEmbeddingRandom._pe_encoding: [..., 2] (x, y) in [0, 1] -> [..., C] (sin, cos)."""
    coords = 2 * coords - 1
    coords = coords @ p["pe_layer.positional_encoding_gaussian_matrix"]
    coords *= f32(2 * np.pi)
    return np.concatenate([np.sin(coords), np.cos(coords)], -1)


def get_dense_pe(p, image_embedding_size):
    """get_dense_pe: the encoding of the pixel centres of an (h, w) grid -> [1, C, h, w]."""
    h, w = image_embedding_size
    y = (np.arange(1, h + 1, dtype=f32) - f32(0.5)) / f32(h)
    x = (np.arange(1, w + 1, dtype=f32) - f32(0.5)) / f32(w)
    grid = np.stack(np.broadcast_arrays(x[None, :], y[:, None]), -1)  # [h, w, 2]
    return pe_encoding(p, grid).transpose(2, 0, 1)[None]


def embed_points(p, points, labels, input_image_size):
    """_embed_points with pad=True: points [B, N, 2] (x, y) in input-image pixels, labels [B, N]
    -> [B, N + 1, C]. The appended pad point (0, 0) has label -1.

    Label -1 replaces the encoding by not_a_point_embed; labels 0..3 (negative, positive, box
    top-left, box bottom-right) add point_embeddings[label]; other labels keep the bare encoding.
    """
    b = len(points)
    points = np.concatenate([points + f32(0.5), np.zeros((b, 1, 2), f32)], 1)
    labels = np.concatenate([labels, -np.ones((b, 1), labels.dtype)], 1)
    h, w = input_image_size
    embedding = pe_encoding(p, points / np.array([w, h], f32))
    embedding[labels == -1] = p["not_a_point_embed.weight"][0]
    known = np.isin(labels, (0, 1, 2, 3))
    table = np.concatenate([p[f"point_embeddings.{i}.weight"] for i in range(4)])
    embedding[known] += table[labels[known].astype(np.int64)]
    return embedding


def embed_masks(p, masks):
    """_embed_masks, mask_downscaling: [B, 1, 4h, 4w] mask logits -> [B, C, h, w]."""
    out = []
    for m in masks:
        x = nn.gelu(nn.layer_norm_2d(nn.conv2d_patch(m, p, "mask_downscaling.0"), p,
                                     "mask_downscaling.1"))
        x = nn.gelu(nn.layer_norm_2d(nn.conv2d_patch(x, p, "mask_downscaling.3"), p,
                                     "mask_downscaling.4"))
        out.append(nn.conv2d(x, p, "mask_downscaling.6"))
    return np.stack(out)


def forward(p, points, labels, masks, input_image_size, image_embedding_size):
    """PromptEncoder.forward(points=(points, labels), boxes=None, masks).

    points [B, N, 2] and labels [B, N], or both None; masks [B', 1, 4h, 4w] logits or None.
    Returns sparse embeddings [B, N + 1, C] ([B', 0, C] without points, B' = 1 without masks)
    and dense embeddings [B', C, h, w], or, without masks, no_mask_embed as a read-only
    [1, C, h, w] broadcast view (the reference expands it to the prompt batch; the decoder
    broadcasts it the same way).
    """
    c = p["no_mask_embed.weight"].shape[1]
    if points is not None:
        sparse = embed_points(p, points, labels, input_image_size)
    else:
        sparse = np.zeros((1 if masks is None else len(masks), 0, c), f32)
    if masks is not None:
        dense = embed_masks(p, masks)
    else:
        dense = np.broadcast_to(p["no_mask_embed.weight"].reshape(1, c, 1, 1),
                                (1, c, *image_embedding_size))
    return sparse, dense
