"""Interactive segmentation: npsam3's predict_inst (both kernel sets) vs PyTorch's on the same model.

    python benchmarks/interactive_benchmark.py [--bundle weights/demo-random-bundle] [--clicks 10] [--rounds 2]

The model is the demo's (`make demo`): sam3's real necks, detector and interactive predictor with a
reduced ViT trunk, seeded random weights; the bundle is exported from it when missing. The photo is
assets/astronaut.jpg at 1008 x 1008. Each implementation runs in its own worker process,
alternating `--rounds` times. Reported, medians:

- per click: predict_inst after the first one (prompt encoder, mask decoder, hole filling, resize
  to the photo), over one click, two clicks and a box in turn;
- first click: the first predict_inst after set_image (npsam3 runs the tracker neck there;
  PyTorch's set_image has already run it, so its first click is a plain click);
- first mask: set_image + the first predict_inst, what a user waits for after opening an image.

PyTorch's hole filling runs with the vectorised connected components of
npsam3_convert.reference (the same skimage labels): sam3's own CPU code loops over components in
Python, which on these random-weight masks (speckle: thousands of components) takes ~30 s a click
and would make any ratio meaningless.
"""

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [dict(point_coords=[[500, 400]], point_labels=[1]),
           dict(point_coords=[[500, 400], [200, 800]], point_labels=[1, 0]),
           dict(box=[300, 200, 800, 900])]
WORKERS = {"npsam3": "auto", "npsam3-numpy": "numpy", "torch": None}


def photo():
    from PIL import Image

    return Image.open(ROOT / "assets" / "astronaut.jpg").convert("RGB").resize((1008, 1008))


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def worker(args):
    import numpy as np

    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from harness import peak_rss_mib

    image = photo()
    prompts = [{k: np.array(v) for k, v in p.items()} for p in PROMPTS]
    if args.worker == "torch":
        import torch
        from sam3.model.sam3_image_processor import Sam3Processor

        from npsam3_convert.models import build_tiny_sam3_image_model

        model = build_tiny_sam3_image_model(seed=0)
        proc = Sam3Processor(model, device="cpu")
        torch.set_grad_enabled(False)
    else:
        import npsam3

        model = npsam3.load_model(args.bundle, kernels=WORKERS[args.worker])
        proc = npsam3.Sam3Processor(model)
    for _ in range(2):  # the first round warms up
        state = None

        def set_image():
            nonlocal state
            state = proc.set_image(image)

        t_image = timed(set_image)
        t_first = timed(lambda: model.predict_inst(state, **prompts[0]))
        clicks = [timed(lambda p=prompts[i % len(prompts)]: model.predict_inst(state, **p))
                  for i in range(args.clicks)]
    print(json.dumps({"first": t_first, "first_mask": t_image + t_first, "click": clicks,
                      "peak_mib": peak_rss_mib()}))


def main():
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from harness import run

    ran = run(__file__, __doc__, WORKERS, worker, clicks=9)
    if ran is None:
        return
    args, results = ran
    med = {impl: {"click": 1000 * statistics.median(c for res in rs for c in res["click"]),
                  "first": 1000 * statistics.median(res["first"] for res in rs),
                  "first_mask": 1000 * statistics.median(res["first_mask"] for res in rs)}
           for impl, rs in results.items()}
    print(f"interactive, 1008 x 1008 photo; medians of {args.rounds} rounds x {args.clicks} clicks")
    print(f"{'':28s} {'npsam3 ms':>10s} {'numpy ms':>10s} {'torch ms':>10s} {'ratio':>6s} {'numpy':>6s}")
    for key, label in (("click", "per click"), ("first", "first click (+ tracker neck)"),
                       ("first_mask", "set_image + first click")):
        a, n, b = (med[i][key] for i in WORKERS)
        print(f"{label:28s} {a:10.0f} {n:10.0f} {b:10.0f} {a / b:6.2f} {n / b:6.2f}")


if __name__ == "__main__":
    main()
