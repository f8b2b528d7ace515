"""One query on an encoded image -> the result dict of ``npsam3.results`` (the CLI's JSON schema).

Shared by ``npsam3 segment`` / ``object`` and every other front end (a labelling job, a server):
the processor or predictor does the work, these functions only turn prompts in pixels into its
inputs and its outputs into instances (COCO RLE, best first for concepts).
"""

import numpy as np

from .results import result_json
from .rle import rle_encode


def concept_instances(proc, state, prompt=None, exemplars=(), draw=None):
    """Segment a concept on ``state`` (from ``proc.set_image``; its earlier prompts are replaced).

    proc: a Sam3Processor (``sort_by_score=True`` for best-first results); prompt: text or None;
    exemplars: [(pixel box [x0, y0, x1, y1] inside the image, positive bool)]; draw: optional
    ``draw(i, mask [H, W] bool, box, score)``, called once per full-size mask, worst first (so an
    overlay puts the best on top). Only one full-size mask exists at a time.
    Returns (boxes [N, 4] pixels, scores [N], rles: N COCO RLE dicts)."""
    height, width = state["original_height"], state["original_width"]
    proc.set_prompts(state, prompt,
                     [[(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
                       (y1 - y0) / height] for (x0, y0, x1, y1), _ in exemplars],
                     [positive for _, positive in exemplars])
    return selected_instances(proc, state, draw)


def selected_instances(proc, state, draw=None):
    """The instances ``proc`` last selected on ``state`` (after a prompt, or a re-selection by
    ``proc.set_confidence_threshold``): (boxes, scores, rles) as ``concept_instances``."""
    boxes, scores = state["boxes"], state["scores"]
    rles = [None] * len(scores)
    order = range(len(scores) - 1, -1, -1)
    for i, mask in zip(order, proc.iter_masks(state, order)):
        rles[i] = rle_encode(mask)
        if draw is not None:
            draw(i, mask, boxes[i], scores[i])
    return boxes, scores, rles


def concept_result(image_name, size_hw, prompt, exemplars, boxes, scores, rles, **extra):
    """The "npsam3-segment" result dict of ``concept_instances``' output; ``extra`` adds top-level
    keys (threshold, timings, ...)."""
    return result_json(image_name, size_hw, boxes, scores, rles, extra={
        "prompt": prompt,
        "exemplars": [{"box": [float(v) for v in box], "positive": bool(positive)}
                      for box, positive in exemplars], **extra})


def mask_box(mask):
    """The pixel box [x0, y0, x1, y1] of a bool mask's pixels ([0, 0, 0, 0] when empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def object_result(image_name, size_hw, points, boxes, masks, ious, multimask, fill_holes, **extra):
    """The "npsam3-object" result dict of an interactive prediction.

    points: [(xy pixels, label 1 or 0)]; boxes: the pixel boxes given (one object each); masks:
    the predictor's masks, any shape ending in [H, W] (bool or logits > 0); ious: its predicted
    IoUs, the same leading shape."""
    height, width = size_hw
    masks, ious = np.asarray(masks).reshape(-1, height, width), np.asarray(ious).reshape(-1)
    if masks.dtype != bool:  # logits (bool masks, already thresholded, are used as they are)
        masks = masks > 0
    per_object = len(masks) // max(len(boxes), 1)
    return result_json(image_name, size_hw, [mask_box(m) for m in masks], ious, list(masks),
                       kind="object", extra={
                           "points": [{"xy": [float(v) for v in xy], "label": int(label)}
                                      for xy, label in points],
                           "boxes": [[float(v) for v in b] for b in boxes],
                           "multimask": bool(multimask), "fill_holes": bool(fill_holes), **extra},
                       fields=[{"object": i // per_object, "mask": i % per_object}
                               for i in range(len(masks))])
