"""What the CLI writes: COCO RLE (npsam3.rle, checked against pycocotools), the overlay
(npsam3.overlay), the result JSON (npsam3.results) and safe file writes (npsam3.files)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from npsam3 import files, overlay as overlay_module
from npsam3.files import OutputExists, write_atomic
from npsam3.overlay import Overlay, instance_color, overlay
from npsam3.results import is_npsam3_output, json_bytes, result_json, save_json, save_png
from npsam3.rle import (counts_to_string, rle_area, rle_counts, rle_decode, rle_encode,
                        string_to_counts)

import pycocotools.mask as mask_util  # noqa: E402  (dev extra: the decoder users compare with)

# pycocotools' decode trips a NumPy 2 deprecation of its own; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def coco_encode(mask):
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def disks(shape, centres_radii, dtype=np.int32):
    """bool [H, W]: union of disks ((cy, cx), r), built with open grids (little memory)."""
    h, w = shape
    yy = np.arange(h, dtype=dtype)[:, None]
    xx = np.arange(w, dtype=dtype)[None, :]
    m = np.zeros(shape, bool)
    for (cy, cx), r in centres_radii:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return m


def blobs(shape, n, rng):
    h, w = shape
    return disks(shape, [((int(rng.integers(h)), int(rng.integers(w))),
                          int(rng.integers(1, max(2, min(h, w) // 4)))) for _ in range(n)])


def _mask_cases():
    rng = np.random.default_rng(0)
    cases = []
    for shape in [(1, 1), (1, 9), (9, 1), (1, 257), (257, 1), (7, 5), (33, 64), (101, 67)]:
        for density in (0.0, 0.02, 0.5, 0.98, 1.0):
            cases.append((f"rand{shape}-{density}", rng.random(shape) < density))
    for shape in [(1, 1), (6, 4), (31, 17)]:
        first = np.zeros(shape, bool)
        first[0, 0] = True
        cases.append((f"first-pixel{shape}", first))
        last = np.zeros(shape, bool)
        last[-1, -1] = True
        cases.append((f"last-pixel{shape}", last))
        single = np.zeros(shape, bool)
        single[shape[0] // 2, shape[1] // 2] = True
        cases.append((f"single-pixel{shape}", single))
        cases.append((f"all-but-first{shape}", ~first))
    cases.append(("blobs(120,200)", blobs((120, 200), 6, rng)))
    cases.append(("blobs+noise(64,48)", blobs((64, 48), 3, rng) ^ (rng.random((64, 48)) < 0.05)))
    cases.append(("stripes-rows", np.tile(np.arange(40)[:, None] % 3 == 0, (1, 25))))
    cases.append(("stripes-cols", np.tile(np.arange(25)[None, :] % 2 == 0, (40, 1))))
    return cases


MASK_CASES = _mask_cases()


@pytest.mark.parametrize("name,mask", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_rle_matches_pycocotools(name, mask):
    ref = coco_encode(mask)
    for layout in (mask, np.asfortranarray(mask), mask.astype(np.uint8)):
        rle = rle_encode(layout)
        assert rle["size"] == list(mask.shape)
        assert isinstance(rle["counts"], str)
        assert rle["counts"] == ref["counts"].decode("ascii")
    dec = rle_decode(rle)
    assert dec.dtype == bool and dec.shape == mask.shape and dec.flags.c_contiguous
    np.testing.assert_array_equal(dec, mask)
    np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), mask)
    assert rle_area(rle) == int(mask_util.area(ref)) == int(mask.sum())
    np.testing.assert_array_equal(rle_decode(ref), mask)  # bytes counts, as pycocotools gives


def test_rle_large_mask_matches_pycocotools():
    rng = np.random.default_rng(1)
    sparse = blobs((1500, 2000), 12, rng)
    noisy = sparse.copy()
    noisy[:300] ^= rng.random((300, 2000)) < 0.3  # many short runs: the transposing path
    for mask in (sparse, noisy):
        rle = rle_encode(mask)
        ref = coco_encode(mask)
        assert rle["counts"] == ref["counts"].decode("ascii")
        np.testing.assert_array_equal(rle_decode(rle), mask)
        np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), mask)
        assert rle_area(rle) == int(mask_util.area(ref))


def test_counts_string_matches_pycocotools_for_extreme_runs():
    """Long runs and big negative deltas need up to 7 characters per count."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        m = int(rng.integers(1, 40))
        counts = rng.integers(0, 2 ** rng.integers(1, 31, size=m), size=m)
        counts[1:] = np.maximum(counts[1:], 1)  # only the first run may be empty
        total = int(counts.sum())
        ref = mask_util.frPyObjects({"size": [total, 1], "counts": counts.tolist()}, total, 1)
        s = counts_to_string(counts)
        assert s == ref["counts"].decode("ascii")
        np.testing.assert_array_equal(string_to_counts(s), counts)
        assert rle_area({"size": [total, 1], "counts": s}) == counts[1::2].sum()


def test_rle_counts_and_uncompressed_decode():
    mask = np.array([[1, 0, 1], [1, 1, 0]], bool)  # column-major: 1 1 0 1 1 0
    np.testing.assert_array_equal(rle_counts(mask), [0, 2, 1, 2, 1])
    np.testing.assert_array_equal(rle_decode({"size": [2, 3], "counts": [0, 2, 1, 2, 1]}), mask)
    assert rle_area({"size": [2, 3], "counts": [0, 2, 1, 2, 1]}) == 4
    empty = rle_encode(np.zeros((0, 4), bool))
    ref_empty = coco_encode(np.zeros((0, 4), bool))["counts"].decode()
    assert empty == {"size": [0, 4], "counts": ref_empty}
    assert rle_decode(empty).shape == (0, 4)


def test_rle_rejects_bad_input():
    with pytest.raises(ValueError):
        rle_encode(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError):
        rle_decode({"size": [2, 3], "counts": [0, 2, 1]})  # sums to 3, not 6
    with pytest.raises(ValueError):
        string_to_counts("1o")  # ends inside a value (the 0x20 bit of 'o' is set)
    with pytest.raises(ValueError):
        string_to_counts("1 2")


# ---------------------------------------------------------------------------------------------
# overlay
# ---------------------------------------------------------------------------------------------

def _scene(h=240, w=320):
    rng = np.random.default_rng(3)
    image = rng.integers(40, 200, size=(h, w, 3), dtype=np.uint8)
    masks = np.stack([disks((h, w), [((140, 100), 40)]), disks((h, w), [((160, 240), 30)])])
    boxes = np.array([[60, 100, 140, 180], [210, 130, 270, 190]], float)
    return image, masks, boxes, np.array([0.87, 0.456])


def test_overlay_size_mode_and_where_it_draws():
    image, masks, boxes, scores = _scene()
    out = overlay(image, masks, boxes, scores, labels="a dog")
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (320, 240)
    arr = np.asarray(out)
    changed = np.any(arr != image, axis=2)
    assert changed[masks.any(axis=0)].mean() > 0.99  # fills (a channel may coincide by chance)
    # Inside: a 50/50 blend with the instance colour; on the contour: the colour itself.
    c0 = np.array(instance_color(0), float)
    np.testing.assert_allclose(arr[140, 100], (image[140, 100] + c0) / 2, atol=2)
    np.testing.assert_array_equal(arr[140, 61], c0)  # leftmost mask pixel of row 140
    # Nothing is drawn away from the masks, boxes and labels (labels sit just above the boxes).
    drawn = np.zeros(changed.shape, bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        drawn[max(0, y0 - 20):y1 + 2, x0 - 1:x1 + 2] = True
        drawn[max(0, y0 - 20):y0 + 1, x0:x0 + 90] = True
    assert not changed[~drawn].any()
    assert changed[80:100, 60:100].any()  # the label of instance 0 above its box
    assert not changed[:60].any() and not changed[:, :55].any()


def test_overlay_no_instances_and_boxes_only():
    image, masks, boxes, scores = _scene()
    out = overlay(image, np.zeros((0, 240, 320), bool), np.zeros((0, 4)), [])
    np.testing.assert_array_equal(np.asarray(out), image)
    out = overlay(image, None, boxes[:1], scores[:1])
    changed = np.any(np.asarray(out) != image, axis=2)
    assert not changed[140, 100]  # no fill without masks
    assert changed[180, 100] and changed[140, 60]  # box outline


def test_overlay_labels_clipped_inside_image_and_input_forms():
    h, w = 50, 60
    image = np.full((h, w), 90, np.uint8)  # grey [H, W] input
    mask = np.zeros((1, h, w), bool)
    mask[0, :5, -5:] = True
    out = overlay(image, mask, [[55, 0, 60, 5]], [0.5], labels=["a long label text"])
    assert out.size == (w, h) and out.mode == "RGB"
    rgba = np.dstack([np.full((h, w, 3), 90, np.uint8), np.zeros((h, w), np.uint8)])
    out2 = overlay(rgba, mask, [[55, 0, 60, 5]], [0.5], labels=["a long label text"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    with pytest.raises(ValueError):
        overlay(image, np.zeros((1, h, w + 1), bool), [[0, 0, 1, 1]], [0.5])
    with pytest.raises(ValueError):
        overlay(image.astype(np.float32), mask, [[0, 0, 1, 1]], [0.5])


def test_palette_cycles_deterministically():
    n = len(overlay_module.PALETTE)
    assert instance_color(0) == instance_color(n) != instance_color(1)
    assert len({instance_color(i) for i in range(n)}) == n


# ---------------------------------------------------------------------------------------------
# result JSON and atomic writing
# ---------------------------------------------------------------------------------------------

def test_result_json_schema_and_round_trip():
    _, masks, boxes, _ = _scene()
    scores = np.array([0.873456789, np.float32(0.5)])
    res = result_json("/some/dir/dog.jpg", (240, 320), boxes + 0.123456, scores, masks,
                      extra={"prompt": "a dog", "model": "sam3", "threshold": np.float32(0.5)})
    assert res["format"] == "npsam3-segment" and res["format_version"] == 2
    assert res["image"] == "dog.jpg" and res["prompt"] == "a dog"
    assert (res["height"], res["width"]) == (240, 320)
    assert res["model"] == "sam3" and list(res)[-1] == "instances"
    inst = res["instances"]
    assert [i["id"] for i in inst] == [0, 1]
    assert inst[0]["score"] == 0.8735 and isinstance(inst[0]["score"], float)
    assert inst[0]["box"] == [60.12, 100.12, 140.12, 180.12]
    assert all(isinstance(v, float) for v in inst[0]["box"])
    for i, m in zip(inst, masks):
        assert i["area"] == int(m.sum())
        np.testing.assert_array_equal(rle_decode(i["segmentation"]), m)
    back = json.loads(json_bytes(res).decode("utf-8"))
    assert back == json.loads(json.dumps(res, default=float))
    assert back["threshold"] == 0.5
    # Precomputed RLEs (as pycocotools gives them, with bytes) are accepted too.
    rles = [coco_encode(m) for m in masks]
    res2 = result_json("dog.jpg", (240, 320), boxes, scores, rles)
    assert [i["segmentation"] for i in res2["instances"]] == [i["segmentation"] for i in inst]
    empty = result_json("x.png", (2, 3), np.zeros((0, 4)), [], np.zeros((0, 2, 3), bool))
    assert empty["instances"] == [] and json.loads(json_bytes(empty)) == empty


def test_result_json_clips_boxes_to_the_image():
    masks = np.zeros((1, 40, 50), bool)
    res = result_json("a.png", (40, 50), [[-3.5, 2, 61, 45]], [0.9], masks)
    assert res["instances"][0]["box"] == [0.0, 2.0, 50.0, 40.0]


def test_result_json_rejects_bad_input():
    masks = np.zeros((1, 4, 5), bool)
    with pytest.raises(ValueError):
        result_json("a.png", (4, 5), [[0, 0, 1, 1]], [0.5], masks, extra={"instances": []})
    with pytest.raises(ValueError):
        result_json("a.png", (4, 6), [[0, 0, 1, 1]], [0.5], masks)
    with pytest.raises(ValueError):
        result_json("a.png", (4, 5), [[0, 0, 1, 1]], [0.5, 0.6], masks)
    with pytest.raises(ValueError):
        json_bytes({"score": float("nan")})


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "out.json"
    write_atomic(path, b"first")
    assert path.read_bytes() == b"first"
    write_atomic(str(path), b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.png"]


def test_write_atomic_without_overwrite_never_replaces(tmp_path):
    path = tmp_path / "out.json"
    write_atomic(path, b"first", overwrite=False)
    with pytest.raises(OutputExists, match="exists already"):
        write_atomic(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["out.json"]


def test_save_png_and_json(tmp_path):
    image, masks, boxes, scores = _scene()
    png = tmp_path / "dog.png"
    save_png(png, overlay(image, masks, boxes, scores), mark="segment")
    assert is_npsam3_output(png)
    save_png(png, image)  # replaces
    assert not is_npsam3_output(png)
    with Image.open(png) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), image)
    res = result_json("dog.jpg", (240, 320), boxes, scores, masks)
    js = tmp_path / "dog.json"
    save_json(js, res)
    assert json.loads(js.read_text(encoding="utf-8")) == res
    assert sorted(os.listdir(tmp_path)) == ["dog.json", "dog.png"]
    assert not is_npsam3_output(js)


def test_overlay_streamed_equals_whole_and_labels_do_not_pile_up():
    image, masks, boxes, scores = _scene()
    canvas = Overlay(image)
    for i in (1, 0):
        canvas.add(i, masks[i], boxes[i], scores[i], "a dog")
    np.testing.assert_array_equal(np.asarray(canvas.image()),
                                  np.asarray(overlay(image, masks, boxes, scores, "a dog")))
    # ten boxes at the same corner: every label gets a place of its own
    h, w = 200, 300
    canvas = Overlay(np.zeros((h, w, 3), np.uint8))
    for i in range(10):
        canvas.add(i, None, [0, 0, 40, 30], 0.5 + i / 100, "thing")
    placed = []
    draw = __import__("PIL.ImageDraw", fromlist=["ImageDraw"]).Draw(Image.new("RGB", (w, h)))
    for color, _, text in canvas.items:
        canvas._label(draw, text, (0, 0, 30), color, placed)
    assert len(placed) == 10 and all(
        not overlay_module._overlaps(a, b) for i, a in enumerate(placed) for b in placed[:i])
