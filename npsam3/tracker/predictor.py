"""Interactive segmentation: clicks, a box or a previous mask in, one object's masks out
(SAM3InteractiveImagePredictor and Sam3Image.predict_inst, without torch).

    predictor = npsam3.InteractivePredictor(npsam3.load_model("weights/sam3-bundle"))
    predictor.set_image("photo.jpg")
    masks, iou_predictions, low_res_masks = predictor.predict(
        point_coords=[[500, 375]], point_labels=[1])          # masks float32 0/1 [3, H, W]

or, on a ``Sam3Processor`` state (the image encoded once for text prompts and clicks alike):
``model.predict_inst(state, point_coords=..., point_labels=..., box=..., mask_input=...,
multimask_output=True, return_logits=False, normalize_coords=True)``.

Prompts follow the reference: points [N, 2] (x, y) in pixels of the original image (or in [0, 1]
with normalize_coords=False), labels 1 (positive) / 0 (negative) / -1 (padding); a box
[x0, y0, x1, y1] ([B, 4]: B objects at once); mask_input [1, 288, 288], the low-res logits of a
previous call. Box corners go before the clicks, as in the reference.
"""

import numpy as np

from ..errors import Npsam3Error
from ..image import load_image, preprocess

f32 = np.float32


def _finite_array(x, name, dtype=f32):
    try:
        a = np.asarray(x, dtype)
    except (TypeError, ValueError):
        raise Npsam3Error(f"{name} must be numbers, got {x!r:.60}") from None
    if not np.isfinite(a).all():
        raise Npsam3Error(f"{name} contains NaN or infinite values")
    return a


def prepare_prompts(point_coords, point_labels, box, mask_input, normalize_coords, orig_hw,
                    image_size, mask_size):
    """SAM3InteractiveImagePredictor._prep_prompts with every check a user needs: returns
    (coords [B, N, 2] and labels [B, N] in the image_size x image_size input frame or None,
    boxes [B, 4] in that frame or None, mask_input [B, 1, mask_size, mask_size] or None).
    Raises Npsam3Error naming the problem."""
    h, w = orig_hw
    if point_coords is None and box is None and mask_input is None:
        raise Npsam3Error("give a prompt: point_coords with point_labels, a box, or a mask_input")
    scale = np.array([w, h], f32) if normalize_coords else np.ones(2, f32)
    where = f"the {w}x{h} image" if normalize_coords else "[0, 1] (normalize_coords=False)"
    coords = labels = boxes = None
    if point_coords is not None or point_labels is not None:
        if point_coords is None or point_labels is None:
            raise Npsam3Error("point_coords and point_labels go together")
        coords = _finite_array(point_coords, "point_coords")
        labels = _finite_array(point_labels, "point_labels", np.float64)
        if coords.ndim == 2:
            coords, labels = coords[None], labels[None]
        if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
            raise Npsam3Error(f"point_coords must be [N, 2] (x, y) or [B, N, 2], got {list(coords.shape)}")
        if labels.shape != coords.shape[:2]:
            raise Npsam3Error(f"{coords.shape[1]} points but point_labels of shape {list(labels.shape)}")
        if not np.isin(labels, (-1, 0, 1)).all():
            raise Npsam3Error("point labels must be 1 (positive), 0 (negative) or -1 (padding), "
                              f"got {sorted(set(labels.ravel().tolist()) - {-1, 0, 1})} (a box "
                              "goes in box=, not as points labelled 2 and 3)")
        real = labels != -1
        if ((coords < 0) | (coords > scale)).any(-1)[real].any():
            raise Npsam3Error(f"a point lies outside {where}")
        coords, labels = coords / scale * image_size, labels.astype(np.int32)
    if box is not None:
        boxes = _finite_array(box, "box").reshape(-1, 4) if np.size(box) % 4 == 0 else None
        if boxes is None or len(boxes) == 0:
            raise Npsam3Error("box must be [x0, y0, x1, y1] or [B, 4]")
        if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            raise Npsam3Error("a box has zero area or is inverted (need x0 < x1 and y0 < y1)")
        tiled = np.tile(scale, 2)
        if ((boxes[:, 2:] <= 0) | (boxes[:, :2] >= tiled[:2])).any():
            raise Npsam3Error(f"a box lies entirely outside {where}")
        boxes = boxes / tiled * image_size
        if coords is not None and len(coords) not in (1, len(boxes)):
            raise Npsam3Error(f"{len(boxes)} boxes but {len(coords)} sets of points")
        if coords is not None and len(coords) == 1 < len(boxes):
            coords, labels = np.repeat(coords, len(boxes), 0), np.repeat(labels, len(boxes), 0)
    if mask_input is not None:
        mask_input = _finite_array(mask_input, "mask_input")
        if mask_input.ndim == 3:
            mask_input = mask_input[None]
        batch = len(boxes) if boxes is not None else len(coords) if coords is not None else 1
        if mask_input.shape[1:] != (1, mask_size, mask_size) or len(mask_input) not in (1, batch):
            raise Npsam3Error(f"mask_input must be [1, {mask_size}, {mask_size}] (low_res_masks of a "
                              f"previous call, one mask), got {list(mask_input.shape)}")
    return coords, labels, boxes, mask_input


def predict(model, features, orig_hw, point_coords=None, point_labels=None, box=None,
            mask_input=None, multimask_output=True, return_logits=False, normalize_coords=True,
            fill_holes=True):
    """One prediction on an image's interactive features, shaped as the reference's
    ``predict``: masks [C, H, W] (float32 0/1, or logits with return_logits), iou_predictions
    [C] and low_res_masks [C, 288, 288]; with a [B, 4] box batch (B > 1) each gets a leading B."""
    heads = model.sam_heads
    size, mask_size = heads.config["image_size"], 4 * heads.config["image_embedding_size"]
    coords, labels, boxes, mask_input = prepare_prompts(
        point_coords, point_labels, box, mask_input, normalize_coords, orig_hw, size, mask_size)
    masks, iou, low_res = heads.predict(features, coords, labels, boxes, mask_input,
                                        multimask_output, return_logits, orig_hw, fill_holes)
    masks = masks.astype(f32, copy=False)
    if len(masks) == 1:
        return masks[0], iou[0], low_res[0]
    return masks, iou, low_res


def interactive_features(model, backbone_out):
    """The tracker-neck features of an encoded image, computed on first use and kept in
    ``backbone_out`` (the trunk output they come from is then dropped)."""
    model.require_interactive()
    if "sam2_backbone_out" not in backbone_out:
        trunk = backbone_out.pop("vision_features", None)
        if trunk is None:
            raise Npsam3Error("this state has no trunk features: set the image with this model")
        backbone_out["sam2_backbone_out"] = model.tracker_neck(trunk)
    return backbone_out["sam2_backbone_out"]


class InteractivePredictor:
    """SAM2ImagePredictor's API on an npsam3 model, for users who only click: ``set_image`` runs
    the image trunk and the tracker neck (not the detector's neck), ``predict`` the prompt encoder
    and mask decoder. ``fill_holes`` (default True, the reference with scikit-image installed)
    fills background holes of <= 256 low-res pixels, as sam3's postprocess_masks."""

    def __init__(self, model, fill_holes=True):
        model.require_interactive()
        self.model = model
        self.fill_holes = fill_holes
        self.reset_predictor()

    def reset_predictor(self):
        """Forget the image (its 21 MB of features)."""
        self._features, self._orig_hw = [], []

    def _encode(self, image):
        rgb = load_image(image)
        trunk = self.model.image_encoder.trunk_features(preprocess(rgb, self.model.resolution))
        return self.model.tracker_neck(trunk), rgb.shape[:2]

    def set_image(self, image):
        """Encode an image (path, PIL image or uint8 [H, W, 3]) for the following predictions."""
        features, orig_hw = self._encode(image)
        self._features, self._orig_hw = [features], [orig_hw]

    def set_image_batch(self, image_list):
        """Encode several images, for ``predict_batch``."""
        encoded = [self._encode(image) for image in image_list]
        self._features, self._orig_hw = [f for f, _ in encoded], [hw for _, hw in encoded]

    def _require_image(self):
        if not self._features:
            raise Npsam3Error("call set_image before predict")

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False, normalize_coords=True):
        """(masks [C, H, W], iou_predictions [C], low_res_masks [C, 288, 288]) for the image of
        ``set_image`` (see the module docstring for the prompts)."""
        self._require_image()
        return predict(self.model, self._features[0], self._orig_hw[0], point_coords,
                       point_labels, box, mask_input, multimask_output, return_logits,
                       normalize_coords, self.fill_holes)

    def predict_batch(self, point_coords_batch=None, point_labels_batch=None, box_batch=None,
                      mask_input_batch=None, multimask_output=True, return_logits=False,
                      normalize_coords=True):
        """``predict`` per image of ``set_image_batch``: three lists, one entry per image."""
        self._require_image()
        return predict_each(self.model, self._features, self._orig_hw, point_coords_batch,
                            point_labels_batch, box_batch, mask_input_batch, multimask_output,
                            return_logits, normalize_coords, self.fill_holes)

    def get_image_embedding(self):
        """The image embedding [1, 256, 72, 72] of the image set (no_mem_embed added)."""
        self._require_image()
        return self._features[0]["image_embed"]


def predict_each(model, features, orig_hws, point_coords_batch, point_labels_batch, box_batch,
                 mask_input_batch, multimask_output, return_logits, normalize_coords, fill_holes):
    """SAM3InteractiveImagePredictor.predict_batch: ``predict`` per image, lists of results."""
    def item(batch, i):
        return None if batch is None else batch[i]

    results = [predict(model, f, hw, item(point_coords_batch, i), item(point_labels_batch, i),
                       item(box_batch, i), item(mask_input_batch, i), multimask_output,
                       return_logits, normalize_coords, fill_holes)
               for i, (f, hw) in enumerate(zip(features, orig_hws))]
    return tuple(list(r) for r in zip(*results)) if results else ([], [], [])
