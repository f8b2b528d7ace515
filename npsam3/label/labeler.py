"""One image -> one label row: the image encoded once, every prompt run on its embedding.

Row (one JSONL line)::

    {"path": "/real/path/dog.jpg", "sha256": "<hex of the file bytes>", "height": 480,
     "width": 640, "results": [<one `npsam3 segment` result dict per prompt, in prompt order>]}

Each result has the schema of ``npsam3.results`` (instances best first, COCO RLE masks) with the
job's "threshold", "nms_iou" and "presence"; nothing that varies between runs (no timings), so
the same image and settings always give the same row.
"""

import hashlib
from contextlib import contextmanager

from ..bundle import sha256_file
from ..errors import Npsam3Error


@contextmanager
def _reading(path):
    """A missing or unreadable file ``path`` -> Npsam3Error with one line."""
    try:
        yield
    except FileNotFoundError:
        raise Npsam3Error(f"image file not found: {path}") from None
    except OSError as e:
        raise Npsam3Error(f"cannot read {path}: {e.strerror or e}") from None


def read_file(path):
    """A file's bytes (Npsam3Error if it cannot be read)."""
    with _reading(path), open(path, "rb") as f:
        return f.read()


def file_sha256(path):
    """sha256 (hex) of a file's bytes, streamed (Npsam3Error if it cannot be read)."""
    with _reading(path):
        return sha256_file(path)


class Labeler:
    """A model and processor for the job's settings (a dict, see job.job_settings), loaded once.

    ``labeler(path)`` -> ("row", row) or ("failure", {"path", "error"}) for a bad image."""

    def __init__(self, settings, kernels=None, model=None):
        from ..model import load_model
        from ..processor import Sam3Processor

        self.settings = settings
        model = model or load_model(settings["bundle"], kernels=kernels)
        self.proc = Sam3Processor(model, confidence_threshold=settings["threshold"],
                                  nms_iou=settings["nms_iou"], use_presence=settings["presence"],
                                  sort_by_score=True)

    def __call__(self, path):
        try:
            return "row", self.row(path)
        except Npsam3Error as e:
            return "failure", {"path": path, "error": str(e).splitlines()[0]}

    def row(self, path):
        from ..image import load_image
        from ..queries import concept_instances, concept_result

        data = read_file(path)  # read once: hashed, then decoded
        sha = hashlib.sha256(data).hexdigest()
        rgb = load_image(data, name=path)
        size = rgb.shape[:2]
        state = self.proc.set_image(rgb)
        s = self.settings
        results = [concept_result(path, size, prompt, [], *concept_instances(self.proc, state, prompt),
                                  threshold=s["threshold"], nms_iou=s["nms_iou"],
                                  presence=s["presence"])
                   for prompt in s["prompts"]]
        return {"path": path, "sha256": sha, "height": int(size[0]), "width": int(size[1]),
                "results": results}
