"""The bundle's ONNX graphs, run by onnxruntime (CPU): the image encoder, the text encoder and
the interactive predictor's tracker neck.

Image (bundle format 2, three graphs, so that each call pays only for what it uses):
    image_trunk.onnx    "image" float32 [1, 3, R, R] (npsam3.image.preprocess) ->
                        "vision_features" [1, 1024, R/14, R/14]
    detector_neck.onnx  "vision_features" -> "backbone_fpn_0" [1, C, 4R/14, ...],
                        "backbone_fpn_1" [1, C, 2R/14, ...], "backbone_fpn_2" [1, C, R/14, R/14]
    tracker_neck.onnx   "vision_features" -> "high_res_feats_0" [1, C/8, 4R/14, ...],
                        "high_res_feats_1" [1, C/4, 2R/14, ...], "image_embed" [1, C, R/14, ...]
(format 1: one image_encoder.onnx, "image" -> the three FPN levels; no interactive predictor.)
Text: text_encoder.onnx "input_ids" int64 [B, L] -> "language_features" float32 [L, B, C],
    "language_mask" bool [B, L] (True = padding).

Sessions take npsam3's options (``kernels.session_options``): ``nn.num_threads()`` threads that
sleep between calls, so that they never compete with npsam3's own thread pool, and no arena.
"""

import numpy as np
import onnxruntime as ort

from .errors import Npsam3Error
from . import kernels

FPN_OUTPUTS = ("backbone_fpn_0", "backbone_fpn_1", "backbone_fpn_2")
TRUNK_OUTPUT = "vision_features"
TRACKER_NECK_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embed")
TEXT_OUTPUTS = ("language_features", "language_mask")


def session(path, inputs, outputs, what):
    """An onnxruntime CPU session for ``path`` whose graph has exactly these input/output names."""
    try:
        sess = ort.InferenceSession(str(path), kernels.session_options(),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise Npsam3Error(f"cannot load {path}: {str(e).splitlines()[0][:200]}") from None
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != list(inputs) or got_out != list(outputs):
        raise Npsam3Error(f"{path} is not an npsam3 {what}: it takes {got_in} and gives {got_out}, "
                          f"expected {list(inputs)} -> {list(outputs)}")
    return sess


def _static_dims(arg):
    return [d if isinstance(d, int) else None for d in arg.shape]


class ImageEncoder:
    """Preprocessed image [1, 3, R, R] -> (the three FPN levels, the trunk output): ``trunk``
    then ``neck`` (bundle format 2), or one combined graph (format 1: trunk output None)."""

    def __init__(self, resolution, trunk_path=None, neck_path=None, combined_path=None):
        self.resolution = resolution
        if combined_path is not None:
            self.trunk, self.neck = session(combined_path, ["image"], FPN_OUTPUTS, "image encoder"), None
        else:
            self.trunk = session(trunk_path, ["image"], [TRUNK_OUTPUT], "image trunk")
            self.neck = session(neck_path, [TRUNK_OUTPUT], FPN_OUTPUTS, "detector neck")
        dims = _static_dims(self.trunk.get_inputs()[0])
        if dims not in ([1, 3, resolution, resolution], [None, 3, resolution, resolution]):
            raise Npsam3Error(f"{trunk_path or combined_path} takes images of shape {dims}, but "
                              f"the bundle's manifest says {resolution} x {resolution}: the ONNX "
                              "file belongs to another model")

    def trunk_features(self, image):
        """[1, 3, R, R] -> vision_features [1, 1024, R/14, R/14] (format 2 only)."""
        return self.trunk.run(None, {"image": np.ascontiguousarray(image, np.float32)})[0]

    def detector_features(self, vision_features):
        """vision_features -> the detector's three FPN levels (format 2 only)."""
        return self.neck.run(None, {TRUNK_OUTPUT: vision_features})

    def __call__(self, image):
        if self.neck is None:
            return self.trunk.run(None, {"image": np.ascontiguousarray(image, np.float32)}), None
        trunk = self.trunk_features(image)
        return self.detector_features(trunk), trunk


class TrackerNeck:
    """vision_features -> (high_res_feats [[1, C/8, 4h, 4w], [1, C/4, 2h, 2w]], image_embed
    [1, C, h, w]): the features Sam3Image.predict_inst reads, no_mem_embed added."""

    def __init__(self, path):
        self.session = session(path, [TRUNK_OUTPUT], TRACKER_NECK_OUTPUTS, "tracker neck")

    def __call__(self, vision_features):
        s0, s1, embed = self.session.run(None, {TRUNK_OUTPUT: vision_features})
        return {"high_res_feats": [s0, s1], "image_embed": embed}


class TextEncoder:
    """Token ids [B, L] -> language_features [L, B, C], language_mask [B, L] (True = padding)."""

    def __init__(self, path, context_length):
        self.session = session(path, ["input_ids"], TEXT_OUTPUTS, "text encoder")
        self.context_length = context_length
        length = _static_dims(self.session.get_inputs()[0])[-1]
        if length not in (None, context_length):
            raise Npsam3Error(f"{path} takes {length} tokens, but the bundle's manifest says "
                              f"{context_length}: the ONNX file belongs to another model")

    def __call__(self, input_ids):
        feats, mask = self.session.run(None, {"input_ids": np.asarray(input_ids, np.int64)})
        return feats, mask.astype(bool)
