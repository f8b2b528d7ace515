"""The README's Python examples run as written (on the test bundle and a shipped photo), without
torch."""

import re
import subprocess
import sys
from pathlib import Path

from .conftest import ASSETS

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section):
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_python_api_example_runs(bundle):
    code = "\n".join(python_blocks("Python API"))  # the concept example, then the interactive one
    code = code.replace('"weights/sam3-bundle"', repr(str(bundle)))
    code = code.replace('"photo.jpg"', repr(str(ASSETS / "coffee.jpg")))
    prelude = "import sys\nfor m in ('torch', 'torchvision', 'sam3'): sys.modules[m] = None\n"
    check = ("\nassert state['masks'].shape[1:] == (400, 600) and len(state['boxes']) == "
             "len(state['scores'])\n")
    r = subprocess.run([sys.executable, "-c", prelude + code + check], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
