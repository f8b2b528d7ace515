"""Golden tests of the interactive predictor end to end: sam3's Sam3Image.predict_inst (PyTorch,
built with enable_inst_interactivity, the CPU patches, scikit-image installed so its hole filling
runs) against npsam3's Model.predict_inst on the same bundle's weights and real photos, on both
kernel sets.

Asserted per case: the tracker neck's features and the low-res mask logits within STAGE_TOL
relative, the IoU predictions within IOU_TOL, every final mask with IoU >= MASK_IOU_MIN against
the reference's. Where the reference's own choice is a near-tie (two predicted IoUs within
TIE of each other, for the single-mask fallback), the choice is not compared.
"""

import functools
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from PIL import Image

import npsam3
from npsam3_convert.parity import compare, mask_iou

from .conftest import ASSETS

STAGE_TOL, IOU_TOL, MASK_IOU_MIN, TIE = 1e-5, 1e-5, 0.999, 1e-4

CASES = {  # photo, predict_inst keyword arguments (pixels of the photo unless normalize_coords)
    "one-click": ("coins.jpg", dict(point_coords=[[100, 150]], point_labels=[1])),
    "clicks-pos-neg": ("coffee.jpg", dict(point_coords=[[300, 200], [120, 330], [450, 90]],
                                          point_labels=[1, 0, 1])),
    "box": ("coffee.jpg", dict(box=[150, 100, 450, 300])),
    "box+negative-click": ("chelsea.jpg", dict(box=[40, 30, 400, 280], point_coords=[[200, 150]],
                                               point_labels=[0])),
    "box-batch": ("coins.jpg", dict(box=[[10, 10, 120, 100], [150, 60, 300, 250],
                                         [200, 150, 380, 300]])),
    "box-batch+clicks": ("coins.jpg", dict(box=[[10, 10, 120, 100], [150, 60, 300, 250]],
                                           point_coords=[[[60, 50]], [[220, 150]]],
                                           point_labels=[[1], [0]])),
    "normalized-coords": ("astronaut.jpg", dict(point_coords=[[0.45, 0.3], [0.7, 0.8]],
                                                point_labels=[1, 1], normalize_coords=False)),
    "padding-label": ("chelsea.jpg", dict(point_coords=[[225, 150], [0, 0]], point_labels=[1, -1])),
    "single-mask": ("coffee.jpg", dict(point_coords=[[300, 200], [100, 100]], point_labels=[1, 1],
                                       multimask_output=False)),
    "return-logits": ("coins.jpg", dict(point_coords=[[100, 150]], point_labels=[1],
                                        return_logits=True)),
}


def reference_state(torch_model, photo):
    from sam3.model.sam3_image_processor import Sam3Processor

    return Sam3Processor(torch_model, device="cpu").set_image(
        Image.open(ASSETS / photo).convert("RGB"))


@functools.lru_cache(maxsize=None)
def reference(torch_model, photo, case, fill_holes=True):
    """The reference's (masks, iou_predictions, low_res_masks) for CASES[case] on ``photo``;
    without fill_holes, as the reference runs when scikit-image is not installed."""
    import sam3.perflib.connected_components as cc

    kwargs = {k: np.asarray(v) if isinstance(v, list) else v for k, v in CASES[case][1].items()}
    state = reference_state(torch_model, photo)
    saved = cc.connected_components
    if not fill_holes:
        def no_skimage(*a):
            raise ImportError("No module named 'skimage'")
        cc.connected_components = no_skimage
    try:
        skipped = pytest.warns(UserWarning, match="skimage") if not fill_holes else nullcontext()
        with torch.inference_mode(), skipped:
            return torch_model.predict_inst(state, **kwargs)
    finally:
        cc.connected_components = saved


@functools.lru_cache(maxsize=None)
def np_state(np_model_on, photo):
    return npsam3.Sam3Processor(np_model_on).set_image(ASSETS / photo)


def check_against_reference(ours, ref, return_logits=False):
    masks, iou, low = ours
    ref_masks, ref_iou, ref_low = ref
    assert masks.shape == ref_masks.shape and masks.dtype == np.float32
    assert low.shape == ref_low.shape and iou.shape == ref_iou.shape
    assert compare(low, ref_low)[1] <= STAGE_TOL
    np.testing.assert_allclose(iou, ref_iou, atol=IOU_TOL)
    if return_logits:
        assert compare(masks, ref_masks)[1] <= STAGE_TOL
        return
    assert set(np.unique(masks)) <= {0.0, 1.0}  # float 0/1 masks, as the reference
    flat, ref_flat = masks.reshape(-1, *masks.shape[-2:]), ref_masks.reshape(-1, *masks.shape[-2:])
    for a, b in zip(flat, ref_flat):
        assert mask_iou(a > 0, b > 0) >= MASK_IOU_MIN
    assert 0.01 < ref_flat.mean() < 0.99  # the masks are neither empty nor full


@pytest.mark.parametrize("case", list(CASES))
def test_predict_inst_matches_pytorch(torch_model, np_model_on, case):
    photo, kwargs = CASES[case]
    ours = np_model_on.predict_inst(np_state(np_model_on, photo), **kwargs)
    check_against_reference(ours, reference(torch_model, photo, case),
                            kwargs.get("return_logits", False))
    expected_batch = len(kwargs["box"]) if np.ndim(kwargs.get("box")) == 2 else None
    masks = ours[0]
    assert masks.shape[-2:] == Image.open(ASSETS / photo).size[::-1]
    assert (masks.shape[0] == expected_batch) if expected_batch else masks.ndim == 3


def test_tracker_neck_features_match_pytorch(torch_model, np_model_on):
    state = np_state(np_model_on, "coffee.jpg")
    np_model_on.predict_inst(state, point_coords=[[10, 10]], point_labels=[1])
    ours = state["backbone_out"]["sam2_backbone_out"]
    assert "vision_features" not in state["backbone_out"]  # the trunk output is dropped
    ref = reference_state(torch_model, "coffee.jpg")["backbone_out"]["sam2_backbone_out"]
    for a, b in zip(ours["high_res_feats"], ref["backbone_fpn"][:2]):  # conv_s0 / conv_s1 applied
        assert compare(a, b.numpy())[1] <= STAGE_TOL
    no_mem = torch_model.inst_interactive_predictor.model.no_mem_embed.reshape(1, -1, 1, 1)
    assert compare(ours["image_embed"], (ref["backbone_fpn"][2] + no_mem).detach().numpy())[1] <= STAGE_TOL


def test_mask_input_from_a_previous_call(torch_model, np_model_on):
    """Refinement: the best low-res mask of one call is the mask_input of the next."""
    photo, kwargs = CASES["one-click"]
    ref_state = reference_state(torch_model, photo)
    state = np_state(np_model_on, photo)
    with torch.inference_mode():
        _, ref_iou, ref_low = torch_model.predict_inst(
            ref_state, **{k: np.asarray(v) for k, v in kwargs.items()})
    _, iou, low = np_model_on.predict_inst(state, **kwargs)
    best = int(np.argmax(ref_iou))
    assert np.sort(ref_iou)[-1] - np.sort(ref_iou)[-2] > TIE and int(np.argmax(iou)) == best
    more = dict(point_coords=np.array([[100, 150], [300, 60]]), point_labels=np.array([1, 0]),
                multimask_output=False)
    with torch.inference_mode():
        ref = torch_model.predict_inst(ref_state, mask_input=ref_low[best][None], **more)
    check_against_reference(np_model_on.predict_inst(state, mask_input=low[best][None], **more), ref)


@functools.lru_cache(maxsize=None)
def reference_single_masks(torch_model, photo="coins.jpg", trials=8):
    """Seeded prompt sets and the reference's single-mask result for each, with the branch it
    took (None for an argmax tie), computed once for both kernel sets."""
    ref_state = reference_state(torch_model, photo)
    rng = np.random.default_rng(0)
    out = []
    for trial in range(trials):
        n = trial % 4 + 2
        pts = rng.uniform([0, 0], [384, 303], (n, 2)).astype(np.float32)
        labels = rng.integers(0, 2, n)
        labels[0] = 1
        with torch.inference_mode():
            single = torch_model.predict_inst(ref_state, point_coords=pts, point_labels=labels,
                                              multimask_output=False)
            multi = torch_model.predict_inst(ref_state, point_coords=pts, point_labels=labels)
        fallback = any(np.array_equal(single[2][0], m) for m in multi[2])
        top = np.sort(multi[1])
        tie = fallback and top[-1] - top[-2] < TIE  # either choice is right
        out.append((pts, labels, single, None if tie else "best of 1-3" if fallback else "token 0"))
    return out


def test_single_mask_takes_both_stability_branches(torch_model, np_model_on):
    """multimask_output=False keeps mask token 0 when it is stable (>= 0.98), else the best of
    tokens 1-3; seeded prompt sets on a photo hit both, and npsam3 agrees on each."""
    state = np_state(np_model_on, "coins.jpg")
    branches = set()
    for pts, labels, single, branch in reference_single_masks(torch_model):
        if branch is None:
            continue
        branches.add(branch)
        ours = np_model_on.predict_inst(state, point_coords=pts, point_labels=labels,
                                        multimask_output=False)
        check_against_reference(ours, single)
    assert branches == {"token 0", "best of 1-3"}


@pytest.mark.parametrize("fill_holes", [True, False], ids=["fill-holes", "no-fill"])
def test_hole_filling_on_and_off(torch_model, np_model_on, fill_holes):
    photo, kwargs = CASES["clicks-pos-neg"]
    ours = np_model_on.predict_inst(np_state(np_model_on, photo), fill_holes=fill_holes, **kwargs)
    check_against_reference(ours, reference(torch_model, photo, "clicks-pos-neg", fill_holes))
    if not fill_holes:  # the case has holes to fill: the two runs differ
        filled = reference(torch_model, photo, "clicks-pos-neg", True)[0]
        assert (filled != ours[0]).any()


BATCH = (["coins.jpg", "chelsea.jpg"], [[[100, 150]], [[225, 150], [30, 40]]], [[1], [1, 0]])


@functools.lru_cache(maxsize=None)
def reference_batch(torch_model):
    from sam3.model.sam3_image_processor import Sam3Processor

    photos, coords, labels = BATCH
    pil = [Image.open(ASSETS / p).convert("RGB") for p in photos]
    with torch.inference_mode():
        return torch_model.predict_inst_batch(
            Sam3Processor(torch_model, device="cpu").set_image_batch(pil),
            [np.array(c) for c in coords], [np.array(l) for l in labels])


def test_predict_inst_batch_and_the_standalone_predictor(torch_model, np_model_on):
    photos, coords, labels = BATCH
    images = [np.asarray(Image.open(ASSETS / p).convert("RGB")) for p in photos]
    ref = reference_batch(torch_model)
    batch = npsam3.Sam3Processor(np_model_on).set_image_batch(images)
    ours = np_model_on.predict_inst_batch(batch, coords, labels)
    for i in range(2):
        check_against_reference(tuple(r[i] for r in ours), tuple(r[i] for r in ref))
    predictor = npsam3.InteractivePredictor(np_model_on)
    predictor.set_image(images[1])  # an [H, W, 3] array: the size is right (the reference's HWC bug)
    alone = predictor.predict(point_coords=coords[1], point_labels=labels[1])
    assert alone[0].shape == (3, 300, 451)
    check_against_reference(alone, tuple(r[1] for r in ref))
    assert predictor.get_image_embedding().shape == (1, 256, 72, 72)


@pytest.mark.parametrize("kwargs, message", [
    (dict(point_coords=[[500, 150]], point_labels=[1]), "a point lies outside the 384x303 image"),
    (dict(point_coords=[[0.5, 1.2]], point_labels=[1], normalize_coords=False), "outside \\[0, 1\\]"),
    (dict(point_coords=[[10, 10]], point_labels=[2]), "must be 1 \\(positive\\), 0"),
    (dict(), "give a prompt"),
    (dict(point_coords=[[10, 10]]), "go together"),
    (dict(box=[50, 50, 50, 80]), "zero area or is inverted"),
    (dict(box=[90, 50, 20, 80]), "zero area or is inverted"),
    (dict(box=[500, 400, 600, 500]), "entirely outside"),
    (dict(box=[1, 2, 3]), "box must be"),
    (dict(point_coords=[[10, 10]], point_labels=[1], mask_input=np.zeros((1, 256, 256))),
     "mask_input must be \\[1, 288, 288\\]"),
    (dict(point_coords=[[10, 10], [20, 20]], point_labels=[1]), "2 points but point_labels"),
    (dict(point_coords=[[np.nan, 10]], point_labels=[1]), "NaN"),
    (dict(point_coords=[[10, 10]], point_labels=[1], box=[[1, 1, 9, 9], [2, 2, 8, 8]]),
     None),  # one set of clicks for two boxes: allowed, repeated per box
])
def test_bad_interactive_prompts(np_model, kwargs, message):
    state = npsam3.Sam3Processor(np_model).set_image(ASSETS / "coins.jpg")
    if message is None:
        assert np_model.predict_inst(state, **kwargs)[0].shape == (2, 3, 303, 384)
        return
    with pytest.raises(npsam3.Npsam3Error, match=message):
        np_model.predict_inst(state, **kwargs)


def test_detection_only_bundles_refuse_interactive_calls(detection_only_bundle):
    model = npsam3.load_model(detection_only_bundle)
    assert model.manifest["interactive"] is False
    assert "tracker.safetensors" not in model.manifest["files"]
    state = npsam3.Sam3Processor(model).set_image(ASSETS / "coins.jpg")
    assert state["backbone_out"]["vision_features"] is None  # no trunk output kept for nothing
    with pytest.raises(npsam3.Npsam3Error, match="is detection-only"):
        model.predict_inst(state, point_coords=[[10, 10]], point_labels=[1])
    with pytest.raises(npsam3.Npsam3Error, match="is detection-only"):
        npsam3.InteractivePredictor(model)
