"""Mask post-processing of SAM3InteractiveImagePredictor._predict: SAM2Transforms.postprocess_masks
(sam3/model/utils/sam1_utils.py) with scikit-image installed, i.e. with the hole filling of
sam3.perflib.connected_components' CPU path (skimage.measure.label, 8-connectivity).

Connected components are found on horizontal runs, not pixels: runs of one row never touch; runs
of adjacent rows touch (8-connectivity) when their column spans overlap once widened by one.
Touching runs are merged by vectorised union-find: every root hooks onto the smallest root it
touches, then pointer jumping flattens the trees, until no touching pair has two roots. A root
only ever points at a smaller index, so the sum of the parents drops at every round that hooks:
it terminates, and each component ends up labelled by its first run in raster order.
"""

import numpy as np

from .. import nn

f32 = np.float32


def _runs(binary):
    """Horizontal runs of True in a [H, W] bool map, in raster order: rows, starts, stops [R]
    (stop = one past the last column)."""
    h, w = binary.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = binary
    edges = np.diff(padded, axis=1)  # [H, W + 1]: +1 at a run's start, -1 one past its end
    rows, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)
    return rows, starts, stops


def _touching_runs(rows, starts, stops, width):
    """All pairs (u, v) of runs, v in the row below u, that touch with 8-connectivity:
    start_v <= stop_u and start_u <= stop_v. For each u they are a contiguous index range."""
    k = width + 2  # keys row * k + column order runs as raster order, rows never overlap
    lo = np.searchsorted(rows * k + stops, (rows + 1) * k + starts)
    hi = np.searchsorted(rows * k + starts, (rows + 1) * k + stops, "right")
    n = np.maximum(hi - lo, 0)
    u = np.repeat(np.arange(len(rows)), n)
    v = lo[u] + np.arange(len(u)) - np.repeat(np.cumsum(n) - n, n)
    return u, v


def _roots(n, u, v):
    """Union-find over n runs with touching pairs (u, v): the root (smallest run index) of each."""
    parent = np.arange(n)
    while len(u):
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:  # pointer jumping until every run points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def _paint(shape, rows, starts, stops, values):
    """[H, W] int32 map with values[i] on the pixels of run i, 0 elsewhere."""
    d = np.zeros((shape[0], shape[1] + 1), np.int32)
    d[rows, starts] = values
    d[rows, stops] = -values  # never a start: runs of a row are at least one pixel apart
    return np.cumsum(d, 1, dtype=np.int32)[:, :-1]


def connected_components(binary):
    """connected_components_cpu_single of a [H, W] bool map: labels [H, W] int32 as
    skimage.measure.label (0 off, components numbered from 1 in raster order of their first
    pixel) and the area of each pixel's component [H, W] int32 (0 off)."""
    rows, starts, stops = _runs(binary)
    roots = _roots(len(rows), *_touching_runs(rows, starts, stops, binary.shape[1]))
    _, component = np.unique(roots, return_inverse=True)
    areas = np.bincount(component, weights=stops - starts).astype(np.int32)
    return (_paint(binary.shape, rows, starts, stops, component.astype(np.int32) + 1),
            _paint(binary.shape, rows, starts, stops, areas[component]))


def fill_holes(mask_logits, max_hole_area, mask_threshold=0.0):
    """Background components (logit <= mask_threshold, 8-connected) of at most max_hole_area
    pixels, touching the border or not, get logit mask_threshold + 10: [..., h, w] -> a copy."""
    out = np.array(mask_logits, f32)
    for m in out.reshape(-1, *out.shape[-2:]):
        labels, areas = connected_components(m <= mask_threshold)
        m[(labels > 0) & (areas <= max_hole_area)] = f32(mask_threshold + 10.0)
    return out


def postprocess_masks(masks, orig_hw, max_hole_area=256.0, mask_threshold=0.0):
    """SAM2Transforms.postprocess_masks: low-res logits [B, C, h, w] -> [B, C, H, W] logits,
    holes filled (skipped for max_hole_area <= 0, as the reference without scikit-image), then
    resized bilinearly (align_corners=False) to orig_hw = (H, W)."""
    if max_hole_area > 0:
        masks = fill_holes(masks, max_hole_area, mask_threshold)
    return nn.interpolate_bilinear(masks, orig_hw)
