"""`npsam3 segment` and `npsam3 info` in a subprocess in which torch, torchvision and sam3 cannot
be imported (the runtime path is torch-free), on a bundle made by the converter."""

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from npsam3.outputs import rle_decode

from .conftest import ASSETS

NO_TORCH = ("import sys\n"
            "for m in ('torch', 'torchvision', 'sam3'): sys.modules[m] = None\n"
            "from npsam3.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")


def npsam3_cli(*args):
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    shutil.copy(ASSETS / "coins.jpg", d)
    shutil.copy(ASSETS / "chelsea.jpg", d)
    (d / "broken.jpg").write_bytes((ASSETS / "coffee.jpg").read_bytes()[:5000])  # truncated
    return d


def test_segment_a_folder_with_one_bad_image(bundle, images, tmp_path):
    out = tmp_path / "out"
    r = npsam3_cli("segment", images, "--bundle", bundle, "--prompt", "a coin",
                   "--threshold", "0.4", "--out", out)
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 2 and "broken.jpg" in err[0] and "1 of 3 image(s) failed" in err[1], err
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.json", "chelsea.png", "coins.json",
                                                     "coins.png"]
    result = json.loads((out / "coins.json").read_text())
    assert (result["height"], result["width"], result["prompt"]) == (303, 384, "a coin")
    assert result["instances"], "random weights at threshold 0.4 keep some instances"
    for inst in result["instances"]:
        mask = rle_decode(inst["segmentation"])
        assert mask.shape == (303, 384) and mask.sum() == inst["area"] and inst["score"] > 0.4
    assert Image.open(out / "coins.png").size == (384, 303)


def test_segment_with_exemplar_boxes(bundle, tmp_path):
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", bundle, "--prompt", "a cup",
                   "--box", "150,100,450,300", "--negative-box", "0,300,100,400", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "coffee.jpg:" in r.stdout and (tmp_path / "coffee.json").exists()


@pytest.mark.parametrize("args, code, message", [
    (["--prompt", "a cup", "--box", "1,2,3"], 2, "is not X0,Y0,X1,Y1"),
    (["--prompt", "a cup", "--threshold", "1.5"], 2, "is not a number in [0, 1]"),
    (["--prompt", "a cup", "--unknown-flag"], 2, "unrecognized arguments"),
    (["--prompt", "  "], 1, "the text prompt is empty"),
    (["--prompt", "a cup", "--box", "300,100,200,200"], 1, "zero area or is inverted"),
    (["--prompt", "a cup", "--box", "100,100,700,200"], 1, "lies outside the 600x400 image"),
    ([], 1, "give --prompt, --box, or both"),
])
def test_segment_bad_arguments(bundle, tmp_path, args, code, message):
    out = tmp_path / "out"
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", bundle, "--out", out, *args)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_segment_refuses_damaged_bundles(bundle, tmp_path):
    broken = shutil.copytree(bundle, tmp_path / "b1")
    with open(broken / "text_encoder.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", broken, "--prompt", "a cup",
                   "--out", tmp_path / "o")
    assert r.returncode == 1 and "does not match the sha256" in r.stderr, r.stderr

    swapped = shutil.copytree(bundle, tmp_path / "b2")  # an ONNX file of another model, re-hashed
    shutil.copy(swapped / "text_encoder.onnx", swapped / "image_encoder.onnx")
    manifest = json.loads((swapped / "manifest.json").read_text())
    from npsam3.bundle import file_entry

    manifest["files"]["image_encoder.onnx"] = file_entry(swapped / "image_encoder.onnx")
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", swapped, "--prompt", "a cup",
                   "--out", tmp_path / "o")
    assert r.returncode == 1 and "is not an npsam3 image encoder" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_info(bundle):
    r = npsam3_cli("info", bundle)
    assert r.returncode == 0, r.stderr
    assert "1008 x 1008 input" in r.stdout and "32 tokens per prompt" in r.stdout
    assert "6 fusion-encoder / 6 decoder / 3 geometry layers" in r.stdout
    assert "verified at export: backbone_fpn_0" in r.stdout
