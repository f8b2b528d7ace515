"""The runtime never imports torch: every npsam3 module imports in a process without it."""

import pkgutil
import subprocess
import sys

import npsam3


def test_npsam3_modules_do_not_import_torch():
    names = [m.name for m in pkgutil.walk_packages(npsam3.__path__, "npsam3.")
             if not m.name.endswith(".__main__")]
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sam3'))\n"
            "print(len(sys.modules)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr or "torch was imported"
    assert len(names) >= 10
