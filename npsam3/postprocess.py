"""Sam3Processor._forward_grounding's post-processing, split so masks are made only for kept queries:

    keep, scores = select_queries(out["pred_logits"], out["presence_logit_dec"], threshold)
    boxes = boxes_to_pixels(out["pred_boxes"][0, keep], height, width)
    probs, masks = masks_to_image(mask_logits_of_kept, height, width)   # or, one at a time:
    mask = mask_to_image(mask_logits_of_kept[i], height, width)
"""

import numpy as np

from . import nn

f32 = np.float32


def query_scores(pred_logits, presence_logit, use_presence=True):
    """sigmoid(logit) x sigmoid(presence): [1, Q, 1], [1, 1] -> [Q]."""
    probs = nn.sigmoid(pred_logits[0, :, 0])
    if use_presence:
        probs = probs * nn.sigmoid(presence_logit.reshape(()))
    return probs


def select_queries(pred_logits, presence_logit, threshold, use_presence=True):
    """Indices of the queries scoring above ``threshold`` (strictly, as the reference) and their scores."""
    probs = query_scores(pred_logits, presence_logit, use_presence)
    keep = np.flatnonzero(probs > threshold)
    return keep, probs[keep]


def boxes_to_pixels(boxes_cxcywh, height, width):
    """Normalised cxcywh [N, 4] -> pixel xyxy [N, 4] of an image of the given size."""
    return nn.box_cxcywh_to_xyxy(boxes_cxcywh) * np.array([width, height, width, height], f32)


def mask_to_image(mask_logits, height, width, band=256):
    """One instance's mask logits [h, w] -> bool mask [H, W]: bilinear (align_corners=False) resize,
    then sigmoid > 0.5, as the reference. Only the window of output pixels that a positive logit
    reaches is computed (elsewhere every source is <= 0, and so is their convex combination), in
    bands of ``band`` rows, so the float temporaries stay small however large the image."""
    h, w = mask_logits.shape
    mask = np.zeros((height, width), bool)
    rows, cols = np.flatnonzero((mask_logits > 0).any(1)), np.flatnonzero((mask_logits > 0).any(0))
    if not rows.size:
        return mask
    y_lo, y_hi = nn.bilinear_support(h, height, rows[0], rows[-1])
    x_lo, x_hi = nn.bilinear_support(w, width, cols[0], cols[-1])
    for y in range(y_lo, y_hi, band):
        r = slice(y, min(y + band, y_hi))
        up = nn.interpolate_bilinear(mask_logits, (height, width), r, slice(x_lo, x_hi))
        mask[r, x_lo:x_hi] = nn.sigmoid(up) > 0.5
    return mask


def masks_to_image(mask_logits, height, width):
    """Mask logits [N, h, w] -> probabilities [N, H, W] (bilinear, align_corners=False, then
    sigmoid; the reference calls these "masks_logits") and bool masks [N, H, W] (prob > 0.5)."""
    probs = np.empty((len(mask_logits), height, width), f32)
    for i, m in enumerate(mask_logits):  # one at a time: only [H, W] temporaries
        probs[i] = nn.sigmoid(nn.interpolate_bilinear(m, (height, width)))
    return probs, probs > 0.5


def nms_masks(scores, mask_logits, iou_threshold):
    """Greedy mask NMS as sam3.perflib.nms.nms_masks: on the low-resolution masks (logit > 0),
    highest score first, drop every mask whose IoU with a kept one exceeds ``iou_threshold``.

    scores [N], mask_logits [N, h, w] -> sorted indices of the survivors."""
    binary = (mask_logits > 0).reshape(len(scores), -1).astype(f32)
    inter = binary @ binary.T
    area = np.diag(inter)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1)
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou[i, j] <= iou_threshold for j in keep):
            keep.append(i)
    return np.sort(np.array(keep, np.int64))
