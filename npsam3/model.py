"""A loaded bundle: tokenizer, text encoder, image encoder and NumPy detector, checked together."""

import threading
from collections import OrderedDict
from pathlib import Path

from .bundle import read_manifest
from .detector import load_detector
from .encoders import ImageEncoder, TextEncoder
from .errors import Npsam3Error
from .tokenizer import SimpleTokenizer


TEXT_CACHE = 256  # distinct prompts whose text features a model keeps (32 KB each at 32 tokens)


class Model:
    """What ``npsam3.load_model(bundle_dir)`` returns; Sam3Processor runs it."""

    def __init__(self, bundle_dir, manifest, detector, image_encoder, text_encoder, tokenizer):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.detector = detector
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self._text_cache = OrderedDict()
        self._text_lock = threading.Lock()

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


def load_model(bundle_dir, verify=True, kernels=None):
    """Load a full bundle. ``verify`` checks every file against the manifest's sha256 first;
    ``kernels`` ("onnxruntime" or "numpy") picks the primitives' implementation for this model
    (default: NPSAM3_KERNELS, else onnxruntime; see npsam3.kernels)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, verify=verify)
    img = _section(manifest, "image_encoder", bundle_dir)
    txt = _section(manifest, "text_encoder", bundle_dir)
    tok = _section(manifest, "tokenizer", bundle_dir)
    detector = load_detector(bundle_dir, verify=False, kernels=kernels)
    try:
        resolution, context_length = int(img["resolution"]), int(txt["context_length"])
    except (KeyError, TypeError, ValueError):
        raise Npsam3Error(f"{bundle_dir / 'manifest.json'} lacks the encoders' resolution or "
                          "context length") from None
    stride = detector.config["stride"]
    if resolution % stride:
        raise Npsam3Error(f"resolution {resolution} is not a multiple of the stride {stride}")
    return Model(bundle_dir, manifest, detector,
                 ImageEncoder(bundle_dir / img["file"], resolution),
                 TextEncoder(bundle_dir / txt["file"], context_length),
                 SimpleTokenizer(bundle_dir / tok["file"]))
