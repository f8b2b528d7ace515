"""``npsam3 segment``: every instance of a concept (text and/or exemplar boxes) in images."""

import time

from ..errors import Npsam3Error
from .common import (add_image_job_arguments, clip_box, load_bundle, pixel_box, run_on_images,
                     status, threshold)


def add_parser(sub):
    s = sub.add_parser(
        "segment", help="segment every instance of a concept in images",
        description="Segment every instance of the prompted concept. Writes "
        "OUT/<image>.segment.json (scores, boxes, COCO RLE masks, best first) and "
        "OUT/<image>.segment.png (overlay); an existing output is replaced only with --force, "
        "an input never.")
    add_image_job_arguments(s, "bundle folder made by npsam3-convert")
    s.add_argument("--prompt", help='the concept, e.g. "a dog" (optional with --box)')
    s.add_argument("--box", type=pixel_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="positive exemplar box in pixels (repeatable; clipped to the image)")
    s.add_argument("--negative-box", type=pixel_box, action="append", default=[],
                   metavar="X0,Y0,X1,Y1", help="negative exemplar box in pixels (repeatable)")
    s.add_argument("--threshold", type=threshold, default=0.5, help="score threshold (default 0.5)")
    s.add_argument("--nms-iou", type=threshold, help="mask-IoU NMS of the kept instances (off by default)")
    s.add_argument("--no-presence", action="store_true",
                   help="score without the presence head (for weak distilled presence heads)")
    s.set_defaults(run=run)


def run(args):
    from ..image import load_image
    from ..processor import Sam3Processor

    if args.prompt is not None and not args.prompt.strip():
        raise Npsam3Error("the text prompt is empty")
    if args.prompt is None and not (args.box or args.negative_box):
        raise Npsam3Error("give --prompt, --box, or both")

    def prepare():
        return Sam3Processor(load_bundle(args.bundle, kernels=args.kernels),
                             confidence_threshold=args.threshold, nms_iou=args.nms_iou,
                             use_presence=not args.no_presence, sort_by_score=True)

    return run_on_images(args, "segment", prepare, lambda proc, path, outputs: segment_one(
        proc, args, path, load_image(path), outputs))


def segment_one(proc, args, path, rgb, outputs):
    """Segment one image and write its two outputs, one full-size mask at a time."""
    from ..overlay import Overlay
    from ..queries import concept_instances, concept_result

    height, width = rgb.shape[:2]
    exemplars = [(clip_box(b, width, height), True) for b in args.box] + \
                [(clip_box(b, width, height), False) for b in args.negative_box]
    t = time.time()
    state = proc.set_image(rgb)
    canvas = Overlay(rgb)
    boxes, scores, rles = concept_instances(
        proc, state, args.prompt, exemplars,
        draw=lambda i, mask, box, score: canvas.add(i, mask, box, score, args.prompt or "exemplar"))
    seconds = time.time() - t
    result = concept_result(path, (height, width), args.prompt, exemplars, boxes, scores, rles,
                            threshold=args.threshold, nms_iou=args.nms_iou,
                            presence=not args.no_presence, seconds=round(seconds, 3),
                            bundle=str(args.bundle))
    js, png = outputs.write(path, result, canvas.image())
    best = f", best score {scores[0]:.2f}" if len(scores) else ""
    status.print(f"{path}: {len(scores)} instance(s){best}, {seconds:.1f} s; wrote {js} and {png}")
