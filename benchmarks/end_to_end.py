"""End to end: npsam3's Sam3Processor (both kernel sets) vs PyTorch's Sam3Processor on the same
model, and the wall time of `npsam3 segment`.

    python benchmarks/end_to_end.py [--bundle weights/demo-random-bundle] [--runs 3] [--rounds 2]

The model is the demo's (`make demo`): sam3's real detector and neck with a reduced ViT trunk and
text encoder, seeded random weights; the bundle is exported from it when missing. Each
implementation runs in its own worker process, alternating `--rounds` times, so each peak RSS is
its own (VmHWM); the times are medians over all runs after one warm-up, per call:
`set_image(photo)` and `set_text_prompt("a coin", state)` on assets/coins.jpg at threshold 0.4.
Then `npsam3 segment` (a fresh process: start-up, bundle load, image, files) on one photo and
on a folder of 8.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO, PROMPT, THRESHOLD = ROOT / "assets" / "coins.jpg", "a coin", 0.4
WORKERS = {"npsam3": "auto", "npsam3-numpy": "numpy", "torch": None}


def timed_calls(proc, image, runs):
    """Per run: seconds of set_image(image()) (decoding included) and of set_text_prompt."""
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        state = proc.set_image(image())
        t1 = time.perf_counter()
        proc.set_text_prompt(PROMPT, state)
        t2 = time.perf_counter()
        times.append({"set_image": t1 - t0, "set_text_prompt": t2 - t1, "total": t2 - t0})
    return times[1:]


def worker(args):
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from harness import peak_rss_mib

    if args.worker == "torch":
        import torch
        from PIL import Image
        from sam3.model.sam3_image_processor import Sam3Processor

        from npsam3_convert.models import build_tiny_sam3_image_model

        model = build_tiny_sam3_image_model(seed=0)
        with torch.inference_mode():
            times = timed_calls(Sam3Processor(model, device="cpu", confidence_threshold=THRESHOLD),
                                lambda: Image.open(PHOTO).convert("RGB"), args.runs)
    else:
        import npsam3

        model = npsam3.load_model(args.bundle, kernels=WORKERS[args.worker])
        times = timed_calls(npsam3.Sam3Processor(model, confidence_threshold=THRESHOLD),
                            lambda: PHOTO, args.runs)
    print(json.dumps({"times": times, "peak_mib": peak_rss_mib()}))


def segment_wall(bundle, images, kernels):
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "npsam3.cli", "segment", *map(str, images),
                        "--bundle", bundle, "--prompt", PROMPT, "--threshold", str(THRESHOLD),
                        "--kernels", kernels, "--out", out], check=True, capture_output=True,
                       cwd=ROOT)
        return time.perf_counter() - t


def main():
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from harness import print_targets, run

    ran = run(__file__, __doc__, WORKERS, worker, runs=3)
    if ran is None:
        return
    args, results = ran
    med = {impl: {k: 1000 * statistics.median(t[k] for res in rs for t in res["times"])
                  for k in ("set_image", "set_text_prompt", "total")}
           for impl, rs in results.items()}
    peak = {impl: max(res["peak_mib"] for res in rs) for impl, rs in results.items()}
    print(f"end to end on {PHOTO.name}, prompt {PROMPT!r}, threshold {THRESHOLD}; medians of "
          f"{args.rounds}x{args.runs} runs; {os.cpu_count()} cores")
    print(f"{'call':18s} {'npsam3 ms':>10s} {'numpy ms':>10s} {'torch ms':>10s} {'ratio':>6s} {'numpy':>6s}")
    for k in ("set_image", "set_text_prompt", "total"):
        a, n, b = med["npsam3"][k], med["npsam3-numpy"][k], med["torch"][k]
        print(f"{k:18s} {a:10.0f} {n:10.0f} {b:10.0f} {a / b:6.2f} {n / b:6.2f}")
    print(f"{'peak RSS (MiB)':18s} {peak['npsam3']:10.0f} {peak['npsam3-numpy']:10.0f} "
          f"{peak['torch']:10.0f} {peak['npsam3'] / peak['torch']:6.2f} "
          f"{peak['npsam3-numpy'] / peak['torch']:6.2f}")
    print_targets([("end to end (set_image + set_text_prompt), npsam3 / torch",
                    med["npsam3"]["total"] / med["torch"]["total"], 0.75)])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, p in enumerate(sorted((ROOT / "assets").glob("*.jpg")) * 2):
            shutil.copy(p, folder / f"{i}_{p.name}")
        for kernels in ("auto", "numpy"):
            one = segment_wall(args.bundle, [PHOTO], kernels)
            eight = segment_wall(args.bundle, [folder], kernels)
            print(f"npsam3 segment ({kernels} kernels), wall time incl. start-up and bundle load: "
                  f"1 photo {one:.1f} s, folder of 8 {eight:.1f} s ({eight / 8:.1f} s per photo)")


if __name__ == "__main__":
    main()
