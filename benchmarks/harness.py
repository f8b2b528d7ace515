"""What the benchmarks share: each implementation runs in a worker process of its own (so each
peak RSS is its own), alternating over rounds so that a drifting machine hits all alike."""

import json
import subprocess
import sys


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
