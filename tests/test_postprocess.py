"""npsam3.postprocess: the windowed, banded full-size mask equals the plain computation."""

import numpy as np
import pytest

from npsam3 import nn
from npsam3.postprocess import mask_to_image


@pytest.mark.parametrize("seed", range(4))
def test_mask_to_image_equals_resize_then_sigmoid(seed):
    rng = np.random.default_rng(seed)
    for trial in range(80):
        h, w = rng.integers(1, 30, 2)
        height, width = rng.integers(1, 90, 2)
        x = (rng.standard_normal((h, w)) - rng.uniform(0, 3)).astype(np.float32)
        if trial % 3 == 0:  # one positive logit in a negative map: a small window
            x[:] = -1
            x[rng.integers(h), rng.integers(w)] = 2
        want = nn.sigmoid(nn.interpolate_bilinear(x, (height, width))) > 0.5
        np.testing.assert_array_equal(mask_to_image(x, height, width, band=7), want)


def test_mask_to_image_of_an_empty_mask():
    assert not mask_to_image(-np.ones((5, 6), np.float32), 40, 30).any()
