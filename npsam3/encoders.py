"""The image and text encoders of a bundle, run by onnxruntime (CPU).

image_encoder.onnx: "image" float32 [1, 3, R, R] (preprocessed as npsam3.image.preprocess) ->
    "backbone_fpn_0" [1, C, R/14*4, ...], "backbone_fpn_1", "backbone_fpn_2" [1, C, R/14, R/14].
text_encoder.onnx: "input_ids" int64 [B, L] -> "language_features" float32 [L, B, C],
    "language_mask" bool [B, L] (True = padding).
"""

import numpy as np
import onnxruntime as ort

from .errors import Npsam3Error

IMAGE_OUTPUTS = ("backbone_fpn_0", "backbone_fpn_1", "backbone_fpn_2")
TEXT_OUTPUTS = ("language_features", "language_mask")


def _session(path, inputs, outputs, what):
    """An onnxruntime CPU session for ``path`` whose graph has exactly these input/output names."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # same speed; SAM3's image encoder peaks ~3 GB lower
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
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
    """Preprocessed image [1, 3, R, R] -> the three FPN levels (NCHW float32)."""

    def __init__(self, path, resolution):
        self.session = _session(path, ["image"], IMAGE_OUTPUTS, "image encoder")
        self.resolution = resolution
        dims = _static_dims(self.session.get_inputs()[0])
        if dims not in ([1, 3, resolution, resolution], [None, 3, resolution, resolution]):
            raise Npsam3Error(f"{path} takes images of shape {dims}, but the bundle's manifest says "
                              f"{resolution} x {resolution}: the ONNX file belongs to another model")

    def __call__(self, image):
        return self.session.run(None, {"image": np.ascontiguousarray(image, np.float32)})


class TextEncoder:
    """Token ids [B, L] -> language_features [L, B, C], language_mask [B, L] (True = padding)."""

    def __init__(self, path, context_length):
        self.session = _session(path, ["input_ids"], TEXT_OUTPUTS, "text encoder")
        self.context_length = context_length
        length = _static_dims(self.session.get_inputs()[0])[-1]
        if length not in (None, context_length):
            raise Npsam3Error(f"{path} takes {length} tokens, but the bundle's manifest says "
                              f"{context_length}: the ONNX file belongs to another model")

    def __call__(self, input_ids):
        feats, mask = self.session.run(None, {"input_ids": np.asarray(input_ids, np.int64)})
        return feats, mask.astype(bool)
