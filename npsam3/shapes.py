"""Expected tensor names and shapes, written like the modules that own them, and the check of a
weight file against them (shared by the detector's and the tracker's configurations)."""

import re

from .errors import Npsam3Error


def linear(name, n_in, n_out):
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def norm(name, d):
    return {f"{name}.weight": (d,), f"{name}.bias": (d,)}


def conv(name, c_in, c_out, k):
    return {f"{name}.weight": (c_out, c_in, k, k), f"{name}.bias": (c_out,)}


def mlp(name, n_in, hidden, n_out, num_layers):
    dims = [n_in] + [hidden] * (num_layers - 1) + [n_out]
    return {k: v for i in range(num_layers)
            for k, v in linear(f"{name}.layers.{i}", dims[i], dims[i + 1]).items()}


def count(keys, pattern):
    """1 + the largest index N captured by ``pattern`` (a regex with one group) among ``keys``."""
    idx = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def check_shapes(shapes, expected, source, what):
    """Raise one Npsam3Error listing every missing, unexpected or mis-shaped tensor of
    ``shapes`` ({name: shape}) against ``expected``."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(f"{k} {tuple(shapes[k])} (expected {expected[k]})"
                   for k in set(expected) & set(shapes) if tuple(shapes[k]) != expected[k])
    problems = []
    for kind, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            problems.append(f"{len(items)} {kind}: {', '.join(items[:5])}{more}")
    if problems:
        raise Npsam3Error(f"{source} does not hold the {what} npsam3 expects: " + "; ".join(problems))
