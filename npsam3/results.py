"""The result files of the CLI: one JSON per image (COCO RLE masks) and the overlay PNG.

Result JSON schema (``result_json``)::

    {
      "format": "npsam3-segment",      # "npsam3-object" for `npsam3 object`
      "format_version": 2,             # bumped on incompatible changes
      "image": "dog.jpg",              # file name of the input image (no folder)
      "height": 480, "width": 640,     # image size in pixels
      "prompt": "a dog",               # the text prompt (null for exemplar boxes alone)
      "exemplars": [                   # the --box / --negative-box prompts as used (pixels,
        {"box": [x0, y0, x1, y1], "positive": true}     # clipped to the image)
      ],
      "instances": [                   # best score first
        {
          "id": 0,                     # index in this list
          "score": 0.8731,             # float, rounded to 4 decimals
          "box": [x0, y0, x1, y1],     # pixels, clipped to the image, rounded to 2 decimals
          "area": 12345,               # number of mask pixels
          "segmentation": {            # COCO compressed RLE of the [height, width] mask
            "size": [480, 640],        # [height, width]
            "counts": "..."            # as pycocotools.mask.encode(...)["counts"].decode()
          }
        }
      ],
      ...                              # keys of ``extra`` (threshold, timings, bundle, ...)
    }

``npsam3 object`` writes the same schema with format "npsam3-object": "points" ([{"xy": [x, y],
"label": 1 or 0}]), "boxes" (pixels, clipped), "multimask", "fill_holes"; its instances are the
predicted masks in the predictor's order, each with "object" (the index of its box; 0 without
boxes), "mask" (its index among the object's candidates), "score" = the predicted IoU and "box"
= the bounding box of the mask's pixels.

``segmentation`` decodes with ``npsam3.rle.rle_decode`` or ``pycocotools.mask.decode``.
Overlay PNGs carry the text chunk ``npsam3-output: overlay``, by which a later run over the same
folder recognises them as outputs rather than photos.
"""

import io
import json
import os

import numpy as np
from PIL import Image, PngImagePlugin

from .files import write_atomic
from .rle import rle_area, rle_encode

FORMAT_VERSION = 2
OUTPUT_MARK = "npsam3-output"
_RESERVED = ("format", "format_version", "image", "height", "width", "instances")


def clip_boxes(boxes_xyxy, height, width):
    """Pixel boxes [N, 4] clipped to a height x width image (float64)."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    return np.clip(boxes, 0, [width, height, width, height])


def instance_json(i, score, box, mask_or_rle, size_hw):
    """One entry of "instances": a bool mask [H, W] or a COCO RLE dict (counts str or bytes)."""
    if isinstance(mask_or_rle, dict):
        counts = mask_or_rle["counts"]
        rle = {"size": [int(v) for v in mask_or_rle["size"]],
               "counts": bytes(counts).decode("ascii") if isinstance(counts, (bytes, bytearray))
               else counts}
    else:
        rle = rle_encode(mask_or_rle)
    if rle["size"] != [int(v) for v in size_hw]:
        raise ValueError(f"mask {i} has size {rle['size']}, the image is {list(size_hw)}")
    return {"id": i, "score": round(float(score), 4), "box": [round(float(v), 2) for v in box],
            "area": rle_area(rle), "segmentation": rle}


def result_json(image_path, image_size_hw, boxes_xyxy, scores, masks, kind="segment", extra=None,
                fields=None):
    """The result dict of one image (schema in the module docstring), JSON-serialisable.

    boxes_xyxy [N, 4] pixels (clipped here), scores [N], masks: N bool [H, W] masks or N COCO RLE
    dicts, in the order to write (the caller sorts); extra: further top-level keys (e.g. "prompt",
    "exemplars"), which must not collide with the schema's own; fields: N dicts of further keys
    per instance."""
    h, w = (int(v) for v in image_size_hw)
    boxes = clip_boxes(boxes_xyxy, h, w)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(scores) != len(boxes) or len(masks) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(masks)} masks")
    result = {"format": f"npsam3-{kind}", "format_version": FORMAT_VERSION,
              "image": os.path.basename(os.fspath(image_path)), "height": h, "width": w}
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ValueError(f"extra key {key!r} collides with the result schema")
        result[key] = value
    result["instances"] = [{**instance_json(i, scores[i], boxes[i], masks[i], (h, w)),
                            **(fields[i] if fields else {})} for i in range(len(boxes))]
    return result


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def json_bytes(obj, indent=2):
    """UTF-8 JSON text of ``obj``, newline-terminated (indented unless ``indent`` is None). NumPy
    scalars and arrays become numbers and lists; NaN or infinity raises ValueError."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False,
                      separators=None if indent else (",", ":"), default=_json_default)
    return (text + "\n").encode("utf-8")


def png_bytes(image, compress_level=6, mark=None):
    """PNG encoding of a ``PIL.Image`` or a uint8 array; ``mark`` adds the OUTPUT_MARK text."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    info = None
    if mark:
        info = PngImagePlugin.PngInfo()
        info.add_text(OUTPUT_MARK, mark)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level, pnginfo=info)
    return buf.getvalue()


def is_npsam3_output(path):
    """True for a PNG that npsam3 wrote as an output (it carries the OUTPUT_MARK text chunk)."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and OUTPUT_MARK in im.info
    except Exception:  # unreadable files are the image loader's to report
        return False


def save_png(path, image, overwrite=True, mark=None):
    """Atomically write ``image`` as a PNG file (see ``png_bytes``, ``files.write_atomic``)."""
    write_atomic(path, png_bytes(image, mark=mark), overwrite)


def save_json(path, obj, overwrite=True):
    """Atomically write ``obj`` as a JSON file (see ``json_bytes``, ``files.write_atomic``)."""
    write_atomic(path, json_bytes(obj), overwrite)
