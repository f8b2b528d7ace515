"""npsam3 at several input resolutions: bundles converted with `npsam3-convert --resolution R`.

    python benchmarks/resolution.py BUNDLE [BUNDLE ...] [--runs 3] [--rounds 2]

Each bundle runs in its own worker process, alternating `--rounds` times; per bundle the median
over all runs (after one warm-up) of `set_image(photo)` and `set_text_prompt("a coin", state)` on
assets/coins.jpg, the number of kept instances and the peak RSS (VmHWM). Speed is relative to
the first bundle, by wall time and by CPU time (all threads; steadier on a shared machine).
Accuracy away from 1008 px is not measured here.
"""

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from end_to_end import PHOTO, PROMPT, THRESHOLD, timed_calls  # noqa: E402
from harness import alternate, parser, peak_rss_mib  # noqa: E402


def worker(args):
    import npsam3

    model = npsam3.load_model(args.worker)
    proc = npsam3.Sam3Processor(model, confidence_threshold=THRESHOLD)
    cpu = time.process_time()
    times = timed_calls(proc, lambda: PHOTO, args.runs)
    cpu = (time.process_time() - cpu) / (args.runs + 1)  # CPU seconds per call, all threads
    kept = len(proc.set_text_prompt(PROMPT, proc.set_image(PHOTO))["scores"])
    print(json.dumps({"times": times, "cpu": cpu, "kept": kept, "resolution": model.resolution,
                      "peak_mib": peak_rss_mib()}))


def main():
    ap = parser(__doc__, bundle=False)
    ap.add_argument("bundles", nargs="*")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.bundles:
        ap.error("give the bundles to compare (the first is the reference, e.g. the 1008 px one)")
    results = alternate(__file__, args.bundles, ["--runs", args.runs], args.rounds)
    print(f"npsam3 on {PHOTO.name}, prompt {PROMPT!r}, threshold {THRESHOLD}; medians of "
          f"{args.rounds}x{args.runs} runs; speed relative to the first bundle")
    print(f"{'resolution':>10s} {'set_image ms':>13s} {'prompt ms':>10s} {'total ms':>9s} "
          f"{'x first':>8s} {'CPU s':>6s} {'x first':>8s} {'kept':>5s} {'peak MiB':>9s}")
    first = first_cpu = None
    for bundle, rs in results.items():
        med = {k: 1000 * statistics.median(t[k] for r in rs for t in r["times"])
               for k in ("set_image", "set_text_prompt", "total")}
        cpu = statistics.median(r["cpu"] for r in rs)
        first, first_cpu = first or med["total"], first_cpu or cpu
        print(f"{rs[0]['resolution']:10d} {med['set_image']:13.0f} {med['set_text_prompt']:10.0f} "
              f"{med['total']:9.0f} {med['total'] / first:8.2f} {cpu:6.1f} {cpu / first_cpu:8.2f} "
              f"{rs[0]['kept']:5d} "
              f"{max(r['peak_mib'] for r in rs):9.0f}")


if __name__ == "__main__":
    main()
