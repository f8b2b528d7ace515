"""Image loading and preprocessing, bit-identical to sam3's ``Sam3Processor.set_image``.

The reference (sam3 0.1.4) turns an RGB image into the model input with torchvision::

    to_image -> ToDtype(uint8, scale=True) -> Resize((R, R)) -> ToDtype(float32, scale=True)
             -> Normalize(mean=0.5, std=0.5)

On a uint8 image, ``Resize`` is antialiased bilinear and runs torch's native uint8 kernel
(the Pillow-SIMD port used on AVX2/AVX512 x86 and on arm64 CPUs). Pillow's own
``Image.resize(BILINEAR)`` is not identical to it (it differs by up to 2 levels, because Pillow
quantises the filter weights to 22 bits and torch to at most 16), so this module reimplements
torch's kernel in NumPy:

1. per output pixel, the triangle-filter weights over the input pixels it covers are computed in
   float64 and normalised (``_bilinear_taps``),
2. they are quantised to int16 fixed point with a precision chosen from the largest weight,
3. the image is filtered horizontally, rounded and clipped to uint8, then filtered vertically.

``preprocess(load_image(x), R)`` equals the reference tensor exactly (max |diff| = 0).

Loading turns any common file or mode into ``uint8 [H, W, 3]`` RGB, following the orientation in
the EXIF data. Every problem with the input raises ``Npsam3Error`` with one line naming the file.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from .errors import Npsam3Error

MAX_PIXELS = 80_000_000
"""Largest image accepted, in pixels (width * height), e.g. 10000 x 8000. It is below Pillow's
decompression-bomb threshold (~89.5 Mpx), so Pillow's bomb warning never fires for accepted images."""

DEFAULT_RESOLUTION = 1008
"""Side of the square model input of SAM3 (Sam3Processor's default ``resolution``)."""

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_image(source, name=None) -> np.ndarray:
    """Load ``source`` as an RGB image: uint8 array ``[H, W, 3]``.

    ``source`` is a path (str or os.PathLike), the bytes of an image file (bytes, bytearray or
    memoryview; ``name`` names them in errors), a PIL image, or a uint8 array ``[H, W]``,
    ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha dropped). Files are decoded in full, so a
    truncated file is an error, and turned upright according to their EXIF orientation.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_path(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _load_file(lambda: io.BytesIO(data), name or "the given image bytes")
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "the given PIL image"
        return _decode(source, name)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "the given image array")
    raise Npsam3Error(
        f"cannot load an image from a {type(source).__name__}: "
        "give a file path, a PIL image or a uint8 array [H, W, 3]"
    )


def _load_path(path: str) -> np.ndarray:
    """Open, fully decode and convert the image file at ``path``: uint8 ``[H, W, 3]``."""
    if not os.path.exists(path):
        raise Npsam3Error(f"image file not found: {path}")
    if os.path.isdir(path):
        raise Npsam3Error(f"image path is a folder, not a file: {path}")
    return _load_file(lambda: path, path)


def _load_file(opener, name: str) -> np.ndarray:
    """Fully decode and convert the image file that ``opener()`` gives (a path or a binary file
    object, opened afresh per call), named ``name`` in errors: uint8 ``[H, W, 3]``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opener()) as im:
                rgb = _decode(im, name)
                file_format = im.format
            if file_format == "PNG":
                _verify_png_chunks(opener())
        return rgb
    except Npsam3Error:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise Npsam3Error(f"image is too large for Pillow's decompression-bomb guard: {name} ({e})") from None
    except Image.UnidentifiedImageError:
        raise Npsam3Error(f"not a readable image file (unknown format or corrupt header): {name}") from None
    except Exception as e:  # Pillow reports broken data as OSError, SyntaxError, ValueError, ...
        raise Npsam3Error(f"cannot read image {name}: {_one_line(e)}") from None


def _verify_png_chunks(file) -> None:
    """Check every PNG chunk's CRC up to IEND: catches a file cut short after its pixel data,
    which decoding alone accepts."""
    with Image.open(file) as im:
        im.verify()


def _decode(im: Image.Image, name: str) -> np.ndarray:
    """Check the size, decode all pixel data, apply EXIF orientation, convert to uint8 ``[H, W, 3]``."""
    _check_size(im.width, im.height, name)
    try:
        im.load()  # full decode: a truncated file raises here, not later
    except Exception as e:
        raise Npsam3Error(f"cannot read image {name}: {_one_line(e)}") from None
    return _pil_to_rgb(_upright(im), name)


def _upright(im: Image.Image) -> Image.Image:
    """Turn/flip as the EXIF (or XMP) orientation says; unreadable metadata leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Convert a decoded PIL image of any mode to uint8 RGB ``[H, W, 3]``.

    Alpha is dropped (colours kept as stored, not composited). 16-bit grey keeps its high byte,
    32-bit integer grey is clipped to 0..65535 and treated as 16-bit, float grey is read as 0..1
    (torchvision's ToDtype(uint8, scale=True) conventions). Grey is repeated over the channels.
    """
    if im.mode == "RGB":
        return np.array(im)  # a writable copy (np.asarray of a PIL image is read-only)
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "I":
        grey = (np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return _grey_to_rgb(grey)
    if im.mode == "F":
        grey = (np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0) * np.float32(255.999)).astype(np.uint8)
        return _grey_to_rgb(grey)
    has_alpha = im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
    try:
        rgb = im.convert("RGBA").convert("RGB") if has_alpha else im.convert("RGB")
    except Exception as e:
        raise Npsam3Error(f"cannot convert image mode {im.mode} to RGB: {name} ({_one_line(e)})") from None
    return np.array(rgb)


def _array_to_rgb(a: np.ndarray, name: str) -> np.ndarray:
    """Check a uint8 array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]``; return uint8 ``[H, W, 3]``."""
    if a.dtype != np.uint8:
        raise Npsam3Error(f"{name} has dtype {a.dtype}; expected uint8 (values 0..255)")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise Npsam3Error(f"{name} has shape {a.shape}; expected [H, W, 3] (or [H, W], [H, W, 1], [H, W, 4])")
    _check_size(a.shape[1], a.shape[0], name)
    if a.ndim == 2 or a.shape[2] == 1:
        return _grey_to_rgb(a.reshape(a.shape[0], a.shape[1]))
    return np.ascontiguousarray(a[:, :, :3])


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]`` -> uint8 ``[H, W, 3]`` with the grey value in every channel."""
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _check_size(width: int, height: int, name: str) -> None:
    """Reject an empty image or one over MAX_PIXELS."""
    if width <= 0 or height <= 0:
        raise Npsam3Error(f"image has zero size ({width} x {height}): {name}")
    if width * height > MAX_PIXELS:
        raise Npsam3Error(f"image is too large ({width} x {height}, over {MAX_PIXELS} pixels): {name}")


def _one_line(e: BaseException) -> str:
    """An exception as one short line: its type and first message line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


def preprocess(image: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Model input from an RGB image, as Sam3Processor.set_image computes it.

    image: uint8 ``[H, W, 3]``. Returns float32 ``[1, 3, R, R]`` in [-1, 1], R = ``resolution``:
    the image resized to R x R (antialiased bilinear, aspect ratio not kept), scaled by 1/255 and
    normalised with mean 0.5, std 0.5.
    """
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        shape = getattr(image, "shape", None)
        raise Npsam3Error(f"preprocess needs a uint8 array [H, W, 3], got {type(image).__name__} {shape}")
    if int(resolution) != resolution or resolution < 1:
        raise Npsam3Error(f"resolution must be a positive integer, got {resolution!r}")
    resized = resize_uint8(image, int(resolution), int(resolution))
    return normalize(resized)[None]


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]``: ``(v * float32(1/255) - 0.5) / 0.5`` in float32, as torch does."""
    levels = np.arange(256, dtype=np.float32)
    table = (levels * np.float32(1.0 / 255.0) - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(table[image].transpose(2, 0, 1))


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of uint8 ``[H, W, C]`` to uint8 ``[height, width, C]``.

    Bit-identical to torch's native uint8 kernel (torchvision v2 Resize, antialias=True):
    horizontal pass first, rounded to uint8, then vertical pass.
    """
    columns = image.transpose(1, 0, 2)  # [W, H, C]: resize along axis 0, where gathers are fast
    columns = _resize_axis0(np.ascontiguousarray(columns), width)
    rows = np.ascontiguousarray(columns.transpose(1, 0, 2))  # [H, width, C]
    return _resize_axis0(rows, height)


def _resize_axis0(x: np.ndarray, out_size: int) -> np.ndarray:
    """Resize uint8 ``[N, ...]`` along axis 0 to ``[out_size, ...]`` with int16 fixed-point weights.

    Sums fit in int32: the weights of one output add up to about 2**precision <= 2**22, times 255.
    """
    if x.shape[0] == out_size:
        return x
    index, weight, precision = _bilinear_taps(x.shape[0], out_size)
    broadcast = (out_size,) + (1,) * (x.ndim - 1)
    acc = np.full((out_size,) + x.shape[1:], 1 << (precision - 1), dtype=np.int32)
    term = np.empty_like(acc)
    for t in range(index.shape[1]):
        np.multiply(x[index[:, t]], weight[:, t].reshape(broadcast), out=term)
        acc += term
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Input indices and int16 fixed-point weights of the antialiased triangle filter.

    Returns ``index`` int64 ``[out_size, K]`` (clamped into range), ``weight`` int32
    ``[out_size, K]`` (zero past each output's support) and ``precision`` (bits after the point).
    Follows torch's ``_compute_index_ranges_int16_weights`` (aten UpSampleKernel.cpp).
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # triangle half-width 1, stretched when downscaling
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    max_taps = int(np.ceil(support)) * 2 + 1

    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
    count = np.clip(count, 0, max_taps)

    taps = np.arange(max_taps)
    distance = (taps[None, :] + first[:, None] - center[:, None] + 0.5) * inv_scale
    w = np.maximum(0.0, 1.0 - np.abs(distance))
    w[taps[None, :] >= count[:, None]] = 0.0
    w /= w.sum(axis=1, keepdims=True)

    precision = _weight_precision(float(w.max()))
    scaled = w * (1 << precision)
    weight = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    index = np.minimum(first[:, None] + taps[None, :], in_size - 1)
    used = weight.any(axis=0)  # drop tap columns that are zero for every output
    return index[:, used], weight[:, used], precision


def _weight_precision(max_weight: float) -> int:
    """Fixed-point bits for the weights: the most such that the largest weight stays below 2**15."""
    precision = 0
    while precision < 22 and int(0.5 + max_weight * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return precision
