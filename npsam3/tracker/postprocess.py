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
RESIZE_BAND = 64  # output rows per band of resize_masks


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


def _components(binary):
    """Runs of a [H, W] bool map (rows, starts, stops), each run's component index (components
    in raster order of their first pixel) and each component's area."""
    rows, starts, stops = _runs(binary)
    roots = _roots(len(rows), *_touching_runs(rows, starts, stops, binary.shape[1]))
    _, component = np.unique(roots, return_inverse=True)
    areas = np.bincount(component, weights=stops - starts).astype(np.int32)
    return (rows, starts, stops), component.astype(np.int32), areas


def connected_components(binary):
    """connected_components_cpu_single of a [H, W] bool map: labels [H, W] int32 as
    skimage.measure.label (0 off, components numbered from 1 in raster order of their first
    pixel) and the area of each pixel's component [H, W] int32 (0 off)."""
    runs, component, areas = _components(binary)
    return _paint(binary.shape, *runs, component + 1), _paint(binary.shape, *runs, areas[component])


def fill_holes(mask_logits, max_hole_area, mask_threshold=0.0):
    """Background components (logit <= mask_threshold, 8-connected) of at most max_hole_area
    pixels, touching the border or not, get logit mask_threshold + 10: [..., h, w] -> a copy.
    (The reference's (labels > 0) & (areas <= max_hole_area), painted from the runs directly.)"""
    out = np.array(mask_logits, f32)
    for m in out.reshape(-1, *out.shape[-2:]):
        runs, component, areas = _components(m <= mask_threshold)
        is_hole = _paint(m.shape, *runs, (areas <= max_hole_area)[component].astype(np.int32))
        m[is_hole > 0] = f32(mask_threshold + 10.0)
    return out


def resize_masks(masks, orig_hw, threshold=None):
    """F.interpolate(masks, orig_hw, mode="bilinear", align_corners=False) of logits [..., h, w]
    -> float32 [..., H, W]; or, with a threshold, the bool masks logit > threshold, with no float
    [..., H, W] in memory. The arithmetic of nn.interpolate_bilinear (along rows, then columns),
    in bands of output rows over threads: a band needs only the source rows under it."""
    (h, w), (oh, ow) = masks.shape[-2:], orig_hw
    x0, x1, wx0, wx1 = nn._linear_source_indices(w, ow)
    y0, y1, wy0, wy1 = nn._linear_source_indices(h, oh)
    flat = masks.reshape(-1, h, w)
    out = np.empty((len(flat), oh, ow), f32 if threshold is None else bool)
    items = [(m, a) for m in range(len(flat)) for a in range(0, oh, RESIZE_BAND)]

    def bands(i, j):
        for m, a in items[i:j]:
            b = min(a + RESIZE_BAND, oh)
            first = y0[a]
            src = flat[m, first:y1[b - 1] + 1]
            rows = src[:, x0] * wx0 + src[:, x1] * wx1
            band = rows[y0[a:b] - first] * wy0[a:b, None] + rows[y1[a:b] - first] * wy1[a:b, None]
            if threshold is None:
                out[m, a:b] = band
            else:
                np.greater(band, f32(threshold), out=out[m, a:b])
    nn.parallel_for(bands, len(items))
    return out.reshape(*masks.shape[:-2], oh, ow)


def postprocess_masks(masks, orig_hw, max_hole_area=256.0, mask_threshold=0.0, threshold=None):
    """SAM2Transforms.postprocess_masks: low-res logits [B, C, h, w] -> [B, C, H, W] logits,
    holes filled (skipped for max_hole_area <= 0, as the reference without scikit-image), then
    resized bilinearly (align_corners=False) to orig_hw = (H, W). With a threshold: bool masks
    logit > threshold instead (what _predict makes of them unless return_logits)."""
    if max_hole_area > 0:
        masks = fill_holes(masks, max_hole_area, mask_threshold)
    return resize_masks(masks, orig_hw, threshold)
