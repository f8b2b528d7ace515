"""Writing bundles: stage everything in a temporary sibling folder, then rename it into place,
so a failed or interrupted export never leaves a half-written bundle."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import npsam3
from npsam3.bundle import FORMAT, FORMAT_VERSION, MANIFEST, file_entry
from npsam3.errors import Npsam3Error


@contextmanager
def staged_bundle(out_dir, force=False):
    """Yield a temporary folder next to ``out_dir``; on success it replaces ``out_dir``.

    An existing non-empty ``out_dir`` is only replaced with ``force``; on any error the temporary
    folder is removed and ``out_dir`` is left as it was.
    """
    out = Path(out_dir)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise Npsam3Error(f"output {out} already exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        _normal_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        out.rename(old / "previous")
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _normal_modes(folder):
    """Give ``folder`` and its files the modes of an ordinary mkdir / open under the current
    umask (typically 0755 / 0644) instead of mkdtemp's 0700 and the 0600 some writers use, so
    that other users (a service account) can read the bundle."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in Path(folder).rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_manifest(bundle_dir, **fields):
    """Write manifest.json listing every file in ``bundle_dir`` with its size and sha256."""
    bundle_dir = Path(bundle_dir)
    files = {p.name: file_entry(p) for p in sorted(bundle_dir.iterdir()) if p.name != MANIFEST}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "npsam3_version": npsam3.__version__, **fields, "files": files}
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
