"""``npsam3 object``: one object's mask from clicks and/or a box (the interactive predictor)."""

import argparse
import time

import numpy as np

from ..errors import Npsam3Error
from .common import add_image_job_arguments, clip_box, load_bundle, pixel_box, run_on_images, status


def point(text):
    """'X,Y' or 'X,Y,LABEL' (LABEL 1 = positive, the default, or 0 = negative)."""
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0, 1)) \
            or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"point {text!r} is not X,Y or X,Y,LABEL with LABEL 1 "
                                         "(positive) or 0 (negative)")
    return values[:2], int(values[2]) if len(values) == 3 else 1


def add_parser(sub):
    s = sub.add_parser(
        "object", help="segment one object from clicks and/or a box",
        description="Segment the object at the given clicks and/or box (SAM-style interactive "
        "prompts; several --box segment several objects, each with the same clicks). Writes "
        "OUT/<image>.object.json (COCO RLE masks, predicted IoU) and OUT/<image>.object.png; an "
        "existing output is replaced only with --force, an input never.")
    add_image_job_arguments(s, "bundle folder with the interactive predictor")
    s.add_argument("--point", type=point, action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a click in pixels, LABEL 1 positive (default) or 0 negative (repeatable)")
    s.add_argument("--box", type=pixel_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="the object's box in pixels (repeatable: one object per box)")
    s.add_argument("--multimask", action="store_true",
                   help="three candidate masks per object (default: the one best mask)")
    s.add_argument("--no-fill-holes", action="store_true",
                   help="keep small background holes (sam3's output without scikit-image)")
    s.set_defaults(run=run)


def run(args):
    from ..tracker.predictor import InteractivePredictor

    if not args.point and not args.box:
        raise Npsam3Error("give --point, --box, or both")

    def prepare():
        model = load_bundle(args.bundle, kernels=args.kernels)
        return InteractivePredictor(model, fill_holes=not args.no_fill_holes)

    return run_on_images(args, "object", prepare, lambda predictor, path, outputs: segment_object(
        predictor, args, path, outputs))


def segment_object(predictor, args, path, outputs):
    """Predict the object(s) of one image and write its two outputs."""
    from ..image import load_image
    from ..overlay import Overlay
    from ..queries import mask_box, object_result

    rgb = load_image(path)
    height, width = rgb.shape[:2]
    boxes = [clip_box(b, width, height) for b in args.box]
    t = time.time()
    predictor.set_image(rgb)
    points = np.array([xy for xy, _ in args.point], np.float32) if args.point else None
    labels = np.array([label for _, label in args.point]) if args.point else None
    masks, ious, _ = predictor.predict(point_coords=points, point_labels=labels,
                                       box=np.array(boxes, np.float32) if boxes else None,
                                       multimask_output=args.multimask)
    seconds = time.time() - t
    masks, ious = masks.reshape(-1, height, width) > 0, ious.reshape(-1)
    result = object_result(path, (height, width), args.point, boxes, masks, ious, args.multimask,
                           not args.no_fill_holes, seconds=round(seconds, 3),
                           bundle=str(args.bundle))
    canvas = Overlay(rgb)
    for i in range(len(masks) - 1, -1, -1):
        canvas.add(i, masks[i], mask_box(masks[i]), ious[i], "IoU")
    canvas.add_points(points if points is not None else [], labels if labels is not None else [])
    js, png = outputs.write(path, result, canvas.image())
    status.print(f"{path}: {len(masks)} mask(s), predicted IoU {', '.join(f'{v:.2f}' for v in ious)}, "
                 f"{seconds:.1f} s; wrote {js} and {png}")
