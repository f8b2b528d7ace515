"""onnxruntime session options for the bundle's graphs (image trunk, detector neck, tracker neck,
text encoder): which settings npsam3.kernels.session_options should give.

    python benchmarks/encoder_options.py [--bundle weights/demo-random-bundle] [--runs 3] [--rounds 2]

Each variant runs in its own worker process (alternating, `--rounds` times, so each peak RSS is
its own): npsam3's settings ("npsam3": arena off, no spinning, nn.num_threads() threads, full
graph optimisation) and one change of it at a time. Times are medians per graph over all runs
after a warm-up; the image is assets/coins.jpg preprocessed to the bundle's resolution.
"""

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "npsam3": {},
    "spinning on": {"spinning": True},
    "memory arena on": {"arena": True},
    "optimisation: extended": {"level": "ORT_ENABLE_EXTENDED"},
    "optimisation: basic": {"level": "ORT_ENABLE_BASIC"},
    "threads: onnxruntime default": {"threads": 0},
}


def worker(args):
    import numpy as np
    import onnxruntime as ort

    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from harness import peak_rss_mib

    from npsam3 import encoders, kernels
    from npsam3.image import load_image, preprocess

    change = VARIANTS[args.worker]
    npsam3_options = kernels.session_options

    def options():  # npsam3's session options with the variant's change
        opts = npsam3_options()
        opts.enable_cpu_mem_arena = change.get("arena", opts.enable_cpu_mem_arena)
        opts.intra_op_num_threads = change.get("threads", opts.intra_op_num_threads)
        if change.get("spinning"):
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        if "level" in change:
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, change["level"])
        return opts

    kernels.session_options = options  # encoders.session takes its options from this
    bundle = Path(args.bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    image = preprocess(load_image(ROOT / "assets" / "coins.jpg"), manifest["image_trunk"]["resolution"])
    trunk = encoders.session(bundle / "image_trunk.onnx", ["image"], [encoders.TRUNK_OUTPUT], "trunk")
    graphs = {"image trunk": (trunk, {"image": image})}
    features = trunk.run(None, {"image": image})[0]
    graphs["detector neck"] = (encoders.session(bundle / "detector_neck.onnx", [encoders.TRUNK_OUTPUT],
                                                encoders.FPN_OUTPUTS, "neck"),
                               {encoders.TRUNK_OUTPUT: features})
    if manifest.get("interactive"):
        graphs["tracker neck"] = (encoders.session(bundle / "tracker_neck.onnx",
                                                   [encoders.TRUNK_OUTPUT],
                                                   encoders.TRACKER_NECK_OUTPUTS, "neck"),
                                  {encoders.TRUNK_OUTPUT: features})
    ids = np.zeros((1, manifest["text_encoder"]["context_length"]), np.int64)
    ids[0, :3] = [49406, 320, 49407]
    graphs["text encoder"] = (encoders.session(bundle / "text_encoder.onnx", ["input_ids"],
                                               encoders.TEXT_OUTPUTS, "text"), {"input_ids": ids})
    times = {name: [] for name in graphs}
    for run in range(args.runs + 1):
        for name, (sess, feeds) in graphs.items():
            t = time.perf_counter()
            sess.run(None, feeds)
            if run:
                times[name].append(time.perf_counter() - t)
    print(json.dumps({"times": times, "peak_mib": peak_rss_mib()}))


def main():
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from harness import run

    ran = run(__file__, __doc__, VARIANTS, worker, runs=3)
    if ran is None:
        return
    args, results = ran
    graphs = list(results["npsam3"][0]["times"])
    print(f"onnxruntime session options on {args.bundle}; medians of {args.rounds}x{args.runs} runs (ms)")
    print(f"{'variant':30s}" + "".join(f"{g:>15s}" for g in graphs) + f"{'peak RSS MiB':>14s}")
    for v, rs in results.items():
        med = [1000 * statistics.median(t for res in rs for t in res["times"][g]) for g in graphs]
        print(f"{v:30s}" + "".join(f"{m:15.0f}" for m in med)
              + f"{max(res['peak_mib'] for res in rs):14.0f}")


if __name__ == "__main__":
    main()
