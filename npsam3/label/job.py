"""A labelling job: its folder OUT, resuming it, and the one loop that writes its rows.

OUT holds ``job.json`` (the settings: prompts, threshold, NMS, presence, the bundle's manifest
digest; and the COCO file last written), ``labels.jsonl`` (one row per image, see
``labeler``; appended, flushed and fsynced one row at a time, by this process only) and
``failures.jsonl`` (this run's bad images: path and a one-line reason). A rerun skips the images
whose row exists for the same path and file content (sha256), so a killed job loses only the
images in flight; a torn last line (a crash mid-write) is dropped and its image redone, as is an
image whose file changed. Rows of images that a rerun does not name stay: the job's dataset is
all it has labelled. Other settings on an existing OUT are refused, unless ``force`` (which
starts over).
"""

import importlib.util
import json
import os
import warnings
from collections import namedtuple
from pathlib import Path

from ..bundle import MANIFEST, read_manifest
from ..errors import Npsam3Error
from ..files import write_atomic
from ..results import json_bytes
from .coco import coco_dataset
from .labeler import file_sha256

LABELS, FAILURES, JOB = "labels.jsonl", "failures.jsonl", "job.json"
COMPARED = ("prompts", "threshold", "nms_iou", "presence", "bundle_manifest")

Summary = namedtuple("Summary", "images labelled skipped failed labels failures coco")
Summary.__doc__ = """What a run did: counts of input images, images labelled now, images done
before (skipped) and failed; the paths of labels.jsonl, failures.jsonl and the COCO file (or None)."""


def job_settings(prompts, bundle, threshold=0.5, nms_iou=None, presence=True):
    """The settings dict that job.json records and workers receive (prompts checked: non-empty,
    distinct; the bundle's manifest read, not its files)."""
    from ..processor import _check_threshold

    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise Npsam3Error("give at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise Npsam3Error(f"prompt {i + 1} is empty")
        if prompt in prompts[:i]:
            raise Npsam3Error(f"the prompt {prompt!r} is given twice")
    read_manifest(bundle, verify=False)
    return {"prompts": prompts, "threshold": _check_threshold(threshold),
            "nms_iou": None if nms_iou is None else _check_threshold(nms_iou),
            "presence": bool(presence),
            "bundle": os.path.abspath(bundle),
            "bundle_manifest": file_sha256(Path(bundle) / MANIFEST)}


def _row_key(line):
    """(path, sha256) of a labels.jsonl line, or None if it is not a whole row."""
    try:
        row = json.loads(line)
        return row["path"], row["sha256"]
    except (ValueError, TypeError, KeyError):
        return None


class JobFolder:
    """OUT of one job (see the module docstring). Checks happen in ``__init__`` and
    ``check_coco``, before any work; ``start`` recovers the rows and opens the files."""

    def __init__(self, out, settings, force=False):
        self.dir, self.settings, self.force = Path(out), settings, force
        if self.dir.exists() and not self.dir.is_dir():
            raise Npsam3Error(f"the output folder {out} is a file")
        self.labels, self.failures, self.job = (self.dir / n for n in (LABELS, FAILURES, JOB))
        self.record, self._torn = {}, False
        if force:
            return
        if self.job.exists():
            try:
                self.record = json.loads(self.job.read_text())
                old = {k: self.record["settings"][k] for k in COMPARED}
            except (ValueError, TypeError, KeyError):
                raise Npsam3Error(f"{self.job} is not a label job's record; pass --force to "
                                  "start over") from None
            changed = [f"{k} {old[k]!r}, now {settings[k]!r}" for k in COMPARED
                       if old[k] != settings[k]]
            if changed:
                raise Npsam3Error(f"{self.dir} holds a job with other settings ("
                                  f"{'; '.join(changed)}): use another --out, or --force to "
                                  "start over")
        elif self.labels.exists():
            raise Npsam3Error(f"{self.labels} exists but {self.job} does not; pass --force to "
                              "start over")

    def check_coco(self, coco):
        """Refuse to replace a file at ``coco`` unless this job wrote it (as it is) or ``force``."""
        if os.path.exists(coco) and not self.force and self.record.get("coco") != {
                "path": os.path.abspath(coco), "sha256": file_sha256(coco)}:
            raise Npsam3Error(f"{coco} exists and is not this job's COCO file; pass --force "
                              "to replace it")

    def start(self, paths):
        """Write job.json, recover labels.jsonl and open it and failures.jsonl for appending.
        Returns (paths still to label, number skipped as done)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save_record()
        lines = [] if self.force else self._recover()
        done = dict(_row_key(line) for line in lines)
        wanted = set(paths)
        changed = {p for p, sha in done.items() if p in wanted and _sha_or_none(p) != sha}
        if changed:
            warnings.warn(f"{len(changed)} labelled image(s) changed or went missing since; "
                          "labelled again")
            lines = [line for line in lines if _row_key(line)[0] not in changed]
        if self.force or changed or self._torn:
            write_atomic(self.labels, b"".join(line + b"\n" for line in lines))
        self._rows = open(self.labels, "ab")
        self._failed = open(self.failures, "wb")
        todo = [p for p in paths if p not in done or p in changed]
        return todo, len(paths) - len(todo)

    def _recover(self):
        """The whole rows of labels.jsonl (bytes, no newline); a torn or corrupt last line is
        dropped (``self._torn``) with a warning, a corrupt line before it is an error."""
        if not self.labels.exists():
            return []
        lines = self.labels.read_bytes().split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for n, line in enumerate(lines, 1):
            if _row_key(line) is None:
                if n < len(lines):
                    raise Npsam3Error(f"{self.labels} line {n} is not a label row; pass --force "
                                      "to start over")
                warnings.warn(f"{self.labels}: the last line is incomplete (the run before was "
                              "cut off mid-write); its image is labelled again")
                self._torn = True
                lines.pop()
        return lines

    def append(self, row):
        """Add one image's row: written, flushed and fsynced before the next."""
        self._rows.write(json_bytes(row, indent=None))
        self._rows.flush()
        os.fsync(self._rows.fileno())

    def fail(self, failure):
        self._failed.write(json_bytes(failure, indent=None))
        self._failed.flush()

    def close(self):
        for f in (getattr(self, "_rows", None), getattr(self, "_failed", None)):
            if f is not None:
                f.close()

    def rows(self):
        """Every row of labels.jsonl, parsed."""
        with open(self.labels, "rb") as f:
            return [json.loads(line) for line in f]

    def write_coco(self, coco):
        """(Re)build the COCO file from all rows (atomically) and record it in job.json."""
        data = json_bytes(coco_dataset(self.rows(), self.settings), indent=None)
        Path(coco).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(coco, data)
        self.record["coco"] = {"path": os.path.abspath(coco), "sha256": file_sha256(coco)}
        self._save_record()

    def _save_record(self):
        self.record["settings"] = self.settings
        write_atomic(self.job, json_bytes(self.record))


def _sha_or_none(path):
    try:
        return file_sha256(path)
    except Npsam3Error:
        return None


def label(sources, prompts, bundle, out, coco=None, threshold=0.5, nms_iou=None, presence=True,
          workers=None, threads=None, ray=None, force=False, kernels=None, load=None,
          progress=None):
    """Label every image of ``sources`` (folders, globs, image files, manifests; see
    ``inputs``) with every prompt; rows in OUT/labels.jsonl, a COCO file at ``coco``.

    workers: processes on this machine (None or 1: this process, loading the bundle with
    ``load``, default ``load_model``); threads: per worker (default: the cores / workers; 1 per Ray
    actor); ray: None, "" (a local Ray instance, or the one this process initialised) or a Ray
    address: labels with Ray Data (``workers`` actors, default the cluster's CPUs / threads);
    progress: called as ``progress(done, total, kind, value)`` after each image, kind "row" or
    "failure". Returns a Summary."""
    from .inputs import image_paths

    settings = job_settings(prompts, bundle, threshold, nms_iou, presence)
    if ray is not None and importlib.util.find_spec("ray") is None:
        raise Npsam3Error("--ray needs Ray Data: pip install 'npsam3[ray]'")
    folder = JobFolder(out, settings, force)
    if coco is not None:
        folder.check_coco(coco)
    paths = image_paths(sources)
    todo, skipped = folder.start(paths)
    labelled = failed = 0
    try:
        for n, (kind, value) in enumerate(_results(settings, todo, workers, threads, ray,
                                                   kernels, load), 1):
            if kind == "row":
                folder.append(value)
                labelled += 1
            else:
                folder.fail(value)
                failed += 1
            if progress is not None:
                progress(n, len(todo), kind, value)
    finally:
        folder.close()
    if coco is not None:
        folder.write_coco(coco)
    return Summary(len(paths), labelled, skipped, failed, folder.labels, folder.failures, coco)


def _results(settings, paths, workers, threads, ray, kernels, load):
    """(kind, value) per image of ``paths``, in any order, from the chosen backend."""
    if not paths:
        return iter(())
    if ray is not None:
        from .ray_job import label_with_ray

        return label_with_ray(settings, paths, ray, workers, threads or 1, kernels)
    if workers and workers > 1:
        from .parallel import label_in_processes

        return label_in_processes(settings, paths, workers, threads, kernels)
    from .labeler import Labeler
    from .parallel import limit_threads

    if threads:
        limit_threads(threads)
    labeler = Labeler(settings, kernels, model=load(settings["bundle"], kernels=kernels)
                      if load else None)
    return map(labeler, paths)
