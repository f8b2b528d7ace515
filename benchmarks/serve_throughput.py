"""`npsam3 serve` under load: requests/s and latency of concept and click requests over HTTP.

    python benchmarks/serve_throughput.py [--bundle weights/demo-random-bundle] [--clients 1,2,4]
                                          [--requests 40] [--size 640x480]

A real uvicorn server on a loopback port in this process (npsam3.serve.server.running), the
bundle's model on its one inference thread; `--clients` threads each with its own HTTP
connection send `--requests` requests in all per row. The photo is assets/coins.jpg resized to
`--size`, uploaded once. Rows:

- concept, new prompt: a prompt the server has not seen on this image (the detector runs);
  one client, 3 prompts;
- concept, new threshold: the same prompt at another threshold (the server re-selects the kept
  detector output: masks of the kept queries, RLE; the detector does not run);
- click: one object from one or two clicks (prompt encoder + mask decoder; the tracker neck ran
  once before the rows).

Printed: requests/s, median (p50) and p95 latency in ms. The inference thread serialises the
model calls, so requests/s stays flat with more clients while latency grows with the queue.
"""

import argparse
import io
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import DEMO_BUNDLE

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a coin", "a round object", "a shiny thing", "money"]


def photo_bytes(size):
    from PIL import Image

    buf = io.BytesIO()
    Image.open(ROOT / "assets" / "coins.jpg").convert("RGB").resize(size).save(buf, "PNG")
    return buf.getvalue()


def concept_body(i, prompt):
    return {"prompt": prompt, "threshold": round(0.40 + 0.01 * (i % 20), 2)}


def click_body(i, size):
    w, h = size
    x, y = (37 * i) % (w - 20) + 10, (53 * i) % (h - 20) + 10
    points = [{"xy": [x, y], "label": 1}]
    if i % 2:
        points.append({"xy": [w - x, h - y], "label": 0})
    return {"points": points}


def measure(base_url, clients, bodies, path):
    """POST each body to ``path`` from ``clients`` threads; (requests/s, p50 ms, p95 ms)."""
    import httpx

    local = threading.local()

    def send(body):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=600)
        t = time.perf_counter()
        r = local.client.post(path, json=body)
        r.raise_for_status()
        return time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        seconds = list(pool.map(send, bodies))
    wall = time.perf_counter() - start
    ms = sorted(1000 * s for s in seconds)
    return len(ms) / wall, statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=DEMO_BUNDLE, type=Path)
    p.add_argument("--clients", default="1,2,4")
    p.add_argument("--requests", type=int, default=40, help="requests per row")
    p.add_argument("--size", default="640x480", help="photo size WxH")
    args = p.parse_args()
    if not (args.bundle / "manifest.json").exists():
        sys.exit(f"{args.bundle} is not a bundle: run `make demo` (it builds "
                 "weights/demo-random-bundle) or give --bundle")
    import httpx

    import npsam3
    from npsam3.serve.app import create_app
    from npsam3.serve.server import running

    size = tuple(int(v) for v in args.size.split("x"))
    clients = [int(c) for c in args.clients.split(",")]
    model = npsam3.load_model(args.bundle)
    with running(create_app(model, workers=64)) as url, httpx.Client(base_url=url, timeout=600) as c:
        image = c.post("/v1/images", params={"name": "coins.png"}, content=photo_bytes(size)).json()
        concept, click = f"/v1/images/{image['id']}/concept", f"/v1/images/{image['id']}/object"
        c.post(click, json=click_body(0, size)).raise_for_status()  # the tracker neck, once
        print(f"{args.bundle.name}, photo {size[0]}x{size[1]}, {args.requests} requests per row",
              flush=True)
        print(f"{'request':<24} {'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8}")
        rows = [("concept, new prompt", 1, [concept_body(0, p) for p in PROMPTS[1:]], concept)]
        for n in clients:
            rows.append(("concept, new threshold", n,
                         [concept_body(i, PROMPTS[0]) for i in range(args.requests)], concept))
        for n in clients:
            rows.append(("click", n, [click_body(i, size) for i in range(args.requests)], click))
        c.post(concept, json=concept_body(0, PROMPTS[0])).raise_for_status()  # its detection
        for name, n, bodies, path in rows:
            rps, p50, p95 = measure(url, n, bodies, path)
            print(f"{name:<24} {n:>7} {rps:>7.2f} {p50:>8.0f} {p95:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
