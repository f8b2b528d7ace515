"""``npsam3 label``: label a dataset with one or more prompts (see npsam3.label)."""

import signal
import sys
import time
from pathlib import Path

from ..errors import Npsam3Error
from .common import count, load_bundle, progress_text, status, threshold, warn_if_random


def add_parser(sub):
    from ..kernels import KERNELS

    s = sub.add_parser(
        "label", help="label a dataset: every image with every prompt, resumable",
        description="Label every image of folders (recursive), globs or manifests (a text file "
        "of paths, a CSV with a 'path' column, a JSONL of {\"path\": ...}) with every prompt; "
        "each image is encoded once. Writes OUT/labels.jsonl (one row per image: the segment "
        "JSON of each prompt), OUT/failures.jsonl (bad images) and OUT/job.json (the settings). "
        "A rerun skips the images already labelled (same path and content).")
    s.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image folder, glob pattern, image file or manifest")
    s.add_argument("--bundle", required=True, help="bundle folder made by npsam3-convert")
    s.add_argument("--prompt", action="append", default=[], help='a concept, e.g. "a dog" (repeatable)')
    s.add_argument("--prompts", metavar="FILE", help="a text file of prompts, one a line")
    s.add_argument("--out", required=True, help="the job's folder (created if needed)")
    s.add_argument("--coco", metavar="FILE", help="also write a COCO dataset file, rebuilt from "
                   "labels.jsonl at the end")
    s.add_argument("--threshold", type=threshold, default=0.5, help="score threshold (default 0.5)")
    s.add_argument("--nms-iou", type=threshold, help="mask-IoU NMS of the kept instances (off by default)")
    s.add_argument("--no-presence", action="store_true",
                   help="score without the presence head (for weak distilled presence heads)")
    s.add_argument("--workers", type=count, help="worker processes on this machine (default "
                   "1), or Ray actors with --ray (default: the cluster's CPUs / --threads)")
    s.add_argument("--threads", type=count, help="threads per worker (default: cores / "
                   "workers; 1 per Ray actor)")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="label with Ray Data, on "
                   "a new local Ray instance or the cluster at ADDRESS (needs npsam3[ray]; write "
                   "--ray=ADDRESS, or --ray last, so that an input is not taken for ADDRESS)")
    s.add_argument("--kernels", choices=KERNELS, help="primitives' implementation (see segment)")
    s.add_argument("--force", action="store_true",
                   help="start the job over (drop OUT's rows) and replace an existing --coco file")
    s.set_defaults(run=run)


def read_prompts(args):
    """--prompt values, then the lines of --prompts FILE (blank lines skipped)."""
    prompts = list(args.prompt)
    if args.prompts:
        try:
            text = Path(args.prompts).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise Npsam3Error(f"cannot read the prompts file {args.prompts}: {e}") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts and not args.prompts:
        raise Npsam3Error("give --prompt or --prompts FILE")
    return prompts


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the job as Ctrl-C does: rows written so far are kept


def run(args):
    from ..bundle import read_manifest
    from ..label import label

    signal.signal(signal.SIGTERM, _interrupted)
    start = time.time()

    def progress(done, total, kind, value):
        if kind == "failure":
            status.print(f"npsam3: error: {value['error']}", sys.stderr)
        status.show(progress_text(done, total, Path(value["path"]).name, start, "labelled"))

    if args.ray is not None or (args.workers or 1) > 1:  # the workers load the bundle, silently
        warn_if_random(args.bundle, read_manifest(args.bundle, verify=False))
        status.show("starting the workers (each loads the bundle) ...")
    summary = label(args.inputs, read_prompts(args), args.bundle, args.out, coco=args.coco,
                    threshold=args.threshold, nms_iou=args.nms_iou, presence=not args.no_presence,
                    workers=args.workers, threads=args.threads, ray=args.ray, force=args.force,
                    kernels=args.kernels, load=load_bundle, progress=progress)
    status.clear()
    seconds = time.time() - start
    coco = f" and {summary.coco}" if summary.coco else ""
    status.print(f"npsam3: {summary.labelled} image(s) labelled in {seconds:.1f} s, "
                 f"{summary.skipped} done before, {summary.failed} failed; "
                 f"wrote {summary.labels}{coco}")
    if summary.failed:
        status.print(f"npsam3: {summary.failed} of {summary.images} image(s) failed (see "
                     f"{summary.failures})", sys.stderr)
    return 1 if summary.failed else 0
