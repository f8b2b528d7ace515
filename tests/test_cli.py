"""`npsam3 segment` and `npsam3 info` in a subprocess in which torch, torchvision and sam3 cannot
be imported (the runtime path is torch-free), on a bundle made by the converter."""

import hashlib
import json
import os
import pty
import shutil
import subprocess
import sys
import time

import pytest
from PIL import Image

from npsam3 import kernels
from npsam3.rle import rle_decode

from .conftest import ASSETS

NO_TORCH = ("import sys\n"
            "for m in ('torch', 'torchvision', 'sam3'): sys.modules[m] = None\n"
            "from {module} import main\n"
            "sys.exit(main(sys.argv[1:]))")


def npsam3_cli(*args, module="npsam3.cli", **kwargs):
    return subprocess.run([sys.executable, "-c", NO_TORCH.format(module=module), *map(str, args)],
                          capture_output=True, text=True, timeout=600, **kwargs)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder):
    return {p.name: (digest(p), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


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
    assert "RANDOM weights" in err[0] and "meaningless" in err[0]  # the test bundle is random
    assert len(err) == 3 and "broken.jpg" in err[1] and "1 of 3 image(s) failed" in err[2], err
    assert err[1].count("broken.jpg") == 1  # the file is named once
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea.segment.json", "chelsea.segment.png", "coins.segment.json", "coins.segment.png"]
    assert "wrote " in r.stdout and "->" not in r.stdout
    result = json.loads((out / "coins.segment.json").read_text())
    assert (result["height"], result["width"], result["prompt"]) == (303, 384, "a coin")
    assert result["format_version"] == 2 and result["exemplars"] == []
    inst = result["instances"]
    assert inst, "random weights at threshold 0.4 keep some instances"
    assert [i["score"] for i in inst] == sorted((i["score"] for i in inst), reverse=True)
    for i in inst:
        mask = rle_decode(i["segmentation"])
        assert mask.shape == (303, 384) and mask.sum() == i["area"] and i["score"] > 0.4
        x0, y0, x1, y1 = i["box"]
        assert 0 <= x0 <= x1 <= 384 and 0 <= y0 <= y1 <= 303  # clipped to the image
    assert Image.open(out / "coins.segment.png").size == (384, 303)
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_outputs_never_replace_inputs_nor_earlier_outputs(bundle, tmp_path):
    """--out is the folder of the photos: the inputs stay untouched, a rerun refuses to replace
    the earlier outputs (and does not take the overlays for photos), --force replaces them."""
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(ASSETS / "coins.jpg", d)
    Image.open(ASSETS / "chelsea.jpg").save(d / "chelsea.png")  # a PNG photo beside the outputs
    args = ["segment", d, "--bundle", bundle, "--prompt", "a coin", "--threshold", "0.45",
            "--out", d]
    r = npsam3_cli(*args)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in d.iterdir())
    assert names == ["chelsea.png", "chelsea.segment.json", "chelsea.segment.png", "coins.jpg",
                     "coins.segment.json", "coins.segment.png"]
    before = snapshot(d)
    r = npsam3_cli(*args)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("exists (pass --force to replace it)") == 2, r.stderr
    assert "2 of 2 image(s) refused" in r.stderr  # the overlays were not taken for photos
    assert snapshot(d) == before
    r = npsam3_cli(*args, "--force")
    assert r.returncode == 0, r.stderr
    after = snapshot(d)
    assert sorted(after) == names and after["coins.jpg"] == before["coins.jpg"]
    assert after["chelsea.png"] == before["chelsea.png"]
    assert after["coins.segment.json"][1] != before["coins.segment.json"][1]


def test_an_output_that_would_replace_an_input_is_refused_even_with_force(bundle, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(ASSETS / "coins.jpg", d)
    Image.open(ASSETS / "coffee.jpg").save(d / "coins.segment.png")  # a photo, an output's name
    before = digest(d / "coins.segment.png")
    r = npsam3_cli("segment", d, "--bundle", bundle, "--prompt", "a cup", "--out", d, "--force")
    assert r.returncode == 1, r.stderr
    assert "coins.jpg: its output" in r.stderr and "would replace an input file" in r.stderr
    assert digest(d / "coins.segment.png") == before
    assert (d / "coins.segment.segment.json").exists()  # the other photo was still segmented


def test_inputs_with_the_same_stem_get_distinct_outputs(bundle, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(ASSETS / "coins.jpg", d / "x.jpg")
    Image.open(ASSETS / "coins.jpg").save(d / "x.png")
    r = npsam3_cli("segment", d, "--bundle", bundle, "--prompt", "a coin", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "x_jpg.segment.json", "x_jpg.segment.png", "x_png.segment.json", "x_png.segment.png"]


def test_segment_with_exemplar_boxes_over_the_edge(bundle, tmp_path):
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", bundle, "--prompt", "a cup",
                   "--box", "150,100,450,300", "--negative-box", "-40,-10,100,120",
                   "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "notice: box -40,-10,100,120 reaches outside the 600x400 image; clipped to 0,0,100,120" \
        in r.stderr
    result = json.loads((tmp_path / "coffee.segment.json").read_text())
    assert result["exemplars"] == [{"box": [150, 100, 450, 300], "positive": True},
                                   {"box": [0, 0, 100, 120], "positive": False}]


def test_box_only_run_records_its_boxes(bundle, tmp_path):
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", bundle, "--box", "10,20,300,390",
                   "--threshold", "0.3", "--kernels", "numpy", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "coffee.segment.json").read_text())
    assert result["prompt"] is None
    assert result["exemplars"] == [{"box": [10, 20, 300, 390], "positive": True}]


@pytest.mark.parametrize("args, code, message", [
    (["--prompt", "a cup", "--box", "1,2,3"], 2, "is not X0,Y0,X1,Y1"),
    (["--prompt", "a cup", "--box", "1,2,nan,4"], 2, "is not X0,Y0,X1,Y1"),
    (["--prompt", "a cup", "--threshold", "1.5"], 2, "is not a number in [0, 1]"),
    (["--prompt", "a cup", "--unknown-flag"], 2, "unrecognized arguments"),
    (["--prompt", "  "], 1, "the text prompt is empty"),
    (["--prompt", "a cup", "--box", "300,100,200,200"], 1, "zero area or is inverted"),
    (["--prompt", "a cup", "--box", "700,100,900,200"], 1, "lies entirely outside the 600x400 image"),
    (["--prompt", "a cup", "--box", "-90,-50,-10,-5"], 1, "lies entirely outside the 600x400 image"),
    ([], 1, "give --prompt, --box, or both"),
])
def test_segment_bad_arguments(bundle, tmp_path, args, code, message):
    out = tmp_path / "out"
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", bundle, "--out", out, *args)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()  # nothing written, not even the folder


def test_missing_inputs_are_named_before_the_bundle_is_loaded(tmp_path):
    start = time.time()
    r = npsam3_cli("segment", ASSETS / "coins.jpg", tmp_path / "no_such_photo.jpg", "nothing/",
                   "--bundle", tmp_path / "no_bundle", "--prompt", "a coin", "--out", tmp_path / "o")
    assert r.returncode == 1 and time.time() - start < 10
    assert r.stderr.strip().splitlines() == [
        f"npsam3: error: no such file or folder: {tmp_path / 'no_such_photo.jpg'}, nothing/"]
    assert not (tmp_path / "o").exists()


def test_segment_refuses_damaged_bundles(bundle, tmp_path):
    broken = shutil.copytree(bundle, tmp_path / "b1")
    with open(broken / "text_encoder.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", broken, "--prompt", "a cup",
                   "--out", tmp_path / "o")
    assert r.returncode == 1 and "does not match the sha256" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()

    swapped = shutil.copytree(bundle, tmp_path / "b2")  # an ONNX file of another model, re-hashed
    shutil.copy(swapped / "text_encoder.onnx", swapped / "image_trunk.onnx")
    manifest = json.loads((swapped / "manifest.json").read_text())
    from npsam3.bundle import file_entry

    manifest["files"]["image_trunk.onnx"] = file_entry(swapped / "image_trunk.onnx")
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    r = npsam3_cli("segment", ASSETS / "coffee.jpg", "--bundle", swapped, "--prompt", "a cup",
                   "--out", tmp_path / "o")
    assert r.returncode == 1 and "is not an npsam3 image trunk" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_status_line_on_a_terminal(bundle, images, tmp_path):
    """On a tty: a status line while the bundle loads, a bar naming the image in work, erased
    before every result line."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", NO_TORCH.format(module="npsam3.cli"), "segment",
         str(ASSETS / "coins.jpg"), str(ASSETS / "chelsea.jpg"), "--bundle", str(bundle),
         "--prompt", "a cat", "--out", str(tmp_path / "o")],
        stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    stdout, _ = proc.communicate(timeout=600)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = b"".join(chunks).decode()
    assert proc.returncode == 0, err
    assert "loading bundle" in err
    assert "0/2 eta ?  segmenting coins.jpg" in err and "1/2 eta" in err and "segmenting chelsea.jpg" in err
    assert err.endswith("\r\x1b[K") or "\r\x1b[K" in err.splitlines()[-1]  # erased at the end
    assert "\x1b" not in stdout and len(stdout.strip().splitlines()) == 2


def test_object_from_clicks_and_boxes(bundle, tmp_path):
    r = npsam3_cli("object", ASSETS / "coins.jpg", "--bundle", bundle, "--point", "100,150",
                   "--point", "300,60,0", "--box", "-5,20,200,180", "--box", "150,60,300,250",
                   "--multimask", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "box -5,20,200,180 reaches outside the 384x303 image; clipped to 0,20,200,180" in r.stderr
    result = json.loads((tmp_path / "coins.object.json").read_text())
    assert result["format"] == "npsam3-object" and result["multimask"] is True
    assert result["points"] == [{"xy": [100, 150], "label": 1}, {"xy": [300, 60], "label": 0}]
    assert result["boxes"] == [[0, 20, 200, 180], [150, 60, 300, 250]]
    inst = result["instances"]
    assert [(i["object"], i["mask"]) for i in inst] == [(o, m) for o in range(2) for m in range(3)]
    for i in inst:
        mask = rle_decode(i["segmentation"])
        assert mask.shape == (303, 384) and mask.sum() == i["area"] and 0 < i["score"] < 1
    assert Image.open(tmp_path / "coins.object.png").size == (384, 303)
    r = npsam3_cli("object", ASSETS / "coins.jpg", "--bundle", bundle, "--point", "100,150",
                   "--out", tmp_path / "one")
    assert r.returncode == 0 and "1 mask(s)" in r.stdout, r.stderr


@pytest.mark.parametrize("args, code, message", [
    (["--point", "100,150,2"], 2, "is not X,Y or X,Y,LABEL"),
    (["--point", "1,nan"], 2, "is not X,Y or X,Y,LABEL"),
    ([], 1, "give --point, --box, or both"),
    (["--point", "500,150"], 1, "a point lies outside the 384x303 image"),
    (["--box", "50,50,50,80"], 1, "zero area or is inverted"),
])
def test_object_bad_arguments(bundle, tmp_path, args, code, message):
    r = npsam3_cli("object", ASSETS / "coins.jpg", "--bundle", bundle, "--out", tmp_path / "o",
                   *args)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_object_needs_an_interactive_bundle(detection_only_bundle, tmp_path):
    r = npsam3_cli("object", ASSETS / "coins.jpg", "--bundle", detection_only_bundle,
                   "--point", "10,10", "--out", tmp_path / "o")
    assert r.returncode == 1 and "is detection-only" in r.stderr, r.stderr
    r = npsam3_cli("info", detection_only_bundle)
    assert "interactive predictor (points, boxes, masks): no, detection-only" in r.stdout


def test_info(bundle):
    r = npsam3_cli("info", bundle)
    assert r.returncode == 0, r.stderr
    assert "1008 x 1008 input" in r.stdout and "32 tokens per prompt" in r.stdout
    assert "6 fusion-encoder / 6 decoder / 3 geometry layers" in r.stdout
    assert "verified at export: backbone_fpn_0" in r.stdout
    assert "weights: RANDOM (seed 0)" in r.stdout
    assert "interactive predictor (points, boxes, masks): yes, tracker.safetensors" in r.stdout
    conv = "conv2d" in kernels.auto_kernels()
    assert f"kernels (auto): attention{', conv2d' * conv} from onnxruntime" in r.stdout
    assert ("NumPy conv2d (Winograd" in r.stdout) != conv
    r = npsam3_cli("info", bundle, env={**os.environ, "NPSAM3_KERNELS": "onnxruntime"})
    assert "kernels (onnxruntime): attention, conv2d from onnxruntime" in r.stdout
    r = npsam3_cli("info", bundle, env={**os.environ, "NPSAM3_KERNELS": "numpy"})
    assert "kernels: NumPy only (NPSAM3_KERNELS=numpy)" in r.stdout


def test_help_and_version_are_instant():
    for module, args in (("npsam3.cli", ["--help"]), ("npsam3.cli", ["info", "--help"]),
                         ("npsam3.cli", ["--version"]), ("npsam3_convert.cli", ["--help"])):
        start = time.time()
        r = npsam3_cli(*args, module=module)
        assert r.returncode == 0 and time.time() - start < 3, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert npsam3_cli("--version").stdout.strip() == "npsam3 0.1.0"
    assert "BUNDLE" in npsam3_cli("info", "--help").stdout


def test_convert_without_torch_says_which_extra_to_install(tmp_path):
    r = npsam3_cli(tmp_path / "x.pt", tmp_path / "out", module="npsam3_convert.cli")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "needs the convert extra" in r.stderr and "pip install 'npsam3[convert]'" in r.stderr
