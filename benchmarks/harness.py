"""What the benchmarks share: each implementation runs in a worker process of its own (so each
peak RSS is its own), alternating over rounds so that a drifting machine hits all alike."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "weights" / "demo-random-bundle"


def parser(doc, workers=None, bundle=True):
    """The options every alternating benchmark has: --bundle (default: the demo's), --rounds, and
    the hidden --worker by which the benchmark runs itself as one implementation's worker."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if bundle:
        ap.add_argument("--bundle", default=str(DEMO_BUNDLE))
    ap.add_argument("--rounds", type=int, default=2, help="worker processes per implementation")
    ap.add_argument("--worker", choices=workers and list(workers), help=argparse.SUPPRESS)
    return ap


def run(script, doc, workers, worker, **options):
    """A benchmark's main: parse --bundle, --rounds, --worker and ``options`` (name=default int,
    forwarded to the workers). In a worker process, ``worker(args)``; in the parent, export the
    demo's random-weight bundle if --bundle is missing, then alternate the workers. Returns
    (args, {worker: [results]}) in the parent, None in a worker."""
    ap = parser(doc, workers)
    for name, default in options.items():
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not Path(args.bundle).is_dir():
        from npsam3_convert.bundle import export_bundle
        from npsam3_convert.models import CONTEXT_LENGTH, build_tiny_sam3_image_model

        export_bundle(build_tiny_sam3_image_model(seed=0), args.bundle,
                      context_length=CONTEXT_LENGTH, weights={"random": True, "seed": 0})
    forwarded = ["--bundle", args.bundle] + [v for k in options for v in (f"--{k}", getattr(args, k))]
    return args, alternate(script, workers, forwarded, args.rounds)


def peak_rss_mib():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the
    parent's peak across fork + exec, so a worker started by a torch process reports its own)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def alternate(script, workers, worker_args, rounds, env=None):
    """Run ``script --worker W *worker_args`` for every W, ``rounds`` times in turn; each worker
    prints one JSON line last. Returns {W: [that JSON of each round]}."""
    results = {w: [] for w in workers}
    for r in range(rounds):
        for w in workers:
            print(f"round {r + 1}/{rounds}: {w} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, script, "--worker", w, *map(str, worker_args)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            results[w].append(json.loads(out.strip().splitlines()[-1]))
    return results


def print_targets(targets):
    """One line per (what, ratio, bound): the ratio, its bound and whether it is met."""
    for what, ratio, bound in targets:
        print(f"target {what} <= {bound:.2f}: {ratio:.2f} {'met' if ratio <= bound else 'MISSED'}")
