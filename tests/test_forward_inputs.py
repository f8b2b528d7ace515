"""forward_grounding names the argument and the expected shape when given wrong inputs."""

import numpy as np
import pytest

from .conftest import random_inputs


@pytest.fixture(scope="module")
def inputs():
    return random_inputs(0, (8, 8))


def _poke(x, index, value):
    """A copy of x with one element set (the fixture's arrays are shared between cases)."""
    x = x.copy()
    x[index] = value
    return x


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(backbone_fpn=a["backbone_fpn"][:2]), "backbone_fpn must be a list of three"),
    (lambda a: a["backbone_fpn"].__setitem__(0, np.zeros((1, 256, 30, 32), np.float32)),
     r"backbone_fpn\[0\] must have shape \[1,256,32,32\]"),
    (lambda a: a.update(language_features=np.zeros((32, 256), np.float32)),
     "language_features must have 3 dimensions"),
    (lambda a: a.update(language_features=np.zeros((32, 1, 128), np.float32)),
     r"language_features must have shape \[L,1,256\]"),
    (lambda a: a.update(language_mask=np.zeros((1, 32), np.int64)), "language_mask must be bool"),
    (lambda a: a.update(language_mask=np.zeros((1, 31), bool)), r"language_mask must have shape \[1,32\]"),
    (lambda a: a.update(boxes=np.zeros((2, 3), np.float32)), r"boxes must have shape \[N,4\]"),
    (lambda a: a.update(boxes=np.full((1, 4), np.nan, np.float32)), "boxes contains NaN"),
    (lambda a: a["backbone_fpn"].__setitem__(1, _poke(a["backbone_fpn"][1], (0, 3, 5, 7), np.nan)),
     r"backbone_fpn\[1\] contains NaN"),
    (lambda a: a["backbone_fpn"].__setitem__(2, _poke(a["backbone_fpn"][2], (0, 0, 0, 0), -np.inf)),
     r"backbone_fpn\[2\] contains NaN or infinite"),
    (lambda a: a.update(language_features=_poke(a["language_features"], (4, 0, 9), np.inf)),
     "language_features contains NaN or infinite"),
    (lambda a: a.update(boxes=np.zeros((2, 4), np.float32), box_labels=np.ones(3, bool)),
     r"box_labels must have shape \[2\]"),
    (lambda a: a.update(point_labels=np.ones(1, bool)), "point_labels given without points"),
    (lambda a: a.update(points=np.zeros((1, 2), np.int32)), "points must be floating point"),
    (lambda a: a.update(mask_queries=[200]), "mask_queries must index the 200 queries"),
])
def test_bad_inputs_raise_value_error(np_detector, inputs, change, message):
    fpn, feats, mask = inputs
    args = dict(backbone_fpn=list(fpn), language_features=feats, language_mask=mask)
    change(args)
    with pytest.raises(ValueError, match=message):
        np_detector.forward_grounding(**args)
