"""The one exception type users see: its message is a complete, readable sentence."""

import sys


class Npsam3Error(Exception):
    """A problem with the user's input (file, bundle, image, prompt); the CLIs print it as one line."""


def run_command(prog, fn, *args):
    """Run a CLI command: Npsam3Error becomes one line on stderr and exit code 1, Ctrl-C 130."""
    try:
        return fn(*args) or 0
    except Npsam3Error as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
