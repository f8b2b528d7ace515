"""ONNX export of the image graphs (trunk, detector neck, tracker neck) and the text encoder,
checked in onnxruntime against sam3's PyTorch backbone and interactive predictor, on the tiny
SAM3 model (reduced ViT trunk and text encoder, real necks and heads, 1008 input).

Tolerances are max |ort - torch| / max |torch| per output (``onnx_export.compare``). Measured on
this project's machine: FPN levels ~2.5e-6, language features ~6e-7; we assert FEATURE_TOL = 1e-4
for every float output and an exact padding mask.
"""

import numpy as np
import pytest
import torch

from npsam3_convert import onnx_export as ox
from npsam3_convert.checkpoint import load_checkpoint
from npsam3_convert.models import (CONTEXT_LENGTH, PREDICTOR, RESOLUTION, USED_TRACKER,
                                   build_tiny_sam3_image_model, load_state)
from npsam3.errors import Npsam3Error

FEATURE_TOL = 1e-4
CAPTIONS = ["a dog", "a red car parked on the street", "zebra " * 40]  # the last one is truncated


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_sam3_image_model(seed=0)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def image_onnx(tiny_model, onnx_dir):
    files = ox.export_image_graphs(tiny_model, onnx_dir, RESOLUTION, interactive=True)
    # small models are one self-contained file per graph
    assert files == [onnx_dir / name for name in ox.IMAGE_GRAPHS.values()]
    return onnx_dir


@pytest.fixture(scope="module")
def text_onnx(tiny_model, onnx_dir):
    files = ox.export_text_encoder(tiny_model, onnx_dir / "text_encoder.onnx", CONTEXT_LENGTH)
    assert files == [onnx_dir / "text_encoder.onnx"]
    return files[0]


def smooth_image(seed):
    """A seeded smooth random normalised image [1, 3, R, R] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 24, 24, generator=g) * 2 - 1
    image = torch.nn.functional.interpolate(coarse, size=(RESOLUTION, RESOLUTION), mode="bicubic")
    return image.clamp(-1, 1).numpy()


def token_ids(model, captions):
    """[B, L] int64 ids from the model's own tokenizer (0 = padding)."""
    tokenizer = model.backbone.language_backbone.tokenizer
    return tokenizer(captions, context_length=CONTEXT_LENGTH).numpy()


def io_signature(session):
    return ([(i.name, i.type, i.shape) for i in session.get_inputs()],
            [(o.name, o.type, o.shape) for o in session.get_outputs()])


def test_image_graph_signatures(image_onnx):
    s = 4 * RESOLUTION // 14
    trunk = [("vision_features", "tensor(float)", [1, 128, s // 4, s // 4])]  # the tiny ViT's width
    assert io_signature(ox.ort_session(image_onnx / "image_trunk.onnx")) == (
        [("image", "tensor(float)", [1, 3, RESOLUTION, RESOLUTION])], trunk)
    assert io_signature(ox.ort_session(image_onnx / "detector_neck.onnx")) == (trunk, [
        ("backbone_fpn_0", "tensor(float)", [1, 256, s, s]),
        ("backbone_fpn_1", "tensor(float)", [1, 256, s // 2, s // 2]),
        ("backbone_fpn_2", "tensor(float)", [1, 256, s // 4, s // 4])])
    assert io_signature(ox.ort_session(image_onnx / "tracker_neck.onnx")) == (trunk, [
        ("high_res_feats_0", "tensor(float)", [1, 32, s, s]),
        ("high_res_feats_1", "tensor(float)", [1, 64, s // 2, s // 2]),
        ("image_embed", "tensor(float)", [1, 256, s // 4, s // 4])])


def test_image_graphs_match_torch(tiny_model, image_onnx):
    errors = ox.verify_image_graphs(tiny_model, image_onnx, smooth_image(seed=1), interactive=True)
    assert set(errors) == {ox.TRUNK_OUTPUT, *ox.FPN_OUTPUTS, *ox.TRACKER_NECK_OUTPUTS}
    for name, err in errors.items():
        assert err["max_rel"] <= FEATURE_TOL, (name, err)


def test_text_encoder_graph_signature(text_onnx):
    assert io_signature(ox.ort_session(text_onnx)) == (
        [("input_ids", "tensor(int64)", ["batch", CONTEXT_LENGTH])],
        [("language_features", "tensor(float)", [CONTEXT_LENGTH, "batch", 256]),
         ("language_mask", "tensor(bool)", ["batch", CONTEXT_LENGTH])],
    )


@pytest.mark.parametrize("rows", [slice(0, 1), slice(0, 3)], ids=["batch1", "batch3"])
def test_text_encoder_matches_torch(tiny_model, text_onnx, rows):
    ids = token_ids(tiny_model, CAPTIONS)[rows]
    assert (ids == 0).any() and (ids[:, 0] != 0).all()  # padded rows, none empty
    errors = ox.verify_text_encoder(tiny_model, text_onnx, ids)
    assert errors["language_features"]["max_rel"] <= FEATURE_TOL, errors
    assert errors["language_mask"]["max_abs"] == 0, errors


def test_text_encoder_matches_forward_text_on_strings(tiny_model, text_onnx):
    """The graph starting at ids equals sam3's own path from strings (tokenizer inside)."""
    with torch.inference_mode():
        ref = tiny_model.backbone.forward_text(CAPTIONS, device="cpu")
    ids = token_ids(tiny_model, CAPTIONS)
    features, mask = ox.ort_session(text_onnx).run(None, {"input_ids": ids})
    assert ox.compare(features, ref["language_features"].numpy())["max_rel"] <= FEATURE_TOL
    np.testing.assert_array_equal(mask, ref["language_mask"].numpy())
    np.testing.assert_array_equal(mask[:, 0], False)


def test_real_rope_is_exact_and_restored(tiny_model):
    from sam3.model.vitdet import apply_rotary_enc

    attn = tiny_model.backbone.vision_backbone.trunk.blocks[-1].attn  # the global block
    g = torch.Generator().manual_seed(2)
    q, k = (torch.randn(1, attn.num_heads, 72 * 72, attn.head_dim, generator=g) for _ in range(2))
    expected = apply_rotary_enc(q, k, attn.freqs_cis)
    freqs_cis = attn.freqs_cis
    with ox.real_rope(tiny_model):
        assert not any(t.is_complex() for t in tiny_model.state_dict().values())
        actual = attn._apply_rope(q, k)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    assert attn.freqs_cis is freqs_cis and "_apply_rope" not in attn.__dict__


def test_weights_over_the_size_limit_go_to_one_external_data_file(tiny_model, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(ox, "ONNX_SIZE_LIMIT", 1024)
    path = tmp_path / "text_encoder.onnx"
    files = ox.export_text_encoder(tiny_model, path, CONTEXT_LENGTH)
    assert files == [path, tmp_path / "text_encoder.onnx.data"]
    assert sorted(tmp_path.iterdir()) == sorted(files)
    assert path.stat().st_size < 2**20 < files[1].stat().st_size
    errors = ox.verify_text_encoder(tiny_model, path, token_ids(tiny_model, CAPTIONS))
    assert errors["language_features"]["max_rel"] <= FEATURE_TOL, errors


def test_load_state_from_a_published_checkpoint(tiny_model, tmp_path):
    """detector.* image model and the whole tracker.* (video tracker included), as sam3.pt: the
    interactive predictor gets its SAM heads, the video-only tensors are not needed."""
    state = tiny_model.state_dict()
    ckpt = {f"detector.{k}": v for k, v in state.items()
            if not k.endswith(".freqs_cis") and not k.startswith(PREDICTOR)}
    ckpt.update({"tracker." + k.removeprefix(PREDICTOR): v for k, v in state.items()
                 if k.startswith(PREDICTOR)})
    torch.save({"model": ckpt}, tmp_path / "ckpt.pt")
    other = build_tiny_sam3_image_model(seed=1)
    assert load_state(other, load_checkpoint(tmp_path / "ckpt.pt"), "ckpt.pt") == []
    loaded = {k: v for k, v in other.state_dict().items()
              if not k.startswith(PREDICTOR) or k.startswith(USED_TRACKER)}
    assert any(k.startswith(USED_TRACKER) for k in loaded)
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())

    for key in ("detector.transformer.decoder.query_embed.weight",
                "tracker.sam_mask_decoder.iou_token.weight"):
        broken = {k: v for k, v in ckpt.items() if k != key}
        torch.save({"model": broken}, tmp_path / "ckpt.pt")
        with pytest.raises(Npsam3Error, match="ckpt.pt lacks 1 tensors"):
            load_state(other, load_checkpoint(tmp_path / "ckpt.pt"), "ckpt.pt")


def test_tiny_epsilons_survive_the_graph_optimiser(tmp_path):
    """onnxscript's no-op rules would turn x + 1e-15 into x (EfficientViT's attention eps), and
    (x - x) / ((x - x) + 1e-15) into 0 / 0 = NaN."""
    class Eps(torch.nn.Module):
        def forward(self, x):
            z = x - x
            return z / (z + 1e-15)

    x = torch.ones(1, 3)
    (path,) = ox._export(Eps(), (x,), tmp_path / "eps.onnx", ["x"], ["y"], 17)
    (y,) = ox.ort_session(path).run(None, {"x": x.numpy()})
    assert np.isfinite(y).all() and (y == 0).all()
