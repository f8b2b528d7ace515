"""npsam3.image: loading (modes, EXIF, errors) and preprocessing against the torchvision reference.

The reference is Sam3Processor.set_image (sam3 0.1.4): ``v2.functional.to_image(pil_rgb)`` then
``Compose([ToDtype(uint8, scale=True), Resize((R, R)), ToDtype(float32, scale=True),
Normalize(0.5, 0.5)])``. On CPUs where torch runs its native uint8 resize kernel (AVX2/AVX512
x86, arm64) npsam3 matches it exactly; elsewhere torch resizes in float and may differ by one
uint8 level, i.e. 2/255 after normalisation.
"""

import io
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import npsam3.image as npimage
from npsam3.errors import Npsam3Error
from npsam3.image import load_image, preprocess, resize_uint8

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PHOTOS = ["coins.jpg", "coffee.jpg", "astronaut.jpg", "chelsea.jpg"]
ONE_LEVEL = 2.0 / 255.0  # one uint8 level after (x / 255 - 0.5) / 0.5


# ----------------------------------------------------------------------------------------------
# The torchvision reference
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """``(pil_rgb, R) -> float32 [1, 3, R, R]`` as Sam3Processor.set_image, and the allowed max |diff|."""
    import torch
    from torchvision.transforms import v2
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional._geometry import _do_native_uint8_resize_on_cpu

    def run(pil_rgb, resolution):
        transform = v2.Compose(
            [
                v2.ToDtype(torch.uint8, scale=True),
                v2.Resize(size=(resolution, resolution)),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
            ]
        )
        with torch.inference_mode():
            return transform(v2.functional.to_image(pil_rgb)).unsqueeze(0).numpy()

    exact = _do_native_uint8_resize_on_cpu(InterpolationMode.BILINEAR)
    return run, (0.0 if exact else ONE_LEVEL + 1e-6)


def _max_diff(ours, ref):
    assert ours.shape == ref.shape and ours.dtype == np.float32
    return float(np.abs(ours - ref).max())


@pytest.mark.parametrize("resolution", [1008, 336])
@pytest.mark.parametrize("photo", PHOTOS)
def test_preprocess_matches_torchvision_on_photos(reference, photo, resolution):
    """Every photo upscaled to 1008 and downscaled to 336 (all non-square but the astronaut)."""
    run, tolerance = reference
    path = ASSETS / photo
    with Image.open(path) as im:
        ref = run(im.convert("RGB"), resolution)
    diff = _max_diff(preprocess(load_image(path), resolution), ref)
    assert diff <= tolerance, f"{photo} at {resolution}: max |diff| {diff}"


@pytest.mark.parametrize(
    "size, resolution",
    [
        ((1531, 1103), 1008),  # downscale both ways, odd sizes
        ((2017, 611), 1008),  # downscale width, upscale height
        ((1008, 777), 1008),  # width unchanged: vertical pass only
        ((13, 1021), 336),  # extreme aspect ratio
        ((5, 3), 17),  # tiny
    ],
)
def test_preprocess_matches_torchvision_on_resized_photo(reference, size, resolution):
    """A real photo first brought to an awkward size, so the reference resize sees non-square odd shapes."""
    run, tolerance = reference
    pil_rgb = Image.open(ASSETS / "coffee.jpg").convert("RGB").resize(size, Image.LANCZOS)
    ref = run(pil_rgb, resolution)
    diff = _max_diff(preprocess(load_image(pil_rgb), resolution), ref)
    assert diff <= tolerance, f"{size} -> {resolution}: max |diff| {diff}"


def test_preprocess_matches_sam3_processor_itself(reference):
    """Sam3Processor.set_image with a stub backbone that hands back the tensor it is given."""
    import types

    from sam3.model.sam3_image_processor import Sam3Processor

    class EchoBackbone:
        def forward_image(self, image):
            return {"image": image.numpy()}

    _, tolerance = reference
    model = types.SimpleNamespace(backbone=EchoBackbone(), inst_interactive_predictor=None)
    processor = Sam3Processor(model, resolution=1008, device="cpu")
    with Image.open(ASSETS / "chelsea.jpg") as im:
        state = processor.set_image(im)
    assert (state["original_height"], state["original_width"]) == (300, 451)
    diff = _max_diff(preprocess(load_image(ASSETS / "chelsea.jpg"), 1008), state["backbone_out"]["image"])
    assert diff <= tolerance


def test_resize_matches_torch_on_noise(reference):
    """Random pixels are the hardest case for rounding: compare the uint8 resize itself."""
    from torchvision.transforms import v2

    run, tolerance = reference
    rng = np.random.default_rng(0)
    for height, width, out_h, out_w in [(97, 211, 1008, 1008), (640, 480, 336, 200), (1, 1, 3, 7)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ref = v2.Resize(size=(out_h, out_w))(v2.functional.to_image(Image.fromarray(image)))
        ref = ref.permute(1, 2, 0).numpy().astype(int)
        ours = resize_uint8(image, out_h, out_w).astype(int)
        assert np.abs(ours - ref).max() <= (0 if tolerance == 0 else 1)


def test_preprocess_output_format():
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :, 1] = 255
    out = preprocess(image, 16)
    assert out.shape == (1, 3, 16, 16) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.all(out[0, 0] == -1.0) and np.all(out[0, 1] == 1.0)


def test_preprocess_rejects_bad_input():
    with pytest.raises(Npsam3Error, match="uint8 array"):
        preprocess(np.zeros((4, 4, 3), np.float32), 8)
    with pytest.raises(Npsam3Error, match="uint8 array"):
        preprocess(np.zeros((4, 4), np.uint8), 8)
    with pytest.raises(Npsam3Error, match="resolution"):
        preprocess(np.zeros((4, 4, 3), np.uint8), 0)


# ----------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------


def _saved(tmp_path, im, name, **kwargs):
    path = tmp_path / name
    im.save(path, **kwargs)
    return path


def _rgb(*pixels):
    """Expected ``[1, n, 3]`` image from n RGB triples."""
    return np.array([pixels], dtype=np.uint8)


def test_rgb_file_and_pil_and_array(tmp_path):
    expected = _rgb((1, 2, 3), (250, 128, 0))
    path = _saved(tmp_path, Image.fromarray(expected), "rgb.png")
    for source in (path, str(path), Image.open(path), expected):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
        np.testing.assert_array_equal(out, expected)
    assert load_image(path).flags.writeable


def test_grey_l_and_1bit(tmp_path):
    grey = np.array([[0, 77, 255]], np.uint8)
    out = load_image(_saved(tmp_path, Image.fromarray(grey), "l.png"))
    np.testing.assert_array_equal(out, _rgb((0, 0, 0), (77, 77, 77), (255, 255, 255)))
    bits = Image.fromarray(grey).convert("1", dither=Image.Dither.NONE)
    out = load_image(_saved(tmp_path, bits, "one.png"))
    np.testing.assert_array_equal(out, _rgb((0, 0, 0), (0, 0, 0), (255, 255, 255)))


def test_alpha_is_dropped(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 128], [1, 2, 3, 255]]], np.uint8)
    out = load_image(_saved(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png"))
    np.testing.assert_array_equal(out, rgba[:, :, :3])
    la = np.array([[[9, 0], [99, 255]]], np.uint8)
    out = load_image(_saved(tmp_path, Image.fromarray(la, "LA"), "la.png"))
    np.testing.assert_array_equal(out, _rgb((9, 9, 9), (99, 99, 99)))


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    np.testing.assert_array_equal(load_image(_saved(tmp_path, pal, "p.png")), _rgb((255, 0, 0), (0, 0, 255)))
    path = _saved(tmp_path, pal, "p_transparent.png", transparency=0)
    assert Image.open(path).info.get("transparency") == 0
    np.testing.assert_array_equal(load_image(path), _rgb((255, 0, 0), (0, 0, 255)))
    pa = pal.convert("PA")
    np.testing.assert_array_equal(load_image(pa), _rgb((255, 0, 0), (0, 0, 255)))


def test_cmyk(tmp_path):
    cmyk = Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255]))
    out = load_image(_saved(tmp_path, cmyk, "cmyk.tif"))
    np.testing.assert_array_equal(out, _rgb((255, 255, 255), (0, 255, 255), (0, 0, 0)))


def test_sixteen_bit_keeps_high_byte(tmp_path):
    values = np.array([[0, 0x12FF, 0x8000, 0xFFFF]], np.uint16)
    path = _saved(tmp_path, Image.fromarray(values), "g16.png")
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(load_image(path), _rgb((0,) * 3, (0x12,) * 3, (0x80,) * 3, (0xFF,) * 3))


def test_int32_is_read_as_sixteen_bit(tmp_path):
    values = np.array([[-5, 512, 0x8000, 70000]], np.int32)
    path = _saved(tmp_path, Image.fromarray(values, "I"), "i32.tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(load_image(path), _rgb((0,) * 3, (2,) * 3, (128,) * 3, (255,) * 3))


def test_float_is_read_as_zero_to_one(tmp_path):
    values = np.array([[-1.0, 0.5, 1.0, 7.0]], np.float32)
    path = _saved(tmp_path, Image.fromarray(values, "F"), "f.tif")
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(load_image(path), _rgb((0,) * 3, (127,) * 3, (255,) * 3, (255,) * 3))


def test_other_modes_convert_like_pillow():
    base = Image.fromarray(_rgb((200, 30, 90), (5, 250, 120)))
    for mode in ("YCbCr", "HSV", "RGBX", "RGBa"):
        im = base.convert(mode)
        np.testing.assert_array_equal(load_image(im), np.asarray(im.convert("RGB")), err_msg=mode)


def test_array_shapes():
    grey = np.array([[3, 200]], np.uint8)
    expected = _rgb((3, 3, 3), (200, 200, 200))
    np.testing.assert_array_equal(load_image(grey), expected)
    np.testing.assert_array_equal(load_image(grey[:, :, None]), expected)
    rgba = np.dstack([expected, np.full((1, 2), 7, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), expected)


def test_shipped_photos_load():
    for photo in PHOTOS:
        image = load_image(ASSETS / photo)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    coins = load_image(ASSETS / "coins.jpg")  # greyscale JPEG
    assert coins.shape == (303, 384, 3) and np.array_equal(coins[..., 0], coins[..., 2])


# ----------------------------------------------------------------------------------------------
# EXIF orientation
# ----------------------------------------------------------------------------------------------


def _with_orientation(tmp_path, array, orientation, name):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _saved(tmp_path, Image.fromarray(array), name, exif=exif)


@pytest.mark.parametrize(
    "orientation, upright",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated; shown turned 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_png(tmp_path, orientation, upright):
    array = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10
    path = _with_orientation(tmp_path, array, orientation, f"o{orientation}.png")
    np.testing.assert_array_equal(load_image(path), upright(array))


def test_exif_orientation_jpeg(tmp_path):
    """A phone photo stored sideways: 32 x 16 pixels, left half black, right half white, orientation 6."""
    array = np.zeros((16, 32, 3), np.uint8)
    array[:, 16:] = 255
    path = _with_orientation(tmp_path, array, 6, "phone.jpg")
    out = load_image(path)
    assert out.shape == (32, 16, 3)
    assert out[:12].max() < 40 and out[20:].min() > 215  # black on top, white below


# ----------------------------------------------------------------------------------------------
# Errors: one readable line, naming the file
# ----------------------------------------------------------------------------------------------


def _error(source):
    with pytest.raises(Npsam3Error) as info:
        load_image(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file_and_folder(tmp_path):
    missing = tmp_path / "nope.jpg"
    assert str(missing) in _error(missing) and "not found" in _error(missing)
    assert str(tmp_path) in _error(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    assert str(path) in _error(path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert str(empty) in _error(empty)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_jpeg(tmp_path, cut):
    data = (ASSETS / "coffee.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * cut)])
    assert str(path) in _error(path)
    path.write_bytes(data[:-2])  # only the end-of-image marker missing
    assert str(path) in _error(path)


def test_truncated_png(tmp_path):
    source = _saved(tmp_path, Image.open(ASSETS / "chelsea.jpg"), "whole.png")
    data = source.read_bytes()
    path = tmp_path / "cut.png"
    for size in (len(data) // 2, len(data) - 12):  # pixel data cut; only the IEND chunk missing
        path.write_bytes(data[:size])
        assert str(path) in _error(path)


def _png_chunk(kind, payload):
    body = kind + payload
    return len(payload).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def test_zero_size(tmp_path):
    ihdr = (0).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path = tmp_path / "zero.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    assert str(path) in _error(path)
    assert "zero size" in _error(Image.new("RGB", (0, 5)))
    assert "zero size" in _error(np.zeros((0, 5, 3), np.uint8))


def test_pixel_limit(tmp_path, monkeypatch):
    path = _saved(tmp_path, Image.new("RGB", (20, 10)), "big.png")
    monkeypatch.setattr(npimage, "MAX_PIXELS", 199)
    message = _error(path)
    assert str(path) in message and "too large" in message
    assert "too large" in _error(np.zeros((10, 20, 3), np.uint8))
    monkeypatch.setattr(npimage, "MAX_PIXELS", 200)
    assert load_image(path).shape == (10, 20, 3)


def test_bytes_load_as_the_file_does(tmp_path):
    for photo in PHOTOS:
        data = (ASSETS / photo).read_bytes()
        for source in (data, bytearray(data), memoryview(data)):
            np.testing.assert_array_equal(load_image(source), load_image(ASSETS / photo))
    rotated = _with_orientation(tmp_path, np.arange(24, dtype=np.uint8).reshape(2, 4, 3), 6, "r.png")
    assert load_image(rotated.read_bytes()).shape == (4, 2, 3)  # turned upright
    np.testing.assert_array_equal(load_image(rotated.read_bytes()), load_image(rotated))


def test_bad_bytes_are_named():
    def message(data, name=None):
        with pytest.raises(Npsam3Error) as info:
            load_image(data, name)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "not a readable image" in message(b"this is not a picture\n", "notes.jpg")
    assert "notes.jpg" in message(b"this is not a picture\n", "notes.jpg")
    assert "the given image bytes" in message(b"")
    jpeg = (ASSETS / "coffee.jpg").read_bytes()
    for cut in (jpeg[: len(jpeg) // 2], jpeg[:-2]):
        assert "cut.jpg" in message(cut, "cut.jpg")
    png = io.BytesIO()
    Image.open(ASSETS / "chelsea.jpg").save(png, format="PNG")
    assert "cut.png" in message(png.getvalue()[:-12], "cut.png")  # only IEND missing


def test_pixel_limit_on_bytes(monkeypatch):
    png = io.BytesIO()
    Image.new("RGB", (20, 10)).save(png, format="PNG")
    monkeypatch.setattr(npimage, "MAX_PIXELS", 199)
    with pytest.raises(Npsam3Error, match="too large"):
        load_image(png.getvalue(), "big.png")
    monkeypatch.setattr(npimage, "MAX_PIXELS", 200)
    assert load_image(png.getvalue()).shape == (10, 20, 3)


@pytest.mark.parametrize("pil_limit", [150, 50])  # Pillow warns over its limit, refuses over twice it
def test_pillow_decompression_bomb(tmp_path, monkeypatch, pil_limit):
    path = _saved(tmp_path, Image.new("RGB", (20, 10)), "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    message = _error(path)
    assert str(path) in message and "too large" in message


def test_bad_arrays_and_sources():
    assert "dtype float32" in _error(np.zeros((4, 4, 3), np.float32))
    assert "shape" in _error(np.zeros((4, 4, 2), np.uint8))
    assert "shape" in _error(np.zeros((2, 4, 4, 3), np.uint8))
    assert "cannot load an image from a int" in _error(42)


# ----------------------------------------------------------------------------------------------
# No torch at run time
# ----------------------------------------------------------------------------------------------


def test_image_module_does_not_import_torch():
    code = "import sys, npsam3.image; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ASSETS.parent)
