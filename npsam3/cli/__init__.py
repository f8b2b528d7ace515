"""The ``npsam3`` command: ``segment`` (every instance of a concept), ``object`` (one object from
clicks or a box), ``info`` (what a bundle holds). Only argument parsing and file writing live here; the processor does the work."""

import sys
import warnings

from .. import __version__
from ..errors import run_command
from . import info, label, object, segment, serve
from .common import Parser, attach_values, status

def build_parser():
    p = Parser(prog="npsam3", description="SAM3-family segmentation without PyTorch.")
    p.add_argument("--version", action="version", version=f"npsam3 {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (segment, object, label, info, serve):
        command.add_parser(sub)
    return p


def _warn(message, *args, **kwargs):
    status.print(f"npsam3: warning: {message}", sys.stderr)


def main(argv=None):
    args = build_parser().parse_args(attach_values(sys.argv[1:] if argv is None else argv))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _warn
        return run_command("npsam3", args.run, args)
