"""The README's detector parity table: npsam3's error per stage next to the reference's own
noise floor (the same PyTorch model run with 1 and with 2 threads), max |a - b| / max |b|.

    python benchmarks/parity_table.py [--feat 72]

Weights: the seeded random detector of the tests; inputs: random FPN levels, 5 valid text tokens,
one positive and one negative box.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from npsam3_convert.parity import format_table, stage_errors  # noqa: E402
from npsam3_convert.reference import build_reference_detector, randomize_, reference_forward_grounding  # noqa: E402
from npsam3.detector import Detector  # noqa: E402
from npsam3.detector.config import infer_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--feat", type=int, default=72)
    args = ap.parse_args()
    model = randomize_(build_reference_detector(), seed=0)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    det = Detector(sd, infer_config({k: v.shape for k, v in sd.items()}))
    rng = np.random.default_rng(1)
    f = args.feat
    fpn = [rng.standard_normal((1, 256, s * f, s * f), dtype=np.float32) for s in (4, 2, 1)]
    feats = rng.standard_normal((32, 1, 256), dtype=np.float32)
    mask = np.arange(32)[None] >= 5
    prompts = dict(boxes=np.array([[0.45, 0.5, 0.3, 0.4], [0.7, 0.3, 0.2, 0.25]], np.float32),
                   box_labels=np.array([True, False]))
    torch.set_num_threads(2)
    ref2 = reference_forward_grounding(model, fpn, feats, mask, **prompts)
    torch.set_num_threads(1)
    ref1 = reference_forward_grounding(model, fpn, feats, mask, **prompts)
    ours = det.forward_grounding(fpn, feats, mask, **prompts)
    floor = {s: rel for s, _, rel in stage_errors(ref1, ref2)}
    rows = [(s, f"{rel:.1e}", f"{err:.1e}", f"{floor[s]:.1e}")
            for s, err, rel in stage_errors(ours, ref2)]
    print(format_table(["stage", "npsam3 rel", "npsam3 abs", "torch 1 vs 2 threads rel"], rows))


if __name__ == "__main__":
    main()
