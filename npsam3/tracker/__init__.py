"""SAM3's interactive SAM heads in NumPy: SAM3InteractiveImagePredictor._predict (the work of
Sam3Image.predict_inst once the image features are there) wired from one file per part.

    heads = SamHeads(prompt_encoder_weights, mask_decoder_weights)
    masks, iou_predictions, low_res_masks = heads.predict(features, point_coords, point_labels)
"""

import time
from contextlib import contextmanager

import numpy as np

from .. import nn
from . import mask_decoder, prompt_encoder
from .postprocess import postprocess_masks

f32 = np.float32

# Sam3TrackerBase._build_sam_heads / build_tracker / SAM3InteractiveImagePredictor defaults
DEFAULTS = {
    "image_size": 1008,             # the prompt encoder's input_image_size
    "image_embedding_size": 72,     # image_size // backbone_stride (14)
    "num_heads": 8,
    "stability_delta": 0.05,        # dynamic_multimask_via_stability
    "stability_thresh": 0.98,
    "mask_threshold": 0.0,
    "max_hole_area": 256.0,         # 0 disables the hole filling (the reference without skimage)
}

__all__ = ["DEFAULTS", "SamHeads"]


class SamHeads:
    """Prompt encoder, mask decoder and post-processing over two dicts of float32 weights named
    as the reference's sam_prompt_encoder / sam_mask_decoder state_dicts (without the prefixes)."""

    def __init__(self, prompt_encoder_weights, mask_decoder_weights, config=None):
        self.config = {**DEFAULTS, **(config or {})}
        self.prompt_encoder_weights = prompt_encoder_weights
        self.mask_decoder_weights = mask_decoder_weights
        s = self.config["image_embedding_size"]
        self.dense_pe = prompt_encoder.get_dense_pe(prompt_encoder_weights, (s, s))
        self.timings = {}  # seconds per stage of the last predict

    @contextmanager
    def _stage(self, name):
        t = time.perf_counter()
        with nn.parallel_region():
            yield
        self.timings[name] = time.perf_counter() - t

    def predict(self, features, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                multimask_output=True, return_logits=False, orig_hw=None, fill_holes=True):
        """SAM3InteractiveImagePredictor._predict on prompts already in the 1008-px input frame.

        features: {"image_embed": [1, C, h, w], "high_res_feats": [[1, C/8, 4h, 4w],
        [1, C/4, 2h, 2w]]} (no_mem_embed added, conv_s0 / conv_s1 applied); point_coords
        [B, N, 2] (x, y) and point_labels [B, N]; boxes [B, 4] xyxy (they go first, as two
        points labelled 2 and 3); mask_input [B or 1, 1, 4h, 4w] logits (a previous
        low_res_masks); orig_hw (H, W) of the image, default the input frame.

        Returns masks [B, K, H, W] (bool, or logits with return_logits), iou_predictions [B, K]
        and low_res_masks [B, K, 4h, 4w] (logits clamped to [-32, 32], not hole-filled); K = 3
        with multimask_output, else 1.
        """
        cfg = self.config
        if point_coords is not None:
            point_coords, point_labels = np.asarray(point_coords, f32), np.asarray(point_labels)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, f32)
        if boxes is not None:
            box_coords = np.asarray(boxes, f32).reshape(-1, 2, 2)
            box_labels = np.tile(np.array([[2, 3]], np.int32), (len(box_coords), 1))
            if point_coords is None:
                point_coords, point_labels = box_coords, box_labels
            else:
                point_coords = np.concatenate([box_coords, point_coords], 1)
                point_labels = np.concatenate([box_labels, point_labels], 1)
        size = (cfg["image_size"], cfg["image_size"])
        self.timings = {}
        with self._stage("prompt encoder"):
            sparse, dense = prompt_encoder.forward(self.prompt_encoder_weights, point_coords,
                                                   point_labels, mask_input, size,
                                                   self.dense_pe.shape[-2:])
        with self._stage("mask decoder"):
            low_res_masks, iou_predictions, _, _ = mask_decoder.forward(
                self.mask_decoder_weights, features["image_embed"], self.dense_pe, sparse, dense,
                multimask_output, features["high_res_feats"], cfg["num_heads"],
                cfg["stability_delta"], cfg["stability_thresh"])
        with self._stage("postprocess"):
            masks = postprocess_masks(low_res_masks, orig_hw or size,
                                      cfg["max_hole_area"] if fill_holes else 0,
                                      cfg["mask_threshold"],
                                      None if return_logits else cfg["mask_threshold"])
        return masks, iou_predictions, np.clip(low_res_masks, -32, 32)
