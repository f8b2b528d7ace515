"""What ``npsam3 segment`` writes: COCO RLE masks, an overlay PNG and a result JSON, all written
atomically.

NumPy and Pillow only.

Result JSON schema (``result_json``; one file per image)::

    {
      "format": "npsam3-segment",      # constant
      "format_version": 1,             # bumped on incompatible changes
      "image": "dog.jpg",              # file name of the input image (no folder)
      "height": 480,                   # image height in pixels
      "width": 640,                    # image width in pixels
      "prompt": "a dog",               # the text prompt
      "instances": [                   # in the order given (the caller sorts, usually by score)
        {
          "id": 0,                     # index in this list
          "score": 0.8731,             # float, rounded to 4 decimals
          "box": [x0, y0, x1, y1],     # floats in pixels, rounded to 2 decimals, (x0, y0) top-left
          "area": 12345,               # int, number of mask pixels
          "segmentation": {            # COCO compressed RLE of the [height, width] mask
            "size": [480, 640],        # [height, width]
            "counts": "..."            # str, as pycocotools.mask.encode(...)["counts"].decode()
          }
        }
      ],
      ...                              # keys of ``extra`` (e.g. model, thresholds, timings)
    }

The ``segmentation`` can be decoded with ``rle_decode`` here or with
``pycocotools.mask.decode(rle)``.

RLE format (COCO, maskApi.c): the mask is flattened in column-major (Fortran) order and stored as
alternating run lengths, starting with a run of zeros (possibly of length 0). The compressed string
form stores each count (from the fourth on, as the difference to the count two places earlier) in
little-endian groups of 5 bits, one character per group: ``chr(48 + bits | 0x20 if more follow)``;
the top bit (0x10) of the last group is the sign.
"""

import io
import json
import os
import secrets

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FORMAT = "npsam3-segment"
FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------
# COCO RLE
# ---------------------------------------------------------------------------------------------

# A count whose magnitude needs more than 5k-1 bits needs more than k characters.
_CHAR_LIMITS = 16 * 32 ** np.arange(7, dtype=np.int64)


def _transpose(a, block=64):
    """C-contiguous copy of ``a.T`` for a 2-D ``a``, copied in bands of rows (cache-friendlier and
    several times faster than ``np.ascontiguousarray(a.T)`` for large masks)."""
    h, w = a.shape
    out = np.empty((w, h), a.dtype)
    for i in range(0, h, block):
        out[:, i:i + block] = a[i:i + block].T
    return out


def _fortran_change_points(mask):
    """Sorted indices ``p`` (int64) into the column-major flattening of bool ``mask [H, W]`` where
    ``flat[p] != flat[p - 1]``."""
    h, w = mask.shape
    if mask.flags.f_contiguous:
        flat = mask.ravel(order="F")  # a view
        return np.flatnonzero(flat[1:] != flat[:-1]) + 1
    inner = mask[1:] != mask[:-1]  # [H-1, W]: pixel (r+1, c) differs from (r, c)
    if np.count_nonzero(inner) * 16 < inner.size:
        # Few changes (typical masks): locate them without transposing the whole mask.
        across = mask[-1, :-1] != mask[0, 1:]  # [W-1]: top of column c+1 differs from bottom of c
        r, c = np.divmod(np.flatnonzero(inner), w)  # (much faster than 2-D np.nonzero)
        pos = np.concatenate((c * h + r + 1, (np.flatnonzero(across) + 1) * h))
        pos.sort()
        return pos
    flat = _transpose(mask).ravel()
    return np.flatnonzero(flat[1:] != flat[:-1]) + 1


def rle_counts(mask):
    """Uncompressed COCO run lengths of a mask: int64 ``[m]``, alternating 0-runs and 1-runs over
    the column-major flattening, starting with a (possibly empty) 0-run. ``mask``: ``[H, W]``,
    nonzero means foreground. An empty (0-pixel) mask gives ``[0]``, as in maskApi.c."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    n = mask.size
    if n == 0:
        return np.zeros(1, np.int64)
    change = _fortran_change_points(mask)
    bounds = np.empty(change.size + 2, np.int64)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1] = change
    runs = np.diff(bounds)
    if mask[0, 0]:
        runs = np.concatenate(([0], runs))
    return runs


def counts_to_string(counts):
    """The compressed string of run lengths ``counts`` ([m] ints), as maskApi.c's rleToString."""
    cnts = np.asarray(counts, dtype=np.int64).ravel()
    if cnts.size == 0:
        return ""
    x = cnts.copy()
    x[3:] -= cnts[1:-2]  # from the fourth count on, store the difference to the count two earlier
    # Characters per value: 1 + number of limits its magnitude reaches (~x for negative x).
    mag = x ^ (x >> 63)
    nchar = np.ones(x.size, np.int64)
    for limit in _CHAR_LIMITS:
        more = mag >= limit
        if not more.any():
            break
        nchar += more
    ends = np.cumsum(nchar)
    starts = ends - nchar
    out = np.empty(int(ends[-1]), np.uint8)
    for k in range(int(nchar.max())):
        if k == 0:
            idx, xs, cont = starts, x, nchar > 1
        else:
            sel = np.flatnonzero(nchar > k)
            idx, xs, cont = starts[sel] + k, x[sel] >> (5 * k), nchar[sel] > k + 1
        # arithmetic shift above: for negative values the sign bits fill the last group's 0x10
        c = (xs & 0x1F).astype(np.uint8)
        c |= cont.view(np.uint8) << 5
        c += 48
        out[idx] = c
    return out.tobytes().decode("ascii")


def string_to_counts(s):
    """Run lengths (int64 ``[m]``) of a compressed RLE str or bytes, as maskApi.c's rleFrString."""
    if isinstance(s, str):
        s = s.encode("ascii")
    b = np.frombuffer(bytes(s), np.uint8)
    if b.size == 0:
        return np.zeros(0, np.int64)
    if b.min() < 48 or b.max() > 111:
        raise ValueError("RLE counts string has characters outside '0'..'o'")
    b = b - np.uint8(48)
    last = (b & 0x20) == 0  # last character of a value
    if not last[-1]:
        raise ValueError("RLE counts string ends in the middle of a value")
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    nchar = ends - starts + 1
    x = (b[starts] & 0x1F).astype(np.int64)
    for k in range(1, int(nchar.max())):
        sel = np.flatnonzero(nchar > k)
        x[sel] |= (b[starts[sel] + k] & 0x1F).astype(np.int64) << (5 * k)
    neg = (b[ends] & 0x10) != 0
    x[neg] |= np.left_shift(np.int64(-1), 5 * nchar[neg])
    cnts = x.copy()
    cnts[1::2] = np.cumsum(x[1::2])  # undo the deltas: cnts[i] = x[i] + cnts[i - 2] for i > 2
    cnts[2::2] = np.cumsum(x[2::2])
    return cnts


def rle_encode(mask):
    """COCO compressed RLE of a mask ``[H, W]`` (bool; any nonzero counts as foreground):
    ``{"size": [H, W], "counts": str}`` with ``counts`` equal to
    ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(rle_counts(mask))}


def _rle_counts_of(rle):
    counts = rle["counts"]
    if isinstance(counts, (str, bytes, bytearray)):
        return string_to_counts(counts)
    return np.asarray(counts, dtype=np.int64).ravel()  # uncompressed RLE: a list of ints


def rle_decode(rle):
    """Bool mask ``[H, W]`` (C-contiguous) of a COCO RLE dict ``{"size": [H, W], "counts": ...}``;
    counts may be the compressed str or bytes, or an uncompressed list of run lengths."""
    h, w = (int(v) for v in rle["size"])
    cnts = _rle_counts_of(rle)
    if cnts.size and cnts.min() < 0:
        raise ValueError("RLE has a negative run length")
    if int(cnts.sum()) != h * w:
        raise ValueError(f"RLE run lengths sum to {int(cnts.sum())}, not {h}*{w}={h * w}")
    values = np.zeros(cnts.size, bool)
    values[1::2] = True
    flat = np.repeat(values, cnts)  # [H*W], column-major
    return _transpose(flat.reshape(w, h))


def rle_area(rle):
    """Number of foreground pixels of a COCO RLE dict (int)."""
    return int(_rle_counts_of(rle)[1::2].sum())


# ---------------------------------------------------------------------------------------------
# Overlay
# ---------------------------------------------------------------------------------------------

# Well-separated colours (after Sasha Trubetskoy's list, greys dropped); instance i gets
# PALETTE[i % len(PALETTE)], so colours depend only on the instance's index.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (0, 0, 128), (128, 128, 0), (250, 190, 212), (170, 255, 195),
], dtype=np.uint8)


def instance_color(i):
    """The RGB colour (tuple of 3 ints) of instance ``i``."""
    return tuple(int(v) for v in PALETTE[i % len(PALETTE)])


def _as_rgb(image):
    """uint8 ``[H, W, 3]`` copy of a uint8 ``[H, W]``, ``[H, W, 1|3|4]`` image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W] or [H, W, 1|3|4], got {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.array(image[:, :, :3], order="C")


def _erode(mask, iterations):
    """4-neighbour binary erosion of bool ``[h, w]``; pixels outside count as background."""
    for _ in range(iterations):
        e = mask.copy()
        e[1:, :] &= mask[:-1, :]
        e[:-1, :] &= mask[1:, :]
        e[:, 1:] &= mask[:, :-1]
        e[:, :-1] &= mask[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        mask = e
    return mask


def _label_font(size):
    try:
        return ImageFont.load_default(size=size)  # scalable Aileron (Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def _draw_label(draw, text, anchor_xy, color, font, image_wh):
    """A filled label box with ``text`` just above ``anchor_xy`` (inside, if no room above),
    shifted to lie inside the image where it fits."""
    w, h = image_wh
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (b - t) // 5)
    lw, lh = r - l + 2 * pad, b - t + 2 * pad
    x, y = anchor_xy
    y = y - lh if y - lh >= 0 else y
    x = max(0, min(x, w - lw))
    y = max(0, min(y, h - lh))
    draw.rectangle([x, y, x + lw - 1, y + lh - 1], fill=color)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + pad - l, y + pad - t), text, fill=(0, 0, 0) if luma > 140 else (255, 255, 255),
              font=font)


def overlay(image, masks, boxes_xyxy, scores, labels=None, alpha=0.5):
    """Draw detections over an image; returns a new RGB ``PIL.Image`` of the image's size.

    image: uint8 ``[H, W, 3]`` (``[H, W]``, ``[H, W, 1]`` and ``[H, W, 4]`` are accepted; alpha is
    dropped). masks: bool ``[N, H, W]`` or None (boxes only). boxes_xyxy: ``[N, 4]`` pixel
    ``x0, y0, x1, y1``. scores: ``[N]``. labels: None, one str for all instances, or N strs; the
    text drawn is ``"{label} {score:.2f}"`` (just the score without a label).

    Instance i gets ``instance_color(i)``: a fill blended at ``alpha``, a full-colour contour just
    inside the mask, a box outline and a label box. Instance 0 is drawn last (on top). Line widths
    and text size grow with the image. Blending is done by Pillow (C) within each mask's bounding
    rectangle, so large images and many instances stay fast.
    """
    out = _as_rgb(image)
    h, w = out.shape[:2]
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = boxes.shape[0]
    if scores.shape[0] != n:
        raise ValueError(f"{n} boxes but {scores.shape[0]} scores")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[0] != n or masks.shape[1:] != (h, w):
            raise ValueError(f"masks must be [N={n}, H={h}, W={w}], got {masks.shape}")
    if labels is None or isinstance(labels, str):
        labels = [labels] * n
    elif len(labels) != n:
        raise ValueError(f"{n} instances but {len(labels)} labels")
    if n == 0:
        return Image.fromarray(out, "RGB")

    line = max(1, round(max(h, w) / 1000))
    fill_alpha = int(round(float(np.clip(alpha, 0.0, 1.0)) * 255))
    order = range(n - 1, -1, -1)  # instance 0 ends on top
    img = Image.fromarray(out, "RGB")

    if masks is not None:
        for i in order:
            m = masks[i].astype(bool, copy=False)
            rows = np.flatnonzero(m.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(m.any(axis=0))
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            crop = m[y0:y1, x0:x1]  # [h', w'] bounding rectangle of the mask
            color = instance_color(i)
            rect = (x0, y0, x1, y1)
            # PIL blends in C: pixel = pixel * (1 - a) + color * a, with a = L-mask value / 255
            img.paste(color, rect, Image.fromarray(crop.view(np.uint8) * np.uint8(fill_alpha)))
            edge = crop & ~_erode(crop, line)
            img.paste(color, rect, Image.fromarray(edge.view(np.uint8) * np.uint8(255)))

    draw = ImageDraw.Draw(img)
    font = _label_font(max(11, round(max(h, w) / 70)))
    for i in order:
        color = instance_color(i)
        box = boxes[i]
        if np.all(np.isfinite(box)):
            x0, x1 = np.clip(np.sort(box[[0, 2]]), 0, w - 1)
            y0, y1 = np.clip(np.sort(box[[1, 3]]), 0, h - 1)
            draw.rectangle([float(x0), float(y0), float(x1), float(y1)], outline=color, width=line)
            anchor = (int(round(x0)), int(round(y0)))
        else:
            anchor = (0, 0)
        text = f"{scores[i]:.2f}" if not labels[i] else f"{labels[i]} {scores[i]:.2f}"
        _draw_label(draw, text, anchor, color, font, (w, h))
    return img


# ---------------------------------------------------------------------------------------------
# Result JSON
# ---------------------------------------------------------------------------------------------

_RESERVED = ("format", "format_version", "image", "height", "width", "prompt", "instances")


def result_json(image_path, image_size_hw, prompt, boxes_xyxy, scores, masks, extra=None):
    """The result dict of one image (schema in the module docstring); JSON-serialisable.

    image_size_hw: ``(H, W)``. boxes_xyxy: ``[N, 4]`` pixels. scores: ``[N]``. masks: bool
    ``[N, H, W]`` (or a sequence of N ``[H, W]`` masks, or of N COCO RLE dicts). extra: dict of
    additional top-level keys, which must not collide with the schema's keys.
    """
    h, w = (int(v) for v in image_size_hw)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = boxes.shape[0]
    if scores.shape[0] != n or len(masks) != n:
        raise ValueError(f"{n} boxes, {scores.shape[0]} scores and {len(masks)} masks")
    instances = []
    for i in range(n):
        m = masks[i]
        if isinstance(m, dict):
            rle = {"size": [int(v) for v in m["size"]], "counts": m["counts"]}
            if isinstance(rle["counts"], (bytes, bytearray)):
                rle["counts"] = bytes(rle["counts"]).decode("ascii")
        else:
            rle = rle_encode(m)
        if rle["size"] != [h, w]:
            raise ValueError(f"mask {i} has size {rle['size']}, the image is [{h}, {w}]")
        instances.append({
            "id": i,
            "score": round(float(scores[i]), 4),
            "box": [round(float(v), 2) for v in boxes[i]],
            "area": rle_area(rle),
            "segmentation": rle,
        })
    result = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "image": os.path.basename(os.fspath(image_path)),
        "height": h,
        "width": w,
        "prompt": prompt,
        "instances": instances,
    }
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ValueError(f"extra key {key!r} collides with the result schema")
        result[key] = value
    return result


# ---------------------------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------------------------

def _fsync_dir(folder):
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, data):
    """Write bytes ``data`` to ``path`` so that ``path`` holds either its old content or all of
    ``data``, never a part.

    Writes a hidden temp file in the same folder (which must exist), fsyncs it and ``os.replace``s
    it over ``path``; on any error the temp file is removed. The new file gets the default
    permissions (0666 minus the umask), not those of a file it replaces.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temp file next to {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def png_bytes(image, compress_level=6):
    """PNG encoding of a ``PIL.Image`` or of a uint8 ``[H, W]`` or ``[H, W, 3|4]`` array."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(path, image, compress_level=6):
    """Atomically write ``image`` (see ``png_bytes``) as a PNG file."""
    write_atomic(path, png_bytes(image, compress_level))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def json_bytes(obj):
    """UTF-8 JSON text of ``obj`` (indented, newline-terminated). NumPy scalars and arrays become
    numbers and lists; NaN or infinity raises ValueError (it is not valid JSON)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    return (text + "\n").encode("utf-8")


def save_json(path, obj):
    """Atomically write ``obj`` as a JSON file (see ``json_bytes``)."""
    write_atomic(path, json_bytes(obj))
