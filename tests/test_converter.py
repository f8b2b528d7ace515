"""npsam3-convert --detector-only and load_detector: good checkpoints convert, bad input gives one
readable error line, a non-zero exit and nothing half-written."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import npsam3
from npsam3_convert import export_detector
from npsam3_convert.cli import main as convert_main
from npsam3.detector.config import infer_config, weight_shapes


@pytest.fixture(scope="module")
def state_dict(reference_detector):
    return {k: v.clone() for k, v in reference_detector.state_dict().items()}


def convert(capsys, *argv):
    """Run the CLI in-process; return (exit code, stderr lines)."""
    code = convert_main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(code, err, *fragments):
    assert code == 1 and len(err) == 1 and err[0].startswith("npsam3-convert: error: "), err
    for f in fragments:
        assert f in err[0], err[0]


def assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_weight_spec_is_the_reference_state_dict(state_dict):
    cfg = infer_config({k: v.shape for k, v in state_dict.items()})
    assert weight_shapes(cfg) == {k: tuple(v.shape) for k, v in state_dict.items()}
    assert (cfg["heads"], cfg["num_queries"], cfg["encoder_layers"], cfg["decoder_layers"],
            cfg["geometry_layers"], cfg["dim_feedforward"]) == (8, 200, 6, 6, 3, 2048)


def test_published_layout_converts_and_round_trips(state_dict, tmp_path, capsys):
    ckpt = {"model": {**{f"detector.{k}": v for k, v in state_dict.items()},
                      "detector.backbone.vision_backbone.trunk.w": torch.zeros(3),
                      "tracker.maskmem_backbone.w": torch.zeros(2)},
            "meta": {"note": "ignored"}}
    torch.save(ckpt, tmp_path / "sam3.pt")
    code, err = convert(capsys, tmp_path / "sam3.pt", tmp_path / "bundle", "--detector-only")
    assert code == 0, err
    det = npsam3.load_detector(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"detector.safetensors"}
    assert manifest["detector"]["box_rpb"] == "log" and manifest["detector"]["presence_token"]
    for k, v in state_dict.items():
        part, name = next((getattr(det, a), k[len(p):]) for a, p in (
            ("geometry", "geometry_encoder."), ("encoder", "transformer.encoder."),
            ("decoder", "transformer.decoder."), ("scoring", "dot_prod_scoring."),
            ("segmentation", "segmentation_head.")) if k.startswith(p))
        np.testing.assert_array_equal(part[name], v.numpy())


def test_flat_state_dict_without_prefix(state_dict, tmp_path):
    torch.save(state_dict, tmp_path / "flat.pth")
    export_detector(tmp_path / "flat.pth", tmp_path / "b")
    assert npsam3.load_detector(tmp_path / "b").config["d_model"] == 256


def test_missing_file(tmp_path, capsys):
    code, err = convert(capsys, tmp_path / "nope.pt", tmp_path / "out", "--detector-only")
    assert_one_line_error(code, err, "does not exist")
    assert_nothing_written(tmp_path / "out")


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello, I am not a checkpoint\n")
    code, err = convert(capsys, tmp_path / "notes.pt", tmp_path / "out", "--detector-only")
    assert_one_line_error(code, err, "not a readable PyTorch checkpoint")
    assert_nothing_written(tmp_path / "out")


def test_truncated_checkpoint(state_dict, tmp_path, capsys):
    torch.save(state_dict, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    code, err = convert(capsys, tmp_path / "cut.pt", tmp_path / "out", "--detector-only")
    assert_one_line_error(code, err, "cut.pt")
    assert_nothing_written(tmp_path / "out")


def test_pickled_objects_are_refused(tmp_path, capsys):
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": np.float64}, tmp_path / "obj.pt")
    code, err = convert(capsys, tmp_path / "obj.pt", tmp_path / "out", "--detector-only")
    assert_one_line_error(code, err, "refusing to unpickle")
    assert_nothing_written(tmp_path / "out")


def test_other_model_family(tmp_path, capsys):
    sam2_like = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7),
                 "sam_mask_decoder.iou_token.weight": torch.zeros(1, 256)}
    torch.save({"model": sam2_like}, tmp_path / "sam2.pt")
    code, err = convert(capsys, tmp_path / "sam2.pt", tmp_path / "out", "--detector-only")
    assert_one_line_error(code, err, "not a SAM3-family checkpoint")
    assert_nothing_written(tmp_path / "out")


def test_wrong_shape_missing_and_unexpected_keys_are_all_listed(state_dict, tmp_path, capsys):
    bad = dict(state_dict)
    bad["transformer.encoder.layers.0.linear1.bias"] = torch.zeros(7)
    del bad["geometry_encoder.cls_embed.weight"]
    bad["segmentation_head.extra.weight"] = torch.zeros(2)
    torch.save(bad, tmp_path / "bad.pt")
    code, err = convert(capsys, tmp_path / "bad.pt", tmp_path / "out", "--detector-only")
    assert_one_line_error(code, err, "1 missing: geometry_encoder.cls_embed.weight",
                          "1 unexpected: segmentation_head.extra.weight",
                          "linear1.bias (7,) (expected (2048,))")
    assert_nothing_written(tmp_path / "out")


def test_nan_weights(state_dict, tmp_path, capsys):
    bad = dict(state_dict)
    bad["dot_prod_scoring.hs_proj.bias"] = torch.full((256,), float("nan"))
    torch.save(bad, tmp_path / "nan.pt")
    code, err = convert(capsys, tmp_path / "nan.pt", tmp_path / "out", "--detector-only")
    assert_one_line_error(code, err, "NaN")
    assert_nothing_written(tmp_path / "out")


def test_existing_output_needs_force(state_dict, tmp_path, capsys):
    torch.save(state_dict, tmp_path / "ok.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = convert(capsys, tmp_path / "ok.pt", out, "--detector-only")
    assert_one_line_error(code, err, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    code, err = convert(capsys, tmp_path / "ok.pt", out, "--detector-only", "--force")
    assert code == 0 and not (out / "keep.txt").exists()
    npsam3.load_detector(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.pt", "out"]


def test_cli_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "npsam3_convert.cli", str(tmp_path / "x.pt"),
                        str(tmp_path / "o"), "--detector-only"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.fixture
def bundle_copy(detector_bundle, tmp_path):
    import shutil

    return shutil.copytree(detector_bundle, tmp_path / "bundle")


def test_load_detector_refuses_tampered_weights(bundle_copy):
    f = bundle_copy / "detector.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(npsam3.Npsam3Error, match="does not match the sha256"):
        npsam3.load_detector(bundle_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m.update(format="other"), "not an npsam3 bundle manifest"),
    (lambda m: m["files"]["detector.safetensors"].update(bytes=1), "the manifest says 1"),
    (lambda m: m["files"].update({"extra.bin": {"bytes": 1, "sha256": "0"}}), "missing extra.bin"),
    (lambda m: m["detector"].pop("heads"), "detector config lacks 'heads'"),
    (lambda m: m["detector"].update(encoder_layers=7), "missing: transformer.encoder.layers.6"),
])
def test_load_detector_refuses_wrong_manifest(bundle_copy, edit, message):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(npsam3.Npsam3Error, match=message):
        npsam3.load_detector(bundle_copy)


def test_load_detector_on_missing_or_broken_folder(tmp_path):
    with pytest.raises(npsam3.Npsam3Error, match="does not exist"):
        npsam3.load_detector(tmp_path / "none")
    with pytest.raises(npsam3.Npsam3Error, match="has no manifest.json"):
        npsam3.load_detector(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(npsam3.Npsam3Error, match="not valid JSON"):
        npsam3.load_detector(tmp_path)
