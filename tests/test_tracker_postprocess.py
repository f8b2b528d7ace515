"""Hole filling of the interactive masks: npsam3's run-based connected components against
skimage.measure.label, and the whole post-processing against the reference's
SAM2Transforms.postprocess_masks (which uses scikit-image when it is installed)."""

import numpy as np
import pytest
import torch

from npsam3 import nn
from npsam3.tracker.postprocess import (connected_components, fill_holes, postprocess_masks,
                                     resize_masks)

skimage_measure = pytest.importorskip("skimage.measure")

rng = np.random.default_rng(0)


def spiral(n):
    """A 1-pixel wall winding inwards, 1-pixel corridors between its turns: two components of
    ~n^2/2 pixels whose run graphs are long paths (the worst case for label propagation)."""
    a = np.zeros((n, n), bool)
    a[0, 0] = True
    y = x = d = idle = 0
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    while idle < 2:
        dy, dx = steps[d]
        inside = lambda i, j: 0 <= i < n and 0 <= j < n
        if (inside(y + dy, x + dx) and not a[y + dy, x + dx]
                and not (inside(y + 2 * dy, x + 2 * dx) and a[y + 2 * dy, x + 2 * dx])):
            y, x, idle = y + dy, x + dx, 0
            a[y, x] = True
        else:
            d, idle = (d + 1) % 4, idle + 1
    return a


def serpentine(h, w):
    """Rows of True joined alternately at the right and the left end: one snake component."""
    a = np.zeros((h, w), bool)
    a[::2] = True
    a[1::4, -1] = True
    a[3::4, 0] = True
    return a


yy, xx = np.mgrid[:288, :288]
MAPS = {
    **{f"random {d}": rng.random((288, 288)) < d for d in (0.05, 0.3, 0.5, 0.59, 0.7, 0.95)},
    "noisy logits <= 0": rng.standard_normal((288, 288)) + 0.3 * np.sin(xx / 9.0) <= 0,
    "checkerboard": (yy + xx) % 2 == 0,
    "checkerboard 2x2": (yy // 2 + xx // 2) % 2 == 0,
    "diagonal lines": (yy + xx) % 3 == 0,
    "anti-diagonal lines": (yy - xx) % 4 == 0,
    "horizontal stripes": yy % 2 == 0,
    "vertical stripes": xx % 2 == 0,
    "spiral": spiral(288),
    "spiral complement": ~spiral(288),
    "serpentine": serpentine(288, 288),
    "all background": np.ones((288, 288), bool),
    "all foreground": np.zeros((288, 288), bool),
    "single pixel": (yy == 100) & (xx == 200),
    "corners": ((yy == 0) | (yy == 287)) & ((xx == 0) | (xx == 287)),
    "odd shape": rng.random((37, 53)) < 0.5,
    "one row": rng.random((1, 61)) < 0.5,
    "one column": rng.random((61, 1)) < 0.5,
}


@pytest.mark.parametrize("name", list(MAPS))
def test_connected_components_match_skimage(name):
    binary = MAPS[name]
    labels, areas = connected_components(binary)
    want = skimage_measure.label(binary)  # the default on 2-D: 8-connectivity
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_array_equal(areas, np.bincount(want.ravel())[want] * (want > 0))


def test_spiral_is_one_long_component():
    """The adversarial maps are what they claim (else the test above proves less)."""
    assert skimage_measure.label(MAPS["spiral"]).max() == 1
    assert skimage_measure.label(MAPS["serpentine"]).max() == 1
    assert MAPS["spiral"].sum() > 288 * 288 // 3


def planted_holes():
    """[1, 3, 288, 288] logits: a foreground disc holding background squares of area 255, 256,
    257 and 16 (filled iff area <= 256), background pockets at the border (filled too: the
    reference does not ask for holes to be enclosed), noisy mask logits, and a smooth mask."""
    disc = np.where((yy - 144) ** 2 + (xx - 144) ** 2 < 120 ** 2, 4.0, -4.0)
    for (y, x), (h, w) in zip([(60, 100), (100, 170), (170, 90), (200, 200)],
                              [(15, 17), (16, 16), (16, 16), (4, 4)]):
        disc[y:y + h, x:x + w] = -2.0
    disc[170, 106] = -2.0  # the third square grows to 257 pixels
    disc[:, :3] = 3.0
    disc[100:110, :2] = -1.0  # a 20-pixel pocket on the left border
    noisy = rng.standard_normal((288, 288)) + 0.5
    smooth = np.sin(yy / 17.0) * np.cos(xx / 23.0) * 5 + 1
    return np.stack([disc, noisy, smooth]).astype(np.float32)[None]


def reference_postprocess(masks, orig_hw, max_hole_area):
    from sam3.model.utils.sam1_utils import SAM2Transforms

    transforms = SAM2Transforms(1008, 0.0, max_hole_area=max_hole_area)
    with torch.no_grad():
        return transforms.postprocess_masks(torch.from_numpy(masks), orig_hw).numpy()


def test_vectorised_reference_components_equal_sam3s():
    """npsam3_convert.reference patches sam3's CPU connected components (a Python loop over
    components) with a vectorised twin; the two agree label for label and size for size."""
    from npsam3_convert import reference

    reference.patch_sam3_for_cpu()
    rng = np.random.default_rng(7)
    for density in (0.1, 0.5, 0.9):
        values = torch.from_numpy((rng.random((60, 70)) < density).astype(np.uint8))
        for a, b in zip(reference._connected_components_cpu_single(values),
                        reference.SAM3_CONNECTED_COMPONENTS(values)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("max_hole_area", [256.0, 0.0, 20.0])
def test_fill_holes_is_the_references(max_hole_area):
    masks = planted_holes()
    want = reference_postprocess(masks, (288, 288), max_hole_area)  # same size: no resampling
    ours = fill_holes(masks, max_hole_area) if max_hole_area > 0 else masks
    np.testing.assert_array_equal(ours, want)
    if max_hole_area == 256:
        disc = ours[0, 0]
        assert (disc[100:116, 170:186] == 10).all() and (disc[60:75, 100:117] == 10).all()
        assert (disc[170:186, 90:106] < 0).all()  # 257 pixels: stays a hole
        assert (disc[100:110, :2] == 10).all()  # not enclosed, on the border: filled all the same


@pytest.mark.parametrize("orig_hw", [(1008, 1008), (480, 640), (97, 301)])
def test_postprocess_masks_match_reference(orig_hw):
    masks = planted_holes()
    want = reference_postprocess(masks, orig_hw, 256.0)
    ours = postprocess_masks(masks, orig_hw)
    assert ours.shape == want.shape
    assert np.abs(ours - want).max() <= 1e-5 * np.abs(want).max()
    differ = (ours > 0) != (want > 0)
    assert np.all(np.abs(want[differ]) < 1e-4), "thresholded masks differ away from ties"
    np.testing.assert_array_equal(postprocess_masks(masks, orig_hw, threshold=0.0), ours > 0)


@pytest.mark.parametrize("orig_hw", [(1008, 1008), (480, 640), (97, 301), (288, 288), (1, 1)])
def test_resize_masks_is_nn_interpolate_bilinear(orig_hw):
    """Bands of output rows, same arithmetic: bitwise equal; thresholded the same way."""
    masks = planted_holes()
    want = nn.interpolate_bilinear(masks, orig_hw)
    np.testing.assert_array_equal(resize_masks(masks, orig_hw), want)
    np.testing.assert_array_equal(resize_masks(masks, orig_hw, 0.0), want > 0)
