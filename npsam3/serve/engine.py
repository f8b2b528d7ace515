"""The model's one inference thread: every model call of the server runs here, in order.

npsam3 is not re-entrant (its thread pool and the BLAS thread limit are process-global), so one
thread owns the model and the image store, and each request uses all the cores in turn. Requests
are admitted up to ``limit`` at once (the one running and those queued behind it); past that
``admit`` raises Busy, which the app answers with 503 and a Retry-After.

The operations return the result dicts of ``npsam3.queries`` (the CLI's JSON schema).
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..cli.common import clip_box
from ..image import load_image
from ..processor import Sam3Processor
from ..queries import concept_instances, concept_result, object_result, selected_instances
from .store import Entry, ImageStore, image_id


class Busy(Exception):
    """All admission slots are taken; ``retry_after`` is an estimate in whole seconds."""

    def __init__(self, limit, retry_after):
        super().__init__(f"the server is busy ({limit} requests in progress); retry in "
                         f"{retry_after} s")
        self.retry_after = retry_after


class Engine:
    """The model, its image store (``budget`` bytes) and the inference thread; ``limit``
    requests admitted at once."""

    def __init__(self, model, budget, limit):
        self.model, self.store, self.limit = model, ImageStore(budget), int(limit)
        self.pending = 0
        self.seconds = 1.0  # running mean of a request's time on the inference thread
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="npsam3-inference")

    @contextmanager
    def admit(self):
        """A slot for one request, held while its body is read and its work runs (so queued
        uploads are bounded too). Only the event loop's thread calls it."""
        if self.pending >= self.limit:
            raise Busy(self.limit, max(1, round(self.pending * self.seconds)))
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def call(self, fn, *args):
        """Run ``fn(*args)`` on the inference thread (after the requests ahead of it)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._timed, fn,
                                                                args)

    def _timed(self, fn, args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds = 0.8 * self.seconds + 0.2 * (time.perf_counter() - start)

    def close(self):
        self.executor.shutdown(wait=True, cancel_futures=True)

    # -- operations (inference thread) ---------------------------------------------------------

    def upload(self, data, name):
        """Decode and encode an uploaded image file once (the same bytes again reuse it; the
        last upload's name labels the results): {"id", "name", "width", "height", "cached"}."""
        key = image_id(data)
        cached = key in self.store
        if cached:
            entry = self.store.get(key)
            entry.name = name
        else:
            rgb = load_image(data, name)
            entry = Entry(key, name, Sam3Processor(self.model).set_image(rgb))
            self.store.add(entry)
        height, width = entry.size_hw
        return {"id": key, "name": entry.name, "width": width, "height": height, "cached": cached}

    def concept(self, key, prompt, exemplars, threshold, nms_iou, presence):
        """Every instance of a concept (text and/or exemplar boxes [(pixel box, positive)]):
        the "npsam3-segment" result. The detector runs once per (image, prompt, exemplars);
        another threshold, NMS or presence setting re-selects its output."""
        entry = self.store.get(key)
        height, width = entry.size_hw
        exemplars = [(clip_box(box, width, height), bool(positive)) for box, positive in exemplars]
        prompt_key = (prompt, tuple((tuple(box), positive) for box, positive in exemplars))
        proc = Sam3Processor(self.model, confidence_threshold=threshold, nms_iou=nms_iou,
                             use_presence=presence, sort_by_score=True)
        state, detection = entry.state, entry.detections.get(prompt_key)
        if detection is None:
            boxes, scores, rles = concept_instances(proc, state, prompt, exemplars)
            entry.keep_detection(prompt_key, state["detection"])
        else:
            state["detection"] = detection
            proc.set_confidence_threshold(threshold, state)
            boxes, scores, rles = selected_instances(proc, state)
        self.store.shrink()
        return concept_result(entry.name, (height, width), prompt, exemplars, boxes, scores, rles,
                              threshold=threshold, nms_iou=nms_iou, presence=presence,
                              image_id=key, detector_ran=detection is None)

    def predict_object(self, key, points, box, mask_input, multimask, fill_holes):
        """One object from clicks [(xy, label)], a pixel box and/or a previous prediction's mask
        (prediction id, mask index): the "npsam3-object" result, with the "prediction" id that
        a later request's mask_input may name."""
        self.model.require_interactive()
        entry = self.store.get(key)
        height, width = entry.size_hw
        boxes = [clip_box(box, width, height)] if box is not None else []
        masks, ious, low_res = self.model.predict_inst(
            entry.state,
            point_coords=np.array([xy for xy, _ in points], np.float32) if points else None,
            point_labels=np.array([label for _, label in points]) if points else None,
            box=np.array(boxes, np.float32) if boxes else None,
            mask_input=entry.prediction(*mask_input) if mask_input else None,
            multimask_output=multimask, fill_holes=fill_holes)
        prediction = entry.keep_prediction(low_res.reshape(-1, *low_res.shape[-2:]))
        self.store.shrink()
        return object_result(entry.name, (height, width), points, boxes, masks, ious, multimask,
                             fill_holes, image_id=key, prediction=prediction)

    def info(self):
        """What the model is (for GET /v1/model)."""
        manifest = self.model.manifest
        return {"bundle": self.model.bundle_dir.name, "format_version": manifest["format_version"],
                "model": manifest.get("model"), "weights": manifest.get("weights"),
                "interactive": self.model.interactive, "resolution": self.model.resolution,
                "context_length": self.model.context_length}

    def health(self):
        return {"status": "ok", "pending": self.pending, "limit": self.limit,
                "images": len(self.store), "cache_bytes": self.store.held,
                "cache_budget": self.store.budget}
