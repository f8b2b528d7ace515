"""Peak memory and wall time of `npsam3 segment` on a large photo with many instances.

    python benchmarks/large_image.py [--bundle weights/demo-random-bundle] [--megapixels 24]

The shipped coins photo is upscaled to the given size (3:2), and the threshold is lowered until
the random-weight demo bundle keeps at least --instances instances (full-size masks for all of them
would take N x H x W bytes as bool, 4x that as float). Each run is its own process; its peak RSS is
the kernel's VmHWM of that process (ru_maxrss of the children).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", default=str(ROOT / "weights" / "demo-random-bundle"))
    ap.add_argument("--megapixels", type=float, default=24)
    ap.add_argument("--instances", type=int, default=40)
    args = ap.parse_args()
    from PIL import Image

    w = int((args.megapixels * 1e6 * 1.5) ** 0.5)
    h = int(w / 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "large.jpg"
        Image.open(ROOT / "assets" / "coins.jpg").resize((w, h), Image.BICUBIC).save(photo, quality=90)
        for threshold in (0.4, 0.39, 0.38, 0.37, 0.36, 0.35):
            out = Path(tmp) / f"out{threshold}"
            start = time.time()
            subprocess.run([sys.executable, "-m", "npsam3.cli", "segment", str(photo), "--bundle",
                            args.bundle, "--prompt", "a coin", "--threshold", str(threshold),
                            "--out", str(out)], check=True, capture_output=True)
            seconds = time.time() - start
            n = len(json.loads((out / "large.segment.json").read_text())["instances"])
            if n >= args.instances:
                break
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"npsam3 segment, {w}x{h} ({w * h / 1e6:.1f} MP) photo, {n} instances "
          f"(threshold {threshold}): peak RSS {peak:.0f} MiB (largest of the runs), "
          f"{seconds:.1f} s wall; all masks as float32 would be {n * w * h * 4 / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
