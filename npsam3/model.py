"""A loaded bundle: tokenizer, text encoder, image encoder and NumPy detector, checked together."""

from pathlib import Path

from .bundle import read_manifest
from .detector import load_detector
from .encoders import ImageEncoder, TextEncoder
from .errors import Npsam3Error
from .tokenizer import SimpleTokenizer


class Model:
    """What ``npsam3.load_model(bundle_dir)`` returns; Sam3Processor runs it."""

    def __init__(self, bundle_dir, manifest, detector, image_encoder, text_encoder, tokenizer):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.detector = detector
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

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


def load_model(bundle_dir, verify=True):
    """Load a full bundle. ``verify`` checks every file against the manifest's sha256 first."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, verify=verify)
    img = _section(manifest, "image_encoder", bundle_dir)
    txt = _section(manifest, "text_encoder", bundle_dir)
    tok = _section(manifest, "tokenizer", bundle_dir)
    detector = load_detector(bundle_dir, verify=False)
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
