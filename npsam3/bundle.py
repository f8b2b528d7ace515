"""A bundle is a folder: manifest.json plus the files it lists, each with its sha256.

Loading never unpickles: JSON, safetensors and ONNX only.
"""

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load_file

from .errors import Npsam3Error

MANIFEST = "manifest.json"
FORMAT = "npsam3-bundle"
FORMAT_VERSION = 2  # 2: the image encoder split into trunk and necks, the interactive predictor
READABLE_VERSIONS = (1, 2)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path):
    """The manifest's record of one file: its size and sha256."""
    path = Path(path)
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def read_manifest(bundle_dir, verify=True):
    """Parse and check ``bundle_dir/manifest.json``; with ``verify`` every listed file must exist
    with the recorded size and sha256. Raises Npsam3Error naming the first problem."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise Npsam3Error(f"bundle folder {bundle_dir} does not exist")
    path = bundle_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise Npsam3Error(f"{bundle_dir} is not an npsam3 bundle: it has no {MANIFEST}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Npsam3Error(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Npsam3Error(f"{path} is not an npsam3 bundle manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise Npsam3Error(f"{path} has format version {manifest.get('format_version')}; "
                          f"this npsam3 reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise Npsam3Error(f"{path} lists no files")
    if verify:
        for name, entry in files.items():
            f = bundle_dir / name
            if not f.is_file():
                raise Npsam3Error(f"bundle {bundle_dir} is missing {name}")
            if f.stat().st_size != entry.get("bytes"):
                raise Npsam3Error(f"{f} has {f.stat().st_size} bytes, the manifest says "
                                  f"{entry.get('bytes')}: the bundle is damaged or was edited")
            if sha256_file(f) != entry.get("sha256"):
                raise Npsam3Error(f"{f} does not match the sha256 in the manifest: "
                                  "the bundle is damaged or was edited")
    return manifest


def load_weights(path):
    """All tensors of a safetensors file as float32 NumPy arrays, by name."""
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise Npsam3Error(f"cannot read weights {path}: {e}") from None
    bad = sorted(k for k, v in weights.items() if v.dtype.name != "float32")
    if bad:
        raise Npsam3Error(f"{path}: expected float32 tensors, got {weights[bad[0]].dtype} for {bad[0]}")
    return weights
