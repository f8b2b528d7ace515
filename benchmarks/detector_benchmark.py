"""Detector speed and memory: npsam3 on its three kernel sets (auto, the default; every
onnxruntime kernel; pure NumPy), the PyTorch reference and onnxruntime on the reference's full ONNX
export, on the same random inputs.

    python benchmarks/detector_benchmark.py [--runs 5] [--rounds 2] [--feat 72] [--native-blas]

Each implementation runs in its own worker process (alternating, `--rounds` times), so each peak
RSS is its own; per-stage times are medians over all runs after one warm-up per process. The
weights are the seeded random detector of the tests (converted once into a bundle). Inputs: the
three FPN levels of a 14 * feat px image (72 -> 1008 px) and a 5-token text prompt.

npsam3 does what Sam3Processor.set_text_prompt needs: scores and boxes for all queries, masks for
the kept ones (here the KEPT best-scoring queries, as random weights keep an arbitrary number),
no semantic map; PyTorch runs forward_grounding (masks for all 200 queries, semantic map).
--native-blas unsets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for the workers only.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

STAGES = ["geometry encoder", "fusion encoder", "decoder", "scoring", "segmentation head"]
KEPT = 10


def gflop(feat, d=256, ffn=2048, q=200, layers=6):
    """The reference's work per stage (multiply-adds x 2) for a feat x feat map and a text prompt."""
    n, n4 = feat * feat, 16 * feat * feat
    encoder = layers * (6 * n * d * d * 2 + 2 * n * n * d * 2 + 2 * n * d * ffn * 2)
    decoder = layers * (2 * n * d * d * 2 + 2 * (q + 1) * n * d * 2 + 2 * (q + 1) * d * ffn * 2)
    seg = (2 * n * d * d * 2 + 9 * d * d * (n4 // 4) * 2 + 9 * d * d * n4 * 2 + d * d * n4 * 2
           + q * d * n4 * 2)
    return {"geometry encoder": 3 * 2 * n * d * d * 2, "fusion encoder": encoder, "decoder": decoder,
            "scoring": 0, "segmentation head": seg}


def inputs(feat):
    rng = np.random.default_rng(1)
    fpn = [rng.standard_normal((1, 256, s * feat, s * feat), dtype=np.float32) for s in (4, 2, 1)]
    feats = rng.standard_normal((32, 1, 256), dtype=np.float32)
    return fpn, feats, np.arange(32)[None] >= 5


def run_npsam3(bundle, feat, runs, kernels):
    import npsam3

    t = time.perf_counter()
    det = npsam3.load_detector(bundle, kernels=kernels)
    load = time.perf_counter() - t
    fpn, feats, mask = inputs(feat)
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        out = det.detect(fpn, feats, mask)
        det.predict_masks(out, np.argsort(-out["pred_logits"][0, :, 0])[:KEPT])
        total = time.perf_counter() - t
        stages = dict(det.timings)
        stages["segmentation head"] += stages.pop("masks")
        times.append({"total": total, **stages})
    return times[1:], {"bundle load": load}


def run_torch(feat, runs):
    import torch

    from npsam3_convert.reference import build_reference_detector, randomize_, reference_forward_grounding

    model = randomize_(build_reference_detector(), seed=0)
    parts = {"geometry encoder": model.geometry_encoder, "fusion encoder": model.transformer.encoder,
             "decoder": model.transformer.decoder, "scoring": model.dot_prod_scoring,
             "segmentation head": model.segmentation_head}
    timings = {}
    for name, m in parts.items():
        m.register_forward_pre_hook(lambda m, a, name=name: timings.__setitem__(name, -time.perf_counter()))
        m.register_forward_hook(lambda m, a, o, name=name: timings.__setitem__(name, timings[name] + time.perf_counter()))
    fpn, feats, mask = inputs(feat)
    times = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            t = time.perf_counter()
            reference_forward_grounding(model, fpn, feats, mask)
            times.append({"total": time.perf_counter() - t, **timings})
    return times[1:], {}


def run_ort(onnx_path, feat, runs):
    from ort_detector import time_ort

    times = []
    time_ort(onnx_path, runs, feat, times)
    return [{"total": t} for t in times], {}


NPSAM3 = {"npsam3": "auto", "npsam3-ort": "onnxruntime", "npsam3-numpy": "numpy"}  # worker -> kernels


def worker(args):
    if args.worker in NPSAM3:
        times, extra = run_npsam3(args.bundle, args.feat, args.runs, NPSAM3[args.worker])
    elif args.worker == "onnxruntime":
        times, extra = run_ort(os.path.join(args.bundle, "detector.onnx"), args.feat, args.runs)
    else:
        times, extra = run_torch(args.feat, args.runs)
    from harness import peak_rss_mib

    print(json.dumps({"times": times, "peak_mib": peak_rss_mib(), **extra}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per worker process")
    ap.add_argument("--rounds", type=int, default=2, help="worker processes per implementation")
    ap.add_argument("--feat", type=int, default=72, help="lowest FPN level size (72 = 1008 px)")
    ap.add_argument("--native-blas", action="store_true")
    ap.add_argument("--no-ort", action="store_true", help="skip the onnxruntime export and timing")
    ap.add_argument("--worker", choices=[*NPSAM3, "torch", "onnxruntime"], help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    if args.worker:
        return worker(args)

    from harness import alternate, print_targets
    from npsam3_convert import export_detector
    from npsam3_convert.reference import build_reference_detector, randomize_

    impls = [*NPSAM3, "torch"] + ([] if args.no_ort else ["onnxruntime"])
    with tempfile.TemporaryDirectory() as tmp:
        bundle = os.path.join(tmp, "detector")
        model = randomize_(build_reference_detector(), seed=0)
        export_detector(model.state_dict(), bundle)
        if not args.no_ort:
            from ort_detector import export_detector_onnx

            print("exporting the reference detector to ONNX ...", file=sys.stderr, flush=True)
            export_detector_onnx(model, os.path.join(bundle, "detector.onnx"), args.feat)
        del model
        env = dict(os.environ)
        if args.native_blas:
            env.pop("OPENBLAS_CORETYPE", None)
            env.pop("OPENBLAS_L2_SIZE", None)
        results = alternate(__file__, impls, ["--bundle", bundle, "--feat", args.feat,
                                              "--runs", args.runs], args.rounds, env)

    med = {impl: {s: 1000 * statistics.median(t[s] for res in results[impl] for t in res["times"])
                  for s in STAGES + ["total"]} for impl in (*NPSAM3, "torch")}
    peak = {impl: max(res["peak_mib"] for res in rs) for impl, rs in results.items()}
    blas = "native OpenBLAS kernels" if args.native_blas else \
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    print(f"detector, {args.feat * 14} px ({args.feat}x{args.feat} features), text prompt, npsam3 "
          f"masks for {KEPT} kept queries; medians of {args.rounds}x{args.runs} runs; {blas}; "
          f"{os.cpu_count()} cores")
    work = gflop(args.feat)
    work["total"] = sum(work.values())
    cols = [*NPSAM3, "torch"]
    table = {s: ({c: med[c][s] for c in cols}, f"{work[s] / 1e9:6.1f}") for s in STAGES + ["total"]}
    table["peak RSS (MiB)"] = ({c: peak[c] for c in cols}, "")
    print(f"{'stage':20s} {'GFLOP':>6s}" + "".join(f"{c + ' ms':>17s}" for c in cols)
          + "".join(f"{c + ' / torch':>21s}" for c in NPSAM3))
    for stage, (v, gf) in table.items():
        print(f"{stage:20s} {gf:>6s}" + "".join(f"{v[c]:17.1f}" for c in cols)
              + "".join(f"{v[c] / v['torch']:21.2f}" for c in NPSAM3))
    from npsam3.kernels import auto_kernels

    print(f"(npsam3: the default kernel set, auto: here {', '.join(auto_kernels())} from onnxruntime; "
          "npsam3-ort: every onnxruntime kernel; npsam3-numpy: pure NumPy)")
    if "onnxruntime" in results:
        ort = 1000 * statistics.median(t["total"] for res in results["onnxruntime"] for t in res["times"])
        print(f"onnxruntime (ONNX export of the reference, all 200 masks): {ort:.1f} ms, "
              f"peak RSS {peak['onnxruntime']:.0f} MiB; npsam3 / onnxruntime: time "
              f"{med['npsam3']['total'] / ort:.2f}, peak RSS {peak['npsam3'] / peak['onnxruntime']:.2f}")
    load = statistics.median(res["bundle load"] for res in results["npsam3"])
    print(f"npsam3 bundle load: {1000 * load:.0f} ms")
    targets = [("detector time, npsam3 / torch", med["npsam3"]["total"] / med["torch"]["total"], 0.75),
               ("peak RSS, npsam3 / torch", peak["npsam3"] / peak["torch"], 0.6),
               ("detector time, npsam3-numpy / torch (issue 8's measured 8.7 / 5.4 s)",
                med["npsam3-numpy"]["total"] / med["torch"]["total"], 8.7 / 5.4)]
    if "onnxruntime" in results:
        targets.insert(1, ("detector time, npsam3 / onnxruntime", med["npsam3"]["total"] / ort, 0.9))
    print_targets(targets)


if __name__ == "__main__":
    main()
