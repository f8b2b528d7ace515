"""``npsam3 serve``: the HTTP API and the browser page on one bundle (needs the ``serve`` extra)."""

import argparse
import ipaddress
import os
import sys

from ..errors import Npsam3Error
from .common import count, load_bundle, status

TOKEN_ENV = "NPSAM3_SERVE_TOKEN"


def positive(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def add_parser(sub):
    from ..kernels import KERNELS

    s = sub.add_parser(
        "serve", help="serve an HTTP API and a browser page (needs the serve extra)",
        description="Serve the bundle over HTTP: JSON endpoints under /v1 (OpenAPI docs at "
        "/docs) and a page at / to open an image, type a concept and click objects. The model "
        "runs on one inference thread; requests queue behind it.")
    s.add_argument("--bundle", required=True, help="bundle folder made by npsam3-convert")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--workers", type=count, default=8,
                   help="HTTP concurrency: requests admitted at once, the one being computed "
                   "and those queued behind it (default 8); more get 503 with Retry-After. "
                   "Inference itself runs on one thread, on all cores (NPSAM3_NUM_THREADS)")
    s.add_argument("--max-upload-mb", type=positive, default=40,
                   help="largest upload in MB (default 40)")
    s.add_argument("--cache-mb", type=positive, default=2048,
                   help="memory for encoded images, least recently used dropped first "
                   "(default 2048; about 200 MB per image at 1008 px with one prompt)")
    s.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                   help="require 'Authorization: Bearer TOKEN' on every endpoint but "
                   f"/v1/health (default: env {TOKEN_ENV})")
    s.add_argument("--kernels", choices=KERNELS, help="primitives' implementation (see segment)")
    s.set_defaults(run=run)


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args):
    try:
        from ..serve.app import create_app
        from ..serve.server import serve
    except ImportError as e:
        raise Npsam3Error(f"npsam3 serve needs the serve extra ({e.name} is missing): "
                          "pip install 'npsam3[serve]'") from None
    if not is_loopback(args.host) and not args.token:
        status.print(f"npsam3: warning: binding {args.host} without --token: anyone who can "
                     "reach this port can use the server", sys.stderr)
    model = load_bundle(args.bundle, kernels=args.kernels)
    app = create_app(model, cache_mb=args.cache_mb, workers=args.workers,
                     max_upload_mb=args.max_upload_mb, token=args.token)
    status.print(f"npsam3: serving {args.bundle} at http://{args.host}:{args.port}/ (API docs "
                 "at /docs); Ctrl-C stops", sys.stderr)
    serve(app, args.host, args.port)
