"""The images of a labelling job: folders (recursive), glob patterns, image files and manifests.

A manifest is a text file of paths (``.txt``/``.lst``: one a line, blank lines and ``#`` comments
skipped), a CSV file with a ``path`` column or a JSONL file of objects with a ``path`` key;
relative paths are relative to the manifest's folder. Its entries are not checked here: a
missing or unreadable one is the labeller's to report (failures.jsonl), so one bad line does not
stop a job. Every image is named by its real path (symlinks and ``..`` resolved), the job's key
for it; a path given twice is labelled once.
"""

import csv
import glob
import json
import os
from pathlib import Path

from ..cli.common import IMAGE_SUFFIXES, list_images
from ..errors import Npsam3Error

TEXT_MANIFESTS = {".txt", ".lst"}
MANIFESTS = TEXT_MANIFESTS | {".csv", ".jsonl", ".ndjson"}


def image_paths(sources):
    """The real paths (str) of every image that ``sources`` name, in order, each once.

    sources: folders, glob patterns (``photos/**/*.jpg``; the image files among the matches),
    image files and manifests. A source that names nothing (missing file, a pattern without
    matches, an empty folder) is an error."""
    missing = [s for s in sources if not os.path.exists(s) and not glob.has_magic(s)]
    if missing:
        raise Npsam3Error("no such file or folder: " + ", ".join(missing))
    found = {}
    for source in sources:
        for path in _expand(source):
            found.setdefault(os.path.realpath(path), None)
    return list(found)


def _expand(source):
    p = Path(source)
    if p.is_dir():
        return list_images([source], recursive=True)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in MANIFESTS:
            return read_manifest(p)
        if suffix in IMAGE_SUFFIXES:
            return [p]
        raise Npsam3Error(f"{source} is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                          f"nor a manifest ({', '.join(sorted(MANIFESTS))})")
    matches = sorted(Path(m) for m in glob.glob(source, recursive=True)
                     if os.path.isfile(m) and Path(m).suffix.lower() in IMAGE_SUFFIXES)
    if not matches:
        raise Npsam3Error(f"no image files match {source}")
    return matches


def read_manifest(path):
    """The paths a manifest lists (see the module docstring), relative ones joined to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise Npsam3Error(f"cannot read the manifest {path}: {e}") from None
    suffix = path.suffix.lower()
    if suffix in TEXT_MANIFESTS:
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    elif suffix == ".csv":
        rows = csv.DictReader(text.splitlines())
        if "path" not in (rows.fieldnames or []):
            raise Npsam3Error(f"the CSV manifest {path} has no 'path' column (its header: "
                              f"{', '.join(rows.fieldnames or [])})")
        entries = [row["path"] for row in rows if row["path"]]
    else:
        entries = [_jsonl_path(line, path, n) for n, line in enumerate(text.splitlines(), 1)
                   if line.strip()]
    return [path.parent / e for e in entries]


def _jsonl_path(line, manifest, n):
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise Npsam3Error(f"{manifest} line {n} is not a JSON object with a \"path\" string")
    return entry["path"]
