"""A loaded bundle: tokenizer, text encoder, image encoder and NumPy detector, checked together."""

import threading
from collections import OrderedDict
from pathlib import Path

from .bundle import load_weights, read_manifest
from .detector import load_detector
from .encoders import ImageEncoder, TextEncoder, TrackerNeck
from .errors import Npsam3Error
from .image import preprocess
from .tokenizer import SimpleTokenizer
from .tracker import SamHeads
from .tracker.config import MASK_DECODER, PROMPT_ENCODER, check_weights


TEXT_CACHE = 256  # distinct prompts whose text features a model keeps (32 KB each at 32 tokens)


class Model:
    """What ``npsam3.load_model(bundle_dir)`` returns: Sam3Processor runs its concept
    segmentation, ``predict_inst`` / InteractivePredictor its interactive predictor (when the
    bundle has one: ``interactive``)."""

    def __init__(self, bundle_dir, manifest, detector, image_encoder, text_encoder, tokenizer,
                 sam_heads=None, tracker_neck=None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.detector = detector
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.sam_heads = sam_heads
        self.tracker_neck = tracker_neck
        self._text_cache = OrderedDict()
        self._text_lock = threading.Lock()

    @property
    def interactive(self):
        """True when the bundle holds the interactive predictor (points, boxes, masks)."""
        return self.sam_heads is not None

    def require_interactive(self):
        if not self.interactive:
            why = ("it was made by an older npsam3: convert the checkpoint again" if
                   self.manifest["format_version"] == 1 else "its checkpoint had no tracker neck "
                   "and SAM heads, or it was converted with --no-interactive")
            raise Npsam3Error(f"bundle {self.bundle_dir} is detection-only (no interactive "
                              f"predictor: {why})")

    def encode_image(self, rgb):
        """uint8 [H, W, 3] -> (the detector's three FPN levels, the trunk output when the
        interactive predictor will need it, else None)."""
        fpn, trunk = self.image_encoder(preprocess(rgb, self.resolution))
        return fpn, trunk if self.interactive else None

    def predict_inst(self, inference_state, fill_holes=True, **kwargs):
        """Sam3Image.predict_inst on a Sam3Processor.set_image state: one object from
        point_coords / point_labels / box / mask_input (multimask_output, return_logits,
        normalize_coords as the reference; see npsam3.tracker.predictor). Returns (masks
        [C, H, W] float32 0/1, iou_predictions [C], low_res_masks [C, 288, 288]). The tracker
        neck runs on the first call per image; ``fill_holes=False`` skips the hole filling
        (as the reference does without scikit-image)."""
        from .tracker.predictor import interactive_features, predict

        features = interactive_features(self, inference_state["backbone_out"])
        return predict(self, features, (inference_state["original_height"],
                                        inference_state["original_width"]),
                       fill_holes=fill_holes, **kwargs)

    def predict_inst_batch(self, inference_state, point_coords_batch=None, point_labels_batch=None,
                           box_batch=None, mask_input_batch=None, multimask_output=True,
                           return_logits=False, normalize_coords=True, fill_holes=True):
        """Sam3Image.predict_inst_batch on a Sam3Processor.set_image_batch state: predict_inst
        per image; three lists."""
        from .tracker.predictor import interactive_features, predict_each

        features = [interactive_features(self, b) for b in inference_state["backbone_out"]]
        hws = list(zip(inference_state["original_heights"], inference_state["original_widths"]))
        return predict_each(self, features, hws, point_coords_batch, point_labels_batch,
                            box_batch, mask_input_batch, multimask_output, return_logits,
                            normalize_coords, fill_holes)

    def text_features(self, prompt):
        """(language_features [L, 1, C], language_mask [1, L], truncated) of one prompt. The text
        encoder runs once per distinct token sequence: the last TEXT_CACHE are kept, so a folder
        run with one prompt encodes it once. Thread-safe; callers must not modify the arrays."""
        ids, truncated = self.tokenizer.tokenize(prompt, self.context_length)
        key = ids.tobytes()
        with self._text_lock:
            if key in self._text_cache:
                self._text_cache.move_to_end(key)
                return (*self._text_cache[key], bool(truncated[0]))
        feats, mask = self.text_encoder(ids)
        with self._text_lock:
            self._text_cache[key] = (feats, mask)
            while len(self._text_cache) > TEXT_CACHE:
                self._text_cache.popitem(last=False)
        return feats, mask, bool(truncated[0])

    @property
    def resolution(self):
        return self.image_encoder.resolution

    @property
    def context_length(self):
        return self.text_encoder.context_length


def _section(manifest, name, bundle_dir):
    sec = manifest.get(name)
    if not isinstance(sec, dict) or sec.get("file") not in manifest["files"]:
        raise Npsam3Error(f"bundle {bundle_dir} has no {name.replace('_', ' ')} "
                          "(a detector-only bundle? convert the checkpoint without --detector-only)")
    return sec


def _image_encoder(manifest, bundle_dir):
    """The image encoder of a format-2 bundle (trunk + detector neck) or of a format-1 one."""
    if manifest["format_version"] == 1:
        img = _section(manifest, "image_encoder", bundle_dir)
        return int(img["resolution"]), {"combined_path": bundle_dir / img["file"]}
    trunk = _section(manifest, "image_trunk", bundle_dir)
    neck = _section(manifest, "detector_neck", bundle_dir)
    return int(trunk["resolution"]), {"trunk_path": bundle_dir / trunk["file"],
                                      "neck_path": bundle_dir / neck["file"]}


def _sam_heads(manifest, bundle_dir):
    """The interactive predictor's prompt encoder and mask decoder, checked against the
    manifest's configuration."""
    sec = _section(manifest, "tracker", bundle_dir)
    weights = load_weights(bundle_dir / sec["file"])
    try:
        check_weights({k: v.shape for k, v in weights.items()}, sec, bundle_dir / sec["file"])
    except KeyError as e:
        raise Npsam3Error(f"{bundle_dir / 'manifest.json'}: tracker config lacks {e}") from None
    split = [{k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
             for prefix in (PROMPT_ENCODER, MASK_DECODER)]
    return SamHeads(*split)


def load_model(bundle_dir, verify=True, kernels=None):
    """Load a full bundle. ``verify`` checks every file against the manifest's sha256 first;
    ``kernels`` ("auto", "onnxruntime" or "numpy") picks the primitives' implementation for this
    model (default: NPSAM3_KERNELS, else auto; see npsam3.kernels)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, verify=verify)
    txt = _section(manifest, "text_encoder", bundle_dir)
    tok = _section(manifest, "tokenizer", bundle_dir)
    detector = load_detector(bundle_dir, verify=False, kernels=kernels)
    try:
        resolution, image_files = _image_encoder(manifest, bundle_dir)
        context_length = int(txt["context_length"])
    except (KeyError, TypeError, ValueError):
        raise Npsam3Error(f"{bundle_dir / 'manifest.json'} lacks the encoders' resolution or "
                          "context length") from None
    stride = detector.config["stride"]
    if resolution % stride:
        raise Npsam3Error(f"resolution {resolution} is not a multiple of the stride {stride}")
    heads = _sam_heads(manifest, bundle_dir) if manifest.get("interactive") else None
    return Model(bundle_dir, manifest, detector, ImageEncoder(resolution, **image_files),
                 TextEncoder(bundle_dir / txt["file"], context_length),
                 SimpleTokenizer(bundle_dir / tok["file"]), heads,
                 TrackerNeck(bundle_dir / _section(manifest, "tracker_neck", bundle_dir)["file"])
                 if heads else None)
