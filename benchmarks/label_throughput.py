"""Labelling throughput: images/s of `npsam3 label` (the Python API, each run in a fresh process)
with one process, two worker processes and Ray Data (a local instance of 2 CPUs, two 1-CPU
actors), with one and with three prompts, and what 1M images would cost in core-hours.

    python benchmarks/label_throughput.py [--bundle weights/demo-random-bundle] [--images 32] [--rounds 1]

The photos are made from assets/ by seeded crops (50-100 % of each side) resized to 640 px on
the long side, in a temporary folder. "wall" counts everything (start-up, bundle loads, Ray's
start); "steady" is the rate once every worker has finished its first image, (n - k) / (t_n - t_k)
for k workers: what a long job runs at, and what the projection uses:
core-hours = 1M / steady rate / 3600 x the cores used (all three use this machine's 2 cores).
The six runs alternate ``--rounds`` times (harness.alternate), so a drifting machine hits all
alike; the table shows medians over the rounds.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import alternate  # noqa: E402

PROMPTS = ["a coin", "a cat", "a person"]
BACKENDS = {"1 process": {}, "2 processes": {"workers": 2, "threads": 1},
            "Ray, 2 actors": {"workers": 2, "threads": 1, "ray": ""}}
CORES = 2


def make_photos(folder, n, seed=0):
    """``n`` JPEGs: random crops of the shipped photos, 640 px on the long side."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    assets = sorted((ROOT / "assets").glob("*.jpg"))
    for i in range(n):
        im = Image.open(assets[i % len(assets)]).convert("RGB")
        w, h = im.size
        cw, ch = (int(s * rng.uniform(0.5, 1.0)) for s in (w, h))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch))
        scale = 640 / max(crop.size)
        crop.resize((round(crop.width * scale), round(crop.height * scale))).save(
            folder / f"photo{i:02d}.jpg", quality=90)


def worker(name, photos, bundle):
    """One labelling run into a fresh folder; prints {"wall": s, "steady": images/s}."""
    from npsam3.label import label

    backend, n_prompts = name.rsplit("/", 1)
    options = BACKENDS[backend]
    done = []
    start = time.perf_counter()
    if "ray" in options:
        import ray

        ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as out:
        summary = label([photos], PROMPTS[:int(n_prompts)], bundle, out, **options,
                        progress=lambda *_: done.append(time.perf_counter() - start))
    wall, k = time.perf_counter() - start, options.get("workers", 1)
    assert summary.failed == 0 and summary.labelled == len(done) > k
    print(json.dumps({"wall": wall, "wall_rate": len(done) / wall,
                      "steady": (len(done) - k) / (done[-1] - done[k - 1])}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(ROOT / "weights" / "demo-random-bundle"))
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--photos", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.photos, args.bundle)
    if not Path(args.bundle, "manifest.json").exists():
        sys.exit(f"no bundle at {args.bundle}: run `make demo` (or "
                 "`python -m npsam3_convert.demo`) first, or pass --bundle")
    names = [f"{b}/{n}" for n in (1, 3) for b in BACKENDS]
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        make_photos(photos, args.images)
        results = alternate(__file__, names, ["--photos", photos, "--bundle", args.bundle],
                            args.rounds)
    print(f"\n{args.images} photos (640 px), bundle {os.path.relpath(args.bundle)}, "
          f"{CORES} cores, medians of {args.rounds} round(s)\n")
    print("| backend | prompts | wall s | images/s (wall) | images/s (steady) | vs 1 process "
          "| core-hours per 1M images |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    for name in names:
        wall, wall_rate, steady = (statistics.median(r[key] for r in results[name])
                                   for key in ("wall", "wall_rate", "steady"))
        backend, n_prompts = name.rsplit("/", 1)
        base.setdefault(n_prompts, steady)
        print(f"| {backend} | {n_prompts} | {wall:.0f} | {wall_rate:.3f} | {steady:.3f} | "
              f"{steady / base[n_prompts]:.2f} | {1e6 / steady / 3600 * CORES:,.0f} |")


if __name__ == "__main__":
    main()
