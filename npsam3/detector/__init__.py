"""The SAM3 detector in NumPy: Sam3Image.forward_grounding wired from one file per part.

    det = load_detector(bundle_dir)
    out = det.forward_grounding(backbone_fpn=[f0, f1, f2], language_features=..., language_mask=...)
"""

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import nn
from ..kernels import check as check_kernels, trim_heap, use as use_kernels
from ..bundle import load_weights, read_manifest
from ..errors import Npsam3Error
from .config import check_weights
from .decoder import transformer_decoder
from .encoder import fusion_encoder
from .geometry import geometry_encoder
from .scoring import dot_product_scoring
from .segmentation import mask_logits, pixel_embeddings, semantic_logits

f32 = np.float32
DETECTOR_FILE = "detector.safetensors"


def _sub(weights, prefix):
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _array(name, x, ndim, dtype=f32):
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if dtype is bool:
        if x.dtype != bool:
            raise ValueError(f"{name} must be bool, got {x.dtype}")
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):  # NaN propagates; no temporary
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(x, dtype=dtype)


class Detector:
    """Geometry encoder, fusion encoder, decoder, dot-product scoring and segmentation head over
    a dict of float32 weights with the reference's names."""

    def __init__(self, weights, config, kernels=None):
        self.config = config
        self.kernels = check_kernels(kernels) if kernels else None  # None: kernels.selected()
        self.geometry = _sub(weights, "geometry_encoder.")
        self.encoder = _sub(weights, "transformer.encoder.")
        self.decoder = _sub(weights, "transformer.decoder.")
        self.scoring = _sub(weights, "dot_prod_scoring.")
        self.segmentation = _sub(weights, "segmentation_head.")
        self.timings = {}  # seconds per stage of the last forward_grounding

    @contextmanager
    def _stage(self, name):
        """Run a stage with the thread pool in charge of BLAS and this detector's kernels, and
        record its wall time."""
        t = time.perf_counter()
        with nn.parallel_region(), use_kernels(self.kernels):
            yield
        self.timings[name] = time.perf_counter() - t

    def _check_inputs(self, backbone_fpn, language_features, language_mask, boxes, box_labels,
                      points, point_labels):
        d = self.config["d_model"]
        if not isinstance(backbone_fpn, (list, tuple)) or len(backbone_fpn) != 3:
            raise ValueError("backbone_fpn must be a list of three NCHW maps "
                             f"[1,{d},4h,4w], [1,{d},2h,2w], [1,{d},h,w]")
        fpn = [_array(f"backbone_fpn[{i}]", f, 4) for i, f in enumerate(backbone_fpn)]
        h, w = fpn[2].shape[-2:]
        for i, s in enumerate((4, 2, 1)):
            if fpn[i].shape != (1, d, s * h, s * w):
                raise ValueError(f"backbone_fpn[{i}] must have shape [1,{d},{s * h},{s * w}] "
                                 f"(level 2 is {h}x{w}), got {list(fpn[i].shape)}")
        lf = _array("language_features", language_features, 3)
        if lf.shape[1:] != (1, d):
            raise ValueError(f"language_features must have shape [L,1,{d}], got {list(lf.shape)}")
        lm = _array("language_mask", language_mask, 2, bool)
        if lm.shape != (1, lf.shape[0]):
            raise ValueError(f"language_mask must have shape [1,{lf.shape[0]}] (True = padding), "
                             f"got {list(lm.shape)}")
        prompts = []
        for name, x, lname, labels, k in (("boxes", boxes, "box_labels", box_labels, 4),
                                          ("points", points, "point_labels", point_labels, 2)):
            if x is None:
                if labels is not None:
                    raise ValueError(f"{lname} given without {name}")
                prompts += [None, None]
                continue
            x = _array(name, x, 2)
            if x.shape[1] != k:
                raise ValueError(f"{name} must have shape [N,{k}], got {list(x.shape)}")
            if labels is None:
                labels = np.ones(len(x), bool)
            labels = _array(lname, labels, 1, bool)
            if labels.shape != (len(x),):
                raise ValueError(f"{lname} must have shape [{len(x)}], got {list(labels.shape)}")
            prompts += [x, labels]
        return fpn, lf[:, 0], lm[0], prompts

    def detect(self, backbone_fpn, language_features, language_mask, boxes=None, box_labels=None,
               points=None, point_labels=None):
        """Everything of Sam3Image.forward_grounding but the masks, for one image and one prompt.

        backbone_fpn: NCHW float32 [1,C,4h,4w], [1,C,2h,2w], [1,C,h,w]; language_features [L,1,C];
        language_mask [1,L] bool (True = padding); boxes [K,4] normalised cxcywh with box_labels
        [K] bool (True = positive); points [P,2] normalised xy with point_labels [P] bool.

        Returns pred_logits [1,Q,1], pred_boxes [1,Q,4] (cxcywh), pred_boxes_xyxy [1,Q,4],
        presence_logit_dec [1,1] and the intermediate stages: prompt [L',1,C], prompt_mask [1,L'],
        geometry_features [G,1,C], encoder_hidden_states [hw,1,C], decoder_hidden_states
        [layers,1,Q,C], reference_boxes [layers,1,Q,4], queries [1,Q,C]. Pass the result to
        predict_masks / predict_semantic_seg.
        """
        cfg = self.config
        fpn, lang, lang_mask, (boxes, box_labels, points, point_labels) = self._check_inputs(
            backbone_fpn, language_features, language_mask, boxes, box_labels, points, point_labels)
        d, (h, w) = cfg["d_model"], fpn[2].shape[-2:]
        img_feat = fpn[2][0].reshape(d, -1).T  # [hw, C] tokens
        img_pos = nn.position_encoding_sine(h, w, d).reshape(d, -1).T

        self.timings = {}
        with self._stage("geometry encoder"):
            geo = geometry_encoder(self.geometry, cfg, img_feat, img_pos, (h, w), points,
                                   point_labels, boxes, box_labels)
        prompt = np.concatenate([lang, geo], 0)
        prompt_mask = np.concatenate([lang_mask, np.zeros(len(geo), bool)])
        with self._stage("fusion encoder"):
            memory = fusion_encoder(self.encoder, cfg, img_feat, img_pos, prompt, prompt_mask)
            trim_heap()
        with self._stage("decoder"):
            hs, refs, presence, boxes_out = transformer_decoder(self.decoder, cfg, memory, img_pos,
                                                                (h, w), prompt, prompt_mask)
        with self._stage("scoring"):
            logits = dot_product_scoring(self.scoring, hs[-1], prompt, prompt_mask)
        return {
            "pred_logits": logits[None],
            "pred_boxes": boxes_out[None],
            "pred_boxes_xyxy": nn.box_cxcywh_to_xyxy(boxes_out)[None],
            "presence_logit_dec": presence[-1:].reshape(1, 1),
            "prompt": prompt[:, None],
            "prompt_mask": prompt_mask[None],
            "geometry_features": geo[:, None],
            "encoder_hidden_states": memory[:, None],
            "decoder_hidden_states": hs[:, None],
            "reference_boxes": refs[:, None],
            "queries": hs[-1][None],
            "backbone_fpn": fpn,
        }

    def _pixel_embed(self, out):
        """The segmentation head's pixel embedding [C, 4h, 4w], computed once per detect() result."""
        if "pixel_embed" not in out:
            with self._stage("segmentation head"):
                fpn, memory = out["backbone_fpn"], out["encoder_hidden_states"][:, 0]
                out["pixel_embed"] = pixel_embeddings(
                    self.segmentation, self.config, [f[0] for f in fpn[:2]], memory,
                    fpn[2].shape[-2:], out["prompt"][:, 0], out["prompt_mask"][0])
        return out["pixel_embed"]

    def predict_masks(self, out, mask_queries=None):
        """Mask logits [1, len(mask_queries), 4h, 4w] of the given queries (default: all) of a
        detect() result; the pixel embedding is computed on the first call and kept in ``out``."""
        queries = out["queries"][0]
        if mask_queries is not None:
            queries = queries[self._query_indices(mask_queries)]
        pixel_embed = self._pixel_embed(out)
        with self._stage("masks"):
            return mask_logits(self.segmentation, queries, pixel_embed)[None]

    def _query_indices(self, mask_queries):
        """mask_queries as int64 indices, each within [0, num_queries); else a ValueError."""
        idx = np.asarray(mask_queries, np.int64).reshape(-1)
        nq = self.config["num_queries"]
        if idx.size and (idx.min() < 0 or idx.max() >= nq):
            raise ValueError(f"mask_queries must index the {nq} queries")
        return idx

    def predict_semantic_seg(self, out):
        """Semantic segmentation logits [1, 1, 4h, 4w] of a detect() result."""
        pixel_embed = self._pixel_embed(out)
        with self._stage("semantic map"):
            return semantic_logits(self.segmentation, pixel_embed)[None]

    def forward_grounding(self, backbone_fpn, language_features, language_mask, boxes=None,
                          box_labels=None, points=None, point_labels=None, mask_queries=None,
                          semantic=True):
        """Sam3Image.forward_grounding for one image and one prompt: detect() plus pred_masks
        [1, len(mask_queries), 4h, 4w] (all queries when mask_queries is None) and semantic_seg
        [1, 1, 4h, 4w] (None when semantic=False)."""
        if mask_queries is not None:  # fail before the work, not after
            mask_queries = self._query_indices(mask_queries)
        out = self.detect(backbone_fpn, language_features, language_mask, boxes, box_labels,
                          points, point_labels)
        out["pred_masks"] = self.predict_masks(out, mask_queries)
        out["semantic_seg"] = self.predict_semantic_seg(out) if semantic else None
        return out


def load_detector(bundle_dir, verify=True, kernels=None):
    """Read a bundle's manifest, check its hashes and the detector tensors, return a Detector
    (``kernels``: "auto", "onnxruntime", "numpy", or None for npsam3.kernels.selected())."""
    manifest = read_manifest(bundle_dir, verify=verify)
    cfg = manifest.get("detector")
    if not isinstance(cfg, dict) or DETECTOR_FILE not in manifest["files"]:
        raise Npsam3Error(f"bundle {bundle_dir} has no detector")
    path = Path(bundle_dir) / DETECTOR_FILE
    weights = load_weights(path)
    try:
        check_weights({k: v.shape for k, v in weights.items()}, cfg, path)
    except KeyError as e:
        raise Npsam3Error(f"{Path(bundle_dir) / 'manifest.json'}: detector config lacks {e}") from None
    return Detector(weights, cfg, kernels)
