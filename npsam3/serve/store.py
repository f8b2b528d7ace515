"""The server's images: each upload encoded once and kept by content hash, least recently used
out first when the arrays held pass a memory budget. Per image it also keeps the detector output
of its last concept prompts (a new threshold re-selects without running the detector again) and
the low-res logits of its last interactive predictions (a later request's ``mask_input``).

Not thread-safe: only the inference thread (engine.py) touches it.
"""

import hashlib
import itertools
from collections import OrderedDict

import numpy as np

from ..errors import Npsam3Error

PROMPTS_PER_IMAGE = 8  # detections kept per image (each holds a 256 x 4h x 4w pixel embedding)
PREDICTIONS_PER_IMAGE = 16  # interactive predictions kept per image for mask_input


class NotFound(Npsam3Error):
    """An image id (or a prediction of it) that the server does not hold (never or no longer)."""


def image_id(data):
    """The id of an uploaded file: the sha256 of its bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def array_bytes(obj, seen=None):
    """Bytes held by the NumPy arrays in nested dicts, lists and tuples; each buffer is counted
    once (views count as their base, shared arrays once)."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        while isinstance(obj.base, np.ndarray):
            obj = obj.base
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(array_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(array_bytes(v, seen) for v in obj)
    return 0


class Entry:
    """One encoded image: ``state`` (a Sam3Processor state, which also serves predict_inst),
    ``detections`` {prompt key: detector output}, ``predictions`` {id: low-res logits [C, h, w]}."""

    def __init__(self, key, name, state):
        self.id, self.name, self.state = key, name, state
        self.detections, self.predictions = OrderedDict(), OrderedDict()
        self._numbers = itertools.count(1)

    @property
    def size_hw(self):
        return self.state["original_height"], self.state["original_width"]

    def keep_detection(self, key, detection):
        _remember(self.detections, key, detection, PROMPTS_PER_IMAGE)

    def keep_prediction(self, low_res):
        """Keep the low-res logits of a prediction; returns its id."""
        key = str(next(self._numbers))
        _remember(self.predictions, key, low_res, PREDICTIONS_PER_IMAGE)
        return key

    def prediction(self, key, index):
        """Mask ``index`` of prediction ``key``: low-res logits [1, h, w] for ``mask_input``."""
        if key not in self.predictions:
            raise NotFound(f"image {self.id[:12]}... holds no prediction {key!r} (only its last "
                           f"{PREDICTIONS_PER_IMAGE} are kept)")
        low_res = self.predictions[key]
        if not 0 <= index < len(low_res):
            raise Npsam3Error(f"prediction {key} has {len(low_res)} mask(s), not a mask {index}")
        return low_res[index:index + 1]

    def nbytes(self):
        seen = set()
        return (array_bytes(dict(self.state), seen) + array_bytes(dict(self.detections), seen)
                + array_bytes(dict(self.predictions), seen))


def _remember(table, key, value, limit):
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


class ImageStore:
    """Entries by id, least recently used first; ``shrink`` drops the oldest until the arrays of
    all fit in ``budget`` bytes (the entry in use always stays, even when larger)."""

    def __init__(self, budget):
        self.budget = int(budget)
        self.entries = OrderedDict()
        self.held = 0  # bytes held after the last shrink (read by other threads for health)

    def __len__(self):
        return len(self.entries)

    def __contains__(self, key):
        return key in self.entries

    def get(self, key):
        """The entry of id ``key`` (now the most recently used), or NotFound."""
        if key not in self.entries:
            raise NotFound(f"no image with id {key!r} (upload it first; the server keeps the "
                           "most recently used images within its memory budget)")
        self.entries.move_to_end(key)
        return self.entries[key]

    def add(self, entry):
        self.entries[entry.id] = entry
        self.entries.move_to_end(entry.id)
        self.shrink()

    def shrink(self):
        """Evict least recently used entries while over budget; returns the bytes now held."""
        sizes = OrderedDict((k, e.nbytes()) for k, e in self.entries.items())
        total = sum(sizes.values())
        while total > self.budget and len(self.entries) > 1:
            key, size = sizes.popitem(last=False)
            del self.entries[key]
            total -= size
        self.held = total
        return total
