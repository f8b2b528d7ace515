"""Golden-output tests: npsam3's interactive SAM heads against sam3's PromptEncoder, MaskDecoder
(TwoWayTransformer) and SAM3InteractiveImagePredictor._predict, with the real configuration of
Sam3TrackerBase._build_sam_heads and seeded random weights.

Every stage is compared on the reference's own inputs to that module (captured with forward
hooks), and the whole _predict end to end. Tolerance: max |a - b| / max |b| <= STAGE_TOL.
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from npsam3 import nn
from npsam3.tracker import DEFAULTS, SamHeads, mask_decoder, prompt_encoder
from npsam3.tracker.transformer import two_way_transformer
from npsam3_convert.parity import compare, mask_iou
from npsam3_convert.parity_interactive import Capture
from npsam3_convert.reference import randomize_

pytest.importorskip("skimage")  # the reference fills holes only with scikit-image installed

STAGE_TOL = 1e-5
LOGIT_TIE = 1e-4     # |final logit| below this: the two thresholded masks may differ there
MASK_IOU_MIN = 0.999
ORIG_HW = (480, 640)
TO_INPUT = np.array([1008 / 640, 1008 / 480], np.float32)  # image pixels -> 1008-px frame (x, y)

CASES = {
    "click": dict(point_coords=[[[320, 240]]], point_labels=[[1]]),
    "clicks pos+neg": dict(point_coords=[[[300, 200], [120, 400], [500, 90]]],
                           point_labels=[[1, 0, 1]]),
    "box": dict(boxes=[[150, 100, 420, 380]]),
    "box + negative click": dict(boxes=[[150, 100, 420, 380]], point_coords=[[[300, 250]]],
                                 point_labels=[[0]]),
    "3 boxes": dict(boxes=[[150, 100, 420, 380], [10, 20, 200, 150], [400, 300, 630, 470]]),
    "labels -1 and 7": dict(point_coords=[[[320, 240], [0, 0], [600, 50]]],
                            point_labels=[[1, -1, 7]]),
    # 6 + 12 + 1 tokens: heads x tokens >= internal_dim, the unfolded attention paths
    "12 clicks": dict(point_coords=[[[40 + 50 * i, 30 + 35 * i] for i in range(12)]],
                      point_labels=[[i % 2 for i in range(12)]]),
    "mask only": dict(),  # mask_input added below, from a previous call
    "click + mask": dict(point_coords=[[[330, 250]]], point_labels=[[0]]),
}
WITH_MASK = ("mask only", "click + mask")


def build_reference_heads(seed):
    """PromptEncoder and MaskDecoder as Sam3TrackerBase._build_sam_heads + build_tracker make
    them, with seeded random weights (randomize_ also re-draws LayerNorm2d's affine and the
    random Gaussian buffer of pe_layer). The four taps of each output_upscaling ConvTranspose2d
    are made alike (shared kernel + 30% of their own), so that the masks are made of regions
    rather than 1-pixel speckle (conv_transpose2d is tested with independent taps below)."""
    from sam3.sam.mask_decoder import MaskDecoder
    from sam3.sam.prompt_encoder import PromptEncoder
    from sam3.sam.transformer import TwoWayTransformer

    pe = PromptEncoder(embed_dim=256, image_embedding_size=(72, 72),
                       input_image_size=(1008, 1008), mask_in_chans=16)
    md = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        use_high_res_features=True, iou_prediction_use_sigmoid=True, pred_obj_scores=True,
        pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True,
        dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
        dynamic_multimask_stability_thresh=0.98)
    with torch.no_grad():
        for i, m in enumerate((pe, md)):
            randomize_(m, seed + i)
        for i in (0, 3):
            w = md.output_upscaling[i].weight
            shared = w.mean((2, 3), keepdim=True)
            w.copy_(2 * shared + 0.3 * (w - shared))
    return pe.eval().requires_grad_(False), md.eval().requires_grad_(False)


def weights(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def smooth_field(rng, c, size, base=18):
    """Random [1, c, size, size] features varying over ~size/base pixels (masks of regions, as
    real features give, rather than speckle)."""
    x = rng.standard_normal((c, base, base), dtype=np.float32)
    return nn.interpolate_bilinear(x, (size, size))[None] * np.float32(2)


@pytest.fixture(scope="module")
def heads():
    pe, md = build_reference_heads(seed=0)
    return pe, md, SamHeads(weights(pe), weights(md))


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(1)
    return {"image_embed": rng.standard_normal((1, 256, 72, 72), dtype=np.float32),
            "high_res_feats": [smooth_field(rng, 32, 288), smooth_field(rng, 64, 144)]}


def reference_predict(pe, md, features, multimask_output, return_logits=True, max_hole_area=256.0,
                      point_coords=None, point_labels=None, boxes=None, mask_input=None):
    """SAM3InteractiveImagePredictor._predict (the reference's own code) on a stub predictor."""
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
    from sam3.model.utils.sam1_utils import SAM2Transforms

    stub = SimpleNamespace(
        model=SimpleNamespace(sam_prompt_encoder=pe, sam_mask_decoder=md),
        _is_image_set=True, _orig_hw=[ORIG_HW], mask_threshold=0.0,
        _features={"image_embed": torch.from_numpy(features["image_embed"]),
                   "high_res_feats": [torch.from_numpy(f) for f in features["high_res_feats"]]},
        _transforms=SAM2Transforms(1008, 0.0, max_hole_area=max_hole_area))
    t = (lambda x, dtype=torch.float: None if x is None else torch.as_tensor(x, dtype=dtype))
    with Capture(pe, md) as cap:
        out = SAM3InteractiveImagePredictor._predict(
            stub, t(point_coords), t(point_labels, torch.int), t(boxes), t(mask_input),
            multimask_output, return_logits=return_logits)
    return [o.numpy() for o in out], cap


def reference_postprocess(low_res):
    """SAM2Transforms.postprocess_masks (hole filling, resize to ORIG_HW) of low-res logits."""
    from sam3.model.utils.sam1_utils import SAM2Transforms

    return SAM2Transforms(1008, 0.0, max_hole_area=256.0).postprocess_masks(
        torch.from_numpy(np.ascontiguousarray(low_res)), ORIG_HW).numpy()


def to_input_frame(case):
    """Pixel prompts of a 480 x 640 image -> the 1008-px frame, as _prep_prompts does."""
    out = dict(case)
    if "point_coords" in case:
        out["point_coords"] = np.array(case["point_coords"], np.float32) * TO_INPUT
        out["point_labels"] = np.array(case["point_labels"], np.int32)
    if "boxes" in case:
        out["boxes"] = np.array(case["boxes"], np.float32) * np.tile(TO_INPUT, 2)
    return out


@pytest.fixture(scope="module")
def previous_low_res(heads, features):
    """A previous call's best low-res logits [1, 1, 288, 288], as a user passes them back."""
    pe, md, _ = heads
    (_, iou, low_res), _ = reference_predict(pe, md, features, True,
                                             **to_input_frame(CASES["click"]))
    return low_res[:, np.argmax(iou[0])][:, None]


def check(stage, ours, ref, tol=STAGE_TOL, scale=None):
    """max |ours - ref| / max |ref| (or / scale) <= tol; returns that relative error."""
    ref = ref.detach().numpy() if torch.is_tensor(ref) else np.asarray(ref)
    ours = np.broadcast_to(ours, ref.shape)  # a dense no-mask embedding is a broadcast view
    err, rel = compare(ours, ref)
    if scale is not None:
        rel = err / scale
    assert rel <= tol, f"{stage}: max abs {err:.2e}, relative {rel:.2e} > {tol}"
    return rel


def reference_all_tokens(md, cap):
    """MaskDecoder.predict_masks (all 4 mask tokens) on the inputs the reference's forward got."""
    _, kwargs, _ = cap.mask_decoder
    with torch.no_grad():
        return md.predict_masks(**{k: v for k, v in kwargs.items() if k != "multimask_output"})


def stability_branch(md, cap):
    """Which branch the reference's single-mask selection took per batch entry (True = token 0)
    and whether it is a genuine tie (stability within 1e-4 of the threshold, or the best two
    multimask IoUs within 1e-6): then tiny rounding differences may flip it."""
    masks, iou, _, _ = reference_all_tokens(md, cap)
    stability = md._get_stability_scores(masks[:, 0]).numpy()
    top2 = np.sort(iou[:, 1:].numpy(), -1)[:, -2:]
    tie = (np.abs(stability - 0.98) < 1e-4) | (top2[:, 1] - top2[:, 0] < 1e-6)
    return stability >= np.float32(0.98), tie, stability


def run_case(heads, features, previous_low_res, name, multimask_output):
    pe, md, ours = heads
    case = to_input_frame(CASES[name])
    if name in WITH_MASK:
        case["mask_input"] = previous_low_res
    (ref_masks, ref_iou, ref_low), cap = reference_predict(pe, md, features, multimask_output,
                                                           **case)
    errors = {}

    # prompt encoder, on the reference's own (concatenated, boxes-first) points
    _, kw, (sparse, dense) = cap.prompt_encoder
    points = kw["points"]
    coords, labels = (None, None) if points is None else (points[0].numpy(), points[1].numpy())
    masks_in = None if kw["masks"] is None else kw["masks"].numpy()
    our_sparse, our_dense = prompt_encoder.forward(ours.prompt_encoder_weights, coords, labels,
                                                   masks_in, (1008, 1008), (72, 72))
    errors["sparse embeddings"] = check("sparse", our_sparse, sparse)
    errors["dense embeddings"] = check("dense", our_dense, dense)
    errors["dense PE"] = check("dense PE", ours.dense_pe, pe.get_dense_pe())

    # two-way transformer on the reference's inputs
    (src, pos, tokens), _, (queries, keys) = cap.transformer
    tp = {k[12:]: v for k, v in ours.mask_decoder_weights.items() if k.startswith("transformer.")}
    with nn.parallel_region():
        our_q, our_k = two_way_transformer(tp, src.numpy(), pos[:1].numpy(), tokens.numpy(), 8)
    errors["transformer queries"] = check("queries", our_q, queries)
    errors["transformer keys"] = check("keys", our_k, keys)

    # mask decoder on the reference's inputs: all mask tokens, then forward's selection
    _, kw, (masks, iou, sam_tokens, obj) = cap.mask_decoder
    inputs = (kw["image_embeddings"].numpy(), kw["image_pe"].numpy(),
              kw["sparse_prompt_embeddings"].numpy(), kw["dense_prompt_embeddings"].numpy())
    high_res = [f.numpy() for f in kw["high_res_features"]]
    ref_all = reference_all_tokens(md, cap)
    with nn.parallel_region():
        our_all = mask_decoder.predict_masks(ours.mask_decoder_weights, *inputs, high_res, 8)
    for stage, a, b in zip(("all mask logits", "all IoU", "all mask tokens", "object score logits"),
                           our_all, ref_all):
        errors[stage] = check(stage, a, b)
    all_masks, all_iou, _, all_obj = ref_all
    spread = (all_masks.std(), all_iou.max() - all_iou.min(), all_obj.abs().max())
    assert min(spread) > 1e-2 and spread[0] > 0.5, f"trivial outputs: {spread}"
    with nn.parallel_region():
        out = mask_decoder.forward(ours.mask_decoder_weights, *inputs, multimask_output, high_res,
                                   8, 0.05, 0.98)
    stable = None
    if not multimask_output:
        stable, tie, stability = stability_branch(md, cap)
        if tie.any():
            pytest.skip(f"stability {stability} or IoU argmax tie: the choice may flip")
    for stage, a, b in zip(("low-res mask logits", "IoU predictions", "SAM tokens",
                            "object score logits"), out, (masks, iou, sam_tokens, obj)):
        errors[stage] = check(stage, a, b)

    # end to end: _predict with hole filling and resizing to the image
    got = ours.predict(features, multimask_output=multimask_output, return_logits=True,
                       orig_hw=ORIG_HW, **case)
    flips = (got[2] > 0) != (ref_low > 0)
    if flips.any():  # a logit within rounding of 0 changed sign: holes may differ (a tie), so
        # only logits that close to 0 may flip, and the final masks are the reference's own
        # post-processing of our logits
        assert np.abs(ref_low[flips]).max() <= STAGE_TOL * np.abs(ref_low).max(), "sign flip"
        ref_masks = reference_postprocess(got[2])
    errors["final mask logits"] = check("final mask logits", got[0], ref_masks)
    errors["final IoU"] = check("final IoU", got[1], ref_iou)
    # clamped to +-32: relative to the logits' own scale (the x30 heads reach hundreds)
    errors["low-res masks"] = check("low-res masks", got[2], ref_low,
                                    scale=float(masks.abs().max()))
    k = 3 if multimask_output else 1
    assert got[0].shape == (len(kw["sparse_prompt_embeddings"]), k, *ORIG_HW)
    check_thresholded(ours.predict(features, multimask_output=multimask_output,
                                   orig_hw=ORIG_HW, **case)[0], ref_masks)
    return errors, stable


def check_thresholded(ours, ref_logits):
    """Bool masks: identical wherever the reference logit is not within LOGIT_TIE of 0."""
    ref = ref_logits > 0
    assert ours.dtype == bool and ours.shape == ref.shape
    differ = ours != ref
    assert np.all(np.abs(ref_logits[differ]) < LOGIT_TIE), "masks differ away from threshold ties"
    for a, b in zip(ours.reshape(-1, *ORIG_HW), ref.reshape(-1, *ORIG_HW)):
        assert mask_iou(a, b) >= MASK_IOU_MIN


@pytest.mark.parametrize("multimask_output", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("name", list(CASES))
def test_stages_match_reference(heads, features, previous_low_res, name, multimask_output):
    run_case(heads, features, previous_low_res, name, multimask_output)


def scale_token0(heads, factor):
    """The heads with mask token 0's hypernetwork output scaled (on both sides): x 30 moves its
    logits out of the +-0.05 stability band almost everywhere (token 0 stable), x 0.02 into it
    (unstable: the best multimask output is taken)."""
    pe, md, _ = heads
    md = copy.deepcopy(md)
    last = md.output_hypernetworks_mlps[0].layers[-1]
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    return pe, md, SamHeads(weights(pe), weights(md))


@pytest.fixture(scope="module")
def stable_heads(heads):
    return scale_token0(heads, 30.0)


@pytest.fixture(scope="module")
def unstable_heads(heads):
    return scale_token0(heads, 0.02)


@pytest.mark.parametrize("name", ["click", "box + negative click", "3 boxes"])
def test_single_mask_both_stability_branches(stable_heads, unstable_heads, features,
                                             previous_low_res, name):
    _, stable = run_case(stable_heads, features, previous_low_res, name, False)
    _, unstable = run_case(unstable_heads, features, previous_low_res, name, False)
    assert stable.all() and not unstable.any(), (stable, unstable)


def test_stability_ties_are_rare(heads, features, previous_low_res):
    """The tie skip in run_case must not hide the single-mask choice: no case here is a tie
    (the scaled heads' cases, far from the threshold by construction, would skip visibly)."""
    pe, md, _ = heads
    for name in CASES:
        case = to_input_frame(CASES[name])
        if name in WITH_MASK:
            case["mask_input"] = previous_low_res
        _, cap = reference_predict(pe, md, features, False, max_hole_area=0.0, **case)
        assert not stability_branch(md, cap)[1].any(), name


def test_no_hole_filling_matches_reference_without_skimage(heads, features):
    """max_hole_area = 0: the reference's output when scikit-image is missing (step skipped)."""
    pe, md, _ = heads
    case = to_input_frame(CASES["box + negative click"])
    (ref_masks, ref_iou, _), _ = reference_predict(pe, md, features, True, max_hole_area=0.0,
                                                   **case)
    ours = SamHeads(heads[2].prompt_encoder_weights, heads[2].mask_decoder_weights,
                    {"max_hole_area": 0.0})
    masks, iou, _ = ours.predict(features, return_logits=True, orig_hw=ORIG_HW, **case)
    check("unfilled final logits", masks, ref_masks)
    filled, _, _ = heads[2].predict(features, return_logits=True, orig_hw=ORIG_HW, **case)
    assert (filled != masks).any(), "this case must have holes to fill, or the test is vacuous"


def test_defaults_are_the_reference_configuration(heads):
    pe, md, _ = heads
    assert DEFAULTS["image_size"] == pe.input_image_size[0]
    assert DEFAULTS["image_embedding_size"] == pe.image_embedding_size[0]
    assert DEFAULTS["num_heads"] == md.transformer.num_heads
    assert DEFAULTS["stability_delta"] == md.dynamic_multimask_stability_delta
    assert DEFAULTS["stability_thresh"] == md.dynamic_multimask_stability_thresh


# --- the primitives the heads added to npsam3.nn ---------------------------------------------

def test_erf_against_math_and_torch():
    import math

    x = np.concatenate([np.linspace(-6, 6, 120001), np.random.default_rng(2).standard_normal(
        20000) * 3]).astype(np.float32)
    exact = np.array([math.erf(float(v)) for v in x])
    ours = nn.erf(x)
    assert ours.dtype == np.float32
    assert np.abs(ours - exact).max() <= 2e-7  # A&S 7.1.26: 1.5e-7, plus the float32 result
    assert np.abs(ours - torch.special.erf(torch.from_numpy(x)).numpy()).max() <= 2.5e-7


def test_gelu_against_exact_and_torch():
    import math

    x = np.linspace(-10, 10, 200001).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    ours = nn.gelu(x.copy())
    assert np.abs(ours - exact).max() <= 5e-7  # torch's own GELU is 1.1e-6 off here
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert np.abs(ours - want).max() <= 2e-6
    assert np.abs(ours - want).max() > 0  # two implementations, not one


def test_layer_norm_2d_against_sam3():
    from sam3.sam.common import LayerNorm2d

    ln = LayerNorm2d(16)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(16, generator=g))
        ln.bias.copy_(torch.randn(16, generator=g))
        x = torch.randn(1, 16, 20, 24, generator=g) * 3 + 1
        want = ln(x)[0].numpy()
    p = {f"n.{k}": v for k, v in weights(ln).items()}
    check("LayerNorm2d", nn.layer_norm_2d(x[0].numpy(), p, "n"), want, 2e-6)


@pytest.mark.parametrize("transpose, k, size", [
    (False, 2, (288, 288)), (False, 2, (9, 13)), (False, 4, (16, 23)),
    (True, 2, (72, 72)), (True, 2, (5, 7)), (True, 3, (4, 6))])
def test_stride_k_convolutions_against_torch(transpose, k, size):
    """nn.conv2d_patch (Conv2d, stride = kernel) and nn.conv_transpose2d (ConvTranspose2d)."""
    conv = (torch.nn.ConvTranspose2d(6, 4, k, stride=k) if transpose
            else torch.nn.Conv2d(6, 4, k, stride=k))
    x = torch.randn(1, 6, *size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = conv(x)[0].numpy()
    p = {f"c.{n}": v for n, v in weights(conv).items()}
    ours = (nn.conv_transpose2d if transpose else nn.conv2d_patch)(x[0].numpy(), p, "c")
    check("conv", ours, want, 2e-6)


def test_gelu_of_a_strided_view():
    x = np.random.default_rng(6).standard_normal((4, 6, 8), dtype=np.float32)
    want = torch.nn.functional.gelu(torch.from_numpy(x[:, 1:4])).numpy()
    assert np.abs(nn.gelu(x[:, 1:4]) - want).max() <= 2e-6
