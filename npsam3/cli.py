"""npsam3: segment images with a bundle (``segment``) or describe a bundle (``info``).

Only argument parsing and file writing live here; Sam3Processor does the work.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

from .errors import Npsam3Error, run_command

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def pixel_box(text):
    """'X0,Y0,X1,Y1' -> four floats; argparse turns the ValueError into a one-line error."""
    parts = text.split(",")
    try:
        box = [float(v) for v in parts]
    except ValueError:
        box = []
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r} is not X0,Y0,X1,Y1 (four numbers)")
    return box


def threshold(text):
    try:
        t = float(text)
    except ValueError:
        t = -1.0
    if not 0 <= t <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]")
    return t


def build_parser():
    p = Parser(prog="npsam3", description="SAM3-family concept segmentation without PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("segment", help="segment every instance of a concept in images",
                       description="Segment every instance of the prompted concept; writes "
                       "OUT/<image>.png (overlay) and OUT/<image>.json (scores, boxes, COCO RLE masks).")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    s.add_argument("--bundle", required=True, help="bundle folder made by npsam3-convert")
    s.add_argument("--prompt", help='the concept, e.g. "a dog" (optional with --box)')
    s.add_argument("--box", type=pixel_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="positive exemplar box in pixels (repeatable)")
    s.add_argument("--negative-box", type=pixel_box, action="append", default=[],
                   metavar="X0,Y0,X1,Y1", help="negative exemplar box in pixels (repeatable)")
    s.add_argument("--threshold", type=threshold, default=0.5, help="score threshold (default 0.5)")
    s.add_argument("--nms-iou", type=threshold, help="mask-IoU NMS of the kept instances (off by default)")
    s.add_argument("--no-presence", action="store_true",
                   help="score without the presence head (for weak distilled presence heads)")
    s.add_argument("--out", required=True, help="output folder (created if missing)")
    i = sub.add_parser("info", help="describe a bundle")
    i.add_argument("bundle")
    return p


def list_images(paths):
    """Files as given, folders expanded to their image files (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def normalised_boxes(boxes, width, height):
    """Pixel xyxy boxes -> normalised cxcywh; each must have positive area and lie in the image."""
    out = []
    for x0, y0, x1, y1 in boxes:
        if x1 <= x0 or y1 <= y0:
            raise Npsam3Error(f"box {x0:g},{y0:g},{x1:g},{y1:g} has zero area or is inverted "
                              "(need X0 < X1 and Y0 < Y1)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise Npsam3Error(f"box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the "
                              f"{width}x{height} image")
        out.append([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width,
                    (y1 - y0) / height])
    return out


def progress(i, n, name, start):
    if n > 1 and sys.stderr.isatty():
        done = int(30 * i / n)
        eta = (time.time() - start) / max(i, 1) * (n - i)
        print(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{n} {name[:30]:30s} eta {eta:4.0f}s",
              end="" if i < n else "\n", file=sys.stderr, flush=True)


def segment(args):
    import numpy as np

    from . import load_model
    from .image import load_image
    from .outputs import overlay, result_json, save_json, save_png
    from .processor import Sam3Processor

    if args.prompt is not None and not args.prompt.strip():
        raise Npsam3Error("the text prompt is empty")
    if args.prompt is None and not (args.box or args.negative_box):
        raise Npsam3Error("give --prompt, --box, or both")
    images = list_images(args.images)
    if not images:
        raise Npsam3Error("no image files found in " + ", ".join(args.images))
    model = load_model(args.bundle)
    proc = Sam3Processor(model, confidence_threshold=args.threshold, nms_iou=args.nms_iou,
                         use_presence=not args.no_presence)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, used, start = 0, set(), time.time()
    for n, path in enumerate(images, 1):
        try:
            rgb = load_image(path)
            height, width = rgb.shape[:2]
            boxes = normalised_boxes(args.box + args.negative_box, width, height)
            labels = [True] * len(args.box) + [False] * len(args.negative_box)
            t = time.time()
            state = proc.set_image(rgb)
            proc.set_prompts(state, args.prompt, boxes, labels)
            seconds = time.time() - t
            stem = path.stem
            while stem in used:
                stem += "_"
            used.add(stem)
            label = args.prompt or "exemplar"
            save_png(out_dir / f"{stem}.png",
                     overlay(rgb, state["masks"], state["boxes"], state["scores"], label))
            save_json(out_dir / f"{stem}.json", result_json(
                path, (height, width), args.prompt, state["boxes"], state["scores"], state["masks"],
                extra={"threshold": args.threshold, "seconds": round(seconds, 3),
                       "bundle": str(args.bundle)}))
            print(f"{path}: {len(state['scores'])} instance(s)"
                  + (f", best score {np.max(state['scores']):.2f}" if len(state["scores"]) else "")
                  + f" -> {out_dir / stem}.png/.json ({seconds:.1f} s)")
        except Npsam3Error as e:
            failed += 1
            print(f"npsam3: error: {path}: {e}", file=sys.stderr)
        progress(n, len(images), path.name, start)
    if failed:
        print(f"npsam3: {failed} of {len(images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0


def info(args):
    from .bundle import read_manifest

    m = read_manifest(args.bundle)
    d = m.get("detector", {})
    model = m.get("model", {})
    lines = [f"npsam3 bundle {args.bundle} (format {m['format_version']}, "
             f"made by npsam3 {m.get('npsam3_version', '?')})"]
    if model:
        lines.append("model: " + ", ".join(f"{k} {v}" for k, v in model.items()))
    if "image_encoder" in m:
        img = m["image_encoder"]
        lines.append(f"image encoder: {img['file']}, {img['resolution']} x {img['resolution']} input, "
                     f"{img.get('preprocessing', '')}")
    if "text_encoder" in m:
        lines.append(f"text encoder: {m['text_encoder']['file']}, "
                     f"{m['text_encoder']['context_length']} tokens per prompt")
    if d:
        lines.append(f"detector: d_model {d['d_model']}, {d['heads']} heads, {d['encoder_layers']} "
                     f"fusion-encoder / {d['decoder_layers']} decoder / {d['geometry_layers']} "
                     f"geometry layers, FFN {d['dim_feedforward']}, {d['num_queries']} queries, "
                     f"presence token {'yes' if d['presence_token'] else 'no'}, boxRPB {d['box_rpb']}")
    for name, err in m.get("verification", {}).items():
        lines.append(f"verified at export: {name} max relative error {err:.1e}")
    for name, f in m["files"].items():
        lines.append(f"file {name}: {f['bytes'] / 2**20:.1f} MiB, sha256 {f['sha256'][:16]}... (checked)")
    print("\n".join(lines))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"npsam3: warning: {msg}", file=sys.stderr)
        return run_command("npsam3", segment if args.command == "segment" else info, args)


if __name__ == "__main__":
    sys.exit(main())
