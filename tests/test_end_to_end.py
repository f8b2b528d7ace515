"""End to end against the PyTorch Sam3Processor: a SAM3-family model built from sam3's own classes
(the real detector and neck, a reduced ViT trunk and text encoder, random weights) is exported with
export_bundle; then sam3's Sam3Processor (torch, CPU) and npsam3's Sam3Processor run the same API
calls on real photos. Asserted: identical kept sets, boxes within 0.5 px, scores within 1e-4,
mask IoU >= 0.999 per instance.

The threshold of each case sits in the widest gap between consecutive reference scores around the
85th percentile, so that ~30 instances survive and none is within reach of rounding.
"""

import functools

import numpy as np
import pytest
from PIL import Image

import npsam3
from npsam3_convert.parity import mask_iou

from .conftest import ASSETS

SCORE_TOL, BOX_TOL_PX, MASK_IOU_MIN = 1e-4, 0.5, 0.999

CASES = [  # photo, text (None = boxes only), boxes as normalised cxcywh with labels
    ("coins.jpg", "a coin", []),
    ("coffee.jpg", "a cup", []),
    ("astronaut.jpg", "a person", []),
    ("chelsea.jpg", "a cat", []),
    ("coins.jpg", "a coin", [([0.27, 0.3, 0.2, 0.25], True)]),
    ("coffee.jpg", "a spoon", [([0.5, 0.45, 0.5, 0.5], True), ([0.15, 0.8, 0.2, 0.3], False)]),
    ("astronaut.jpg", None, [([0.45, 0.4, 0.3, 0.5], True)]),
]


def run_prompts(proc, state, text, boxes):
    if text is not None:
        state = proc.set_text_prompt(text, state)
    for box, label in boxes:
        state = proc.add_geometric_prompt(box, label, state)
    return state


def threshold_in_a_gap(scores):
    s = np.sort(scores)[::-1]
    lo, hi = 20, 40
    i = lo + int(np.argmax(s[lo:hi] - s[lo + 1:hi + 1]))
    return float(s[i] + s[i + 1]) / 2, float(s[i] - s[i + 1])


@functools.lru_cache(maxsize=None)
def reference_results(torch_model, case):
    """PyTorch Sam3Processor's scores, boxes and masks of CASES[case] at threshold 0 (computed
    once for both kernel sets)."""
    from sam3.model.sam3_image_processor import Sam3Processor as TorchProcessor

    photo, text, boxes = CASES[case]
    image = Image.open(ASSETS / photo).convert("RGB")
    ref_proc = TorchProcessor(torch_model, device="cpu", confidence_threshold=0.0)
    ref = run_prompts(ref_proc, ref_proc.set_image(image), text, boxes)
    return ref["scores"].numpy(), ref["boxes"].numpy(), ref["masks"].numpy()[:, 0]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[
    f"{c[0].split('.')[0]}-{'text' if c[1] else 'boxes'}{'+' + str(len(c[2])) + 'box' if c[1] and c[2] else ''}"
    for c in CASES])
def test_processor_matches_pytorch(torch_model, np_model_on, case):
    photo, text, boxes = CASES[case]
    image = Image.open(ASSETS / photo).convert("RGB")
    ref_scores, ref_boxes, ref_masks = reference_results(torch_model, case)
    assert len(ref_scores) == 200 and ref_scores.std() > 0.01
    threshold, gap = threshold_in_a_gap(ref_scores)
    assert gap > 2 * SCORE_TOL
    keep = ref_scores > threshold  # exactly what the reference's _forward_grounding keeps

    proc = npsam3.Sam3Processor(np_model_on, confidence_threshold=threshold)
    state = run_prompts(proc, proc.set_image(image), text, boxes)
    assert state["masks"].shape == (keep.sum(), image.height, image.width)
    np.testing.assert_allclose(state["scores"], ref_scores[keep], atol=SCORE_TOL)
    np.testing.assert_allclose(state["boxes"], ref_boxes[keep], atol=BOX_TOL_PX)
    ious = [mask_iou(a, b) for a, b in zip(state["masks"], ref_masks[keep])]
    assert min(ious) >= MASK_IOU_MIN, min(ious)
    assert any(m.any() for m in state["masks"])  # not a vacuous comparison


def test_several_prompts_reuse_the_image_embedding(np_model, monkeypatch):
    proc = npsam3.Sam3Processor(np_model, confidence_threshold=0.3)
    state = proc.set_image(ASSETS / "coins.jpg")
    calls = []
    monkeypatch.setattr(np_model.image_encoder, "__call__", lambda *a: calls.append(a))
    for prompt in ("a coin", "a round object", "metal"):
        state = proc.set_text_prompt(prompt, state)
    assert calls == [] and state["scores"].dtype == np.float32


def test_threshold_change_reselects_without_running_the_detector(np_model, monkeypatch):
    proc = npsam3.Sam3Processor(np_model, confidence_threshold=0.45)
    state = proc.set_text_prompt("a coin", proc.set_image(ASSETS / "coins.jpg"))
    n = len(state["scores"])
    monkeypatch.setattr(np_model.detector, "detect", None)  # any detector run would fail
    state = proc.set_confidence_threshold(0.3, state)
    assert len(state["scores"]) > n and (state["scores"] > 0.3).all()


def test_options_beyond_the_reference(np_model):
    image = ASSETS / "coffee.jpg"
    base = npsam3.Sam3Processor(np_model, confidence_threshold=0.3)
    state = base.set_text_prompt("a cup", base.set_image(image))
    det = state["detection"]
    no_presence = npsam3.Sam3Processor(np_model, confidence_threshold=0.3, use_presence=False)
    s2 = no_presence.set_text_prompt("a cup", no_presence.set_image(image))
    want = 1 / (1 + np.exp(-det["pred_logits"][0, :, 0]))
    np.testing.assert_allclose(np.sort(s2["scores"]), np.sort(want[want > 0.3]), rtol=1e-6)
    nms = npsam3.Sam3Processor(np_model, confidence_threshold=0.3, nms_iou=0.5, semantic=True)
    s3 = nms.set_text_prompt("a cup", nms.set_image(image))
    assert 0 < len(s3["scores"]) < len(state["scores"])
    assert s3["semantic_seg"].shape == (1, 1, 288, 288)
    kept = s3["masks"]  # survivors overlap little (NMS ran on the 288 x 288 masks, hence the slack)
    for i in range(len(kept)):
        for j in range(i):
            assert mask_iou(kept[i], kept[j]) <= 0.5 + 0.05


@pytest.mark.parametrize("call, message", [
    (lambda p, s: p.set_text_prompt("   ", s), "text prompt is empty"),
    (lambda p, s: p.add_geometric_prompt([0.5, 0.5, 0.0, 0.2], True, s), "zero or negative"),
    (lambda p, s: p.add_geometric_prompt([0.9, 0.5, 0.4, 0.2], True, s), "outside the image"),
    (lambda p, s: p.add_geometric_prompt([0.5, 0.5, 0.2], True, s), "4 finite numbers"),
    (lambda p, s: p.add_geometric_prompt(["a", 1, 2, 3], True, s), "4 finite numbers"),
    (lambda p, s: p.set_confidence_threshold(1.5, s), "threshold must be a number in"),
    (lambda p, s: p.set_text_prompt("a dog", {}), "call set_image before"),
])
def test_processor_bad_input(np_model, call, message):
    proc = npsam3.Sam3Processor(np_model)
    state = proc.set_image(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(npsam3.Npsam3Error, match=message):
        call(proc, state)


def test_long_prompt_is_truncated_with_a_warning(np_model):
    proc = npsam3.Sam3Processor(np_model)
    state = proc.set_image(ASSETS / "chelsea.jpg")
    with pytest.warns(UserWarning, match="truncated"):
        proc.set_text_prompt("cat " * 50, state)




def test_full_size_masks_are_made_on_first_access_only(np_model):
    proc = npsam3.Sam3Processor(np_model, confidence_threshold=0.42)
    state = proc.set_text_prompt("a coin", proc.set_image(ASSETS / "coins.jpg"))
    n = len(state["scores"])
    assert n > 3 and state["low_res_masks"].shape == (n, 288, 288)
    assert not dict.__contains__(state, "masks") and not dict.__contains__(state, "masks_logits")
    assert "masks" in state and state.get("masks_logits") is not None
    np.testing.assert_array_equal(state["masks"], state["masks_logits"] > 0.5)
    np.testing.assert_array_equal(np.stack(list(proc.iter_masks(state))), state["masks"])
    eager = proc.set_text_prompt("a coin", proc.set_image(ASSETS / "coins.jpg", state={}))
    assert type(eager) is dict and eager["masks"].shape == (n, 303, 384)
    np.testing.assert_array_equal(eager["masks"], state["masks"])
    proc.set_confidence_threshold(0.45, state)  # new results: the old full-size masks are gone
    assert not dict.__contains__(state, "masks") and len(state["masks"]) == len(state["scores"]) < n


def test_sort_by_score(np_model):
    image = ASSETS / "coins.jpg"
    plain = npsam3.Sam3Processor(np_model, confidence_threshold=0.42)
    ranked = npsam3.Sam3Processor(np_model, confidence_threshold=0.42, sort_by_score=True)
    a = plain.set_text_prompt("a coin", plain.set_image(image))
    b = ranked.set_text_prompt("a coin", ranked.set_image(image))
    order = np.argsort(-a["scores"], kind="stable")
    assert not np.array_equal(order, np.arange(len(order)))  # query order is not score order
    np.testing.assert_array_equal(b["scores"], a["scores"][order])
    np.testing.assert_array_equal(b["boxes"], a["boxes"][order])
    # the mask product's rows come in another order, which BLAS may round differently (1 ulp),
    # so a logit at 0 may flip one pixel: logits within rounding, masks within a pixel or two
    low_a, low_b = a["low_res_masks"][order], b["low_res_masks"]
    assert np.abs(low_b - low_a).max() <= 1e-5 * np.abs(low_a).max()
    for mask_b, mask_a in zip(b["masks"], a["masks"][order]):
        assert np.count_nonzero(mask_b != mask_a) <= 2 and mask_a.any()


def test_text_features_are_encoded_once_per_prompt(bundle):
    model = npsam3.load_model(bundle)
    calls = []
    encode = model.text_encoder.session.run
    model.text_encoder.session.run = lambda *a, **k: calls.append(1) or encode(*a, **k)
    proc = npsam3.Sam3Processor(model, confidence_threshold=0.45)
    for photo in ("coins.jpg", "chelsea.jpg", "coins.jpg"):
        state = proc.set_text_prompt("a coin", proc.set_image(ASSETS / photo))
    assert len(calls) == 1
    first = model.text_features("a coin")
    proc.set_text_prompt("A  Coin ", state)  # the same tokens: no new encoder run
    proc.set_text_prompt("a cat", state)
    assert len(calls) == 2
    np.testing.assert_array_equal(first[0], model.text_features("a coin")[0])
