"""Sam3Processor: the drop-in for sam3.model.sam3_image_processor.Sam3Processor, without torch.

    model = npsam3.load_model("weights/bundle")
    proc = npsam3.Sam3Processor(model, confidence_threshold=0.5)
    state = proc.set_image(image)                 # one image-encoder run per image
    state = proc.set_text_prompt("a dog", state)  # every prompt reuses the image embedding
    state["masks"], state["boxes"], state["scores"]

The state dict holds the image embedding, the prompts and the last detection; results are
``boxes`` float32 [N, 4] pixel xyxy, ``scores`` float32 [N] (in query order, as the reference, or
best first with ``sort_by_score``), ``masks`` bool [N, H, W] and ``masks_logits`` float32
[N, H, W] (probabilities, named as in the reference). The two full-size mask arrays are made on
first access, not by every prompt: ``low_res_masks`` [N, 4h, 4w] (logits) are what the detector
gives, and ``iter_masks`` makes full-size masks one at a time.
"""

import warnings

import numpy as np

from .errors import Npsam3Error
from .image import load_image
from .postprocess import (boxes_to_pixels, mask_to_image, masks_to_image, nms_masks,
                          select_queries)

BOXES_ONLY_TEXT = "visual"  # the text the reference uses for prompts made of boxes alone
RESULT_KEYS = ("masks", "masks_logits", "low_res_masks", "boxes", "scores", "semantic_seg")
LAZY_KEYS = ("masks", "masks_logits")


class State(dict):
    """The processor's state: a dict in which ``masks`` and ``masks_logits`` (N x H x W each)
    are computed on first access (``state["masks"]``, ``state.get``, ``in``) and then kept."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = {}

    def __missing__(self, key):
        if key not in self.lazy:
            raise KeyError(key)
        value = self[key] = self.lazy.pop(key)()
        return value

    def __contains__(self, key):
        return dict.__contains__(self, key) or key in self.lazy

    def get(self, key, default=None):
        return self[key] if key in self else default

    def pop(self, key, *default):
        if key in self.lazy:
            self.lazy.pop(key)
            return dict.pop(self, key, None)
        return dict.pop(self, key, *default)

    def clear(self):
        self.lazy.clear()
        dict.clear(self)


def _check_threshold(threshold):
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise Npsam3Error(f"confidence threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


class Sam3Processor:
    """Concept segmentation on a loaded bundle (see the module docstring).

    Beyond the reference, off by default so that defaults reproduce it exactly:
    use_presence=False scores queries without the presence head; nms_iou=<float> removes kept
    instances whose mask IoU with a higher-scoring one exceeds it; semantic=True also stores the
    semantic segmentation logits [1, 1, 4h, 4w] in state["semantic_seg"]; sort_by_score=True
    orders the results best first (the reference keeps query order).
    """

    def __init__(self, model, confidence_threshold=0.5, use_presence=True, nms_iou=None,
                 semantic=False, sort_by_score=False):
        self.model = model
        self.confidence_threshold = _check_threshold(confidence_threshold)
        self.use_presence = use_presence
        if nms_iou is not None:
            nms_iou = _check_threshold(nms_iou)
        self.nms_iou = nms_iou
        self.semantic = semantic
        self.sort_by_score = sort_by_score

    def set_image(self, image, state=None):
        """Encode an image (path, PIL image or uint8 [H, W, 3] array) once for all later prompts.
        Returns ``state`` (a new State when None; a plain dict given here gets its full-size
        masks eagerly)."""
        state = State() if state is None else state
        rgb = load_image(image)
        state.clear()
        state["original_height"], state["original_width"] = rgb.shape[:2]
        fpn, trunk = self.model.encode_image(rgb)
        state["backbone_out"] = {"backbone_fpn": fpn, "vision_features": trunk}
        return state

    def set_image_batch(self, images, state=None):
        """Encode several images for ``model.predict_inst_batch`` (as the reference's
        set_image_batch; concept prompts take one image at a time, set_image)."""
        state = State() if state is None else state
        state.clear()
        rgbs = [load_image(image) for image in images]
        state["original_heights"] = [rgb.shape[0] for rgb in rgbs]
        state["original_widths"] = [rgb.shape[1] for rgb in rgbs]
        state["backbone_out"] = []
        for rgb in rgbs:
            fpn, trunk = self.model.encode_image(rgb)
            state["backbone_out"].append({"backbone_fpn": fpn, "vision_features": trunk})
        return state

    def _encode_text(self, prompt, state):
        if not isinstance(prompt, str) or not prompt.strip():
            raise Npsam3Error("the text prompt is empty")
        feats, mask, truncated = self.model.text_features(prompt)
        if truncated:
            warnings.warn(f"the prompt is longer than the model's {self.model.context_length} "
                          "tokens and was truncated", stacklevel=3)
        state["backbone_out"].update(language_features=feats, language_mask=mask)

    def _require_image(self, state):
        if "backbone_out" not in state:
            raise Npsam3Error("call set_image before giving prompts")
        if isinstance(state["backbone_out"], list):
            raise Npsam3Error("text and box prompts take one image: use set_image, not "
                              "set_image_batch")

    def set_text_prompt(self, prompt, state):
        """Set (replace) the text prompt and run the detector."""
        self._require_image(state)
        self._encode_text(prompt, state)
        return self._forward_grounding(state)

    def add_geometric_prompt(self, box, label, state):
        """Add a box exemplar [cx, cy, w, h] normalised to [0, 1] (True = positive) and run the
        detector; without a text prompt the text is "visual", as in the reference."""
        self._require_image(state)
        self._append_box(box, label, state)
        if "language_features" not in state["backbone_out"]:
            self._encode_text(BOXES_ONLY_TEXT, state)
        return self._forward_grounding(state)

    def set_prompts(self, state, text=None, boxes=(), labels=()):
        """Replace all prompts at once, a text and/or box exemplars ([cx, cy, w, h] normalised,
        labels True = positive), and run the detector once (the reference API runs it per box)."""
        self._require_image(state)
        if text is None and not len(boxes):
            raise Npsam3Error("give a text prompt, a box, or both")
        if len(boxes) != len(labels):
            raise Npsam3Error(f"{len(boxes)} boxes but {len(labels)} labels")
        self.reset_all_prompts(state)
        for box, label in zip(boxes, labels):
            self._append_box(box, label, state)
        self._encode_text(BOXES_ONLY_TEXT if text is None else text, state)
        return self._forward_grounding(state)

    def _append_box(self, box, label, state):
        box = np.asarray(box, np.float64).reshape(-1) if _is_numeric(box) else None
        if box is None or box.shape != (4,) or not np.isfinite(box).all():
            raise Npsam3Error("a box must be 4 finite numbers [cx, cy, w, h] normalised to [0, 1]")
        cx, cy, w, h = box
        if w <= 0 or h <= 0:
            raise Npsam3Error(f"box {box.tolist()} has zero or negative width/height")
        eps = 1e-6
        if cx - w / 2 < -eps or cy - h / 2 < -eps or cx + w / 2 > 1 + eps or cy + h / 2 > 1 + eps:
            raise Npsam3Error(f"box {box.tolist()} (cx, cy, w, h) reaches outside the image [0, 1]")
        prompt = state.setdefault("geometric_prompt", {"boxes": np.zeros((0, 4), np.float32),
                                                       "labels": np.zeros(0, bool)})
        prompt["boxes"] = np.concatenate([prompt["boxes"], box[None].astype(np.float32)])
        prompt["labels"] = np.append(prompt["labels"], bool(label))

    def reset_all_prompts(self, state):
        """Remove the prompts and the results; the image embedding stays."""
        for key in ("language_features", "language_mask"):
            state.get("backbone_out", {}).pop(key, None)
        for key in ("geometric_prompt", "detection", *RESULT_KEYS):
            state.pop(key, None)

    def set_confidence_threshold(self, threshold, state=None):
        """Change the threshold; with a state that has results, re-select the instances (the
        detector is not run again: the last detection and its pixel embedding are reused)."""
        self.confidence_threshold = _check_threshold(threshold)
        if state is not None and "detection" in state:
            return self._select(state)
        return state

    def _forward_grounding(self, state):
        bo, geo = state["backbone_out"], state.get("geometric_prompt")
        state["detection"] = self.model.detector.detect(
            bo["backbone_fpn"], bo["language_features"], bo["language_mask"],
            boxes=None if geo is None else geo["boxes"],
            box_labels=None if geo is None else geo["labels"])
        return self._select(state)

    def _select(self, state):
        """Threshold (and optionally NMS) the last detection; masks only for the kept queries."""
        det, out = self.model.detector, state["detection"]
        keep, scores = select_queries(out["pred_logits"], out["presence_logit_dec"],
                                      self.confidence_threshold, self.use_presence)
        if self.sort_by_score:
            order = np.argsort(-scores, kind="stable")
            keep, scores = keep[order], scores[order]
        h4, w4 = out["backbone_fpn"][0].shape[-2:]
        logits = det.predict_masks(out, keep)[0] if len(keep) else np.zeros((0, h4, w4), np.float32)
        if self.nms_iou is not None and len(keep):
            survivors = nms_masks(scores, logits, self.nms_iou)
            keep, scores, logits = keep[survivors], scores[survivors], logits[survivors]
        height, width = state["original_height"], state["original_width"]
        for key in LAZY_KEYS:
            state.pop(key, None)
        state["boxes"] = boxes_to_pixels(out["pred_boxes"][0, keep], height, width)
        state["scores"] = scores.astype(np.float32)
        state["low_res_masks"] = logits
        state["semantic_seg"] = det.predict_semantic_seg(out) if self.semantic else None
        if isinstance(state, State):
            state.lazy["masks"] = lambda: self._full_masks(state)
            state.lazy["masks_logits"] = lambda: masks_to_image(logits, height, width)[0]
        else:
            state["masks_logits"], state["masks"] = masks_to_image(logits, height, width)
        return state

    def _full_masks(self, state):
        masks = np.empty((len(state["low_res_masks"]), state["original_height"],
                          state["original_width"]), bool)
        for i, mask in enumerate(self.iter_masks(state)):
            masks[i] = mask
        return masks

    def iter_masks(self, state, order=None):
        """The full-size bool masks [H, W] of the last results, one at a time (in ``order``, a
        sequence of result indices; default all in order): for large images, where
        ``state["masks"]`` would hold N x H x W at once."""
        logits = state["low_res_masks"]
        height, width = state["original_height"], state["original_width"]
        for i in range(len(logits)) if order is None else order:
            yield mask_to_image(logits[i], height, width)


def _is_numeric(x):
    try:
        return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                   for v in np.asarray(x, object).reshape(-1))
    except (TypeError, ValueError):
        return False
