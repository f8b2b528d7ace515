"""The PyTorch reference (PyPI ``sam3``) made to run on a CPU, plus seeded random weights.

sam3 0.1.4 assumes CUDA in a few places; ``patch_sam3_for_cpu`` redirects them. Everything here
needs torch and sam3 (the ``convert`` extra).
"""

import re
import warnings

import numpy as np
import torch

_PATCHED = False
SAM3_CONNECTED_COMPONENTS = None  # sam3's own connected_components_cpu_single, once patched


def patch_sam3_for_cpu():
    """Idempotent monkeypatches that let sam3 0.1.4 build and run on a machine without CUDA."""
    global _PATCHED
    if _PATCHED:
        return
    # notices sam3 prints on every CPU run: no CUDA for its autocast decorators, torch.jit.script
    warnings.filterwarnings("ignore", "CUDA is not available", UserWarning)
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    import sam3.model.decoder as decoder
    import sam3.model.position_encoding as position_encoding
    import sam3.perflib.connected_components as connected_components

    # geometry encoder box path: scale.pin_memory() needs CUDA
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    # TransformerDecoder.__init__ precomputes boxRPB coordinates with device="cuda"
    get_coords = decoder.TransformerDecoder._get_coords
    decoder.TransformerDecoder._get_coords = staticmethod(
        lambda h, w, device: get_coords(h, w, "cpu"))
    # PositionEmbeddingSine(precompute_resolution=...) precomputes its cache on "cuda"
    init = position_encoding.PositionEmbeddingSine.__init__

    def init_cpu(self, *args, precompute_resolution=None, **kwargs):
        init(self, *args, **kwargs)
        if precompute_resolution is not None:
            for stride in (4, 8, 16, 32):
                n = precompute_resolution // stride
                self.forward(torch.zeros(1, 1, n, n))

    position_encoding.PositionEmbeddingSine.__init__ = init_cpu
    # hole filling's CPU path: the same skimage labels, component sizes by bincount instead of
    # one full-image pass per component (minutes for the noisy masks of random weights)
    global SAM3_CONNECTED_COMPONENTS
    SAM3_CONNECTED_COMPONENTS = connected_components.connected_components_cpu_single
    connected_components.connected_components_cpu_single = _connected_components_cpu_single
    _PATCHED = True


def _connected_components_cpu_single(values):
    """sam3.perflib.connected_components.connected_components_cpu_single, vectorised: labels
    [H, W] (skimage, 8-connected) and each pixel's component size (0 for the background)."""
    from skimage.measure import label

    labels = label(values.cpu().numpy())
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return torch.from_numpy(labels), torch.from_numpy(sizes[labels])


def build_reference_detector(backbone=None, interactive=False):
    """Sam3Image with the published detector configuration in eval mode; without a backbone,
    forward_grounding runs on precomputed backbone features. ``interactive`` adds the
    instance-interactive predictor (build_tracker + SAM3InteractiveImagePredictor, as
    build_sam3_image_model(enable_inst_interactivity=True)); the backbone's neck must then have
    its sam2_convs."""
    patch_sam3_for_cpu()
    from sam3 import model_builder as mb
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor

    model = mb._create_sam3_model(
        backbone=backbone,
        transformer=mb._create_sam3_transformer(),
        input_geometry_encoder=mb._create_geometry_encoder(),
        segmentation_head=mb._create_segmentation_head(),
        dot_prod_scoring=mb._create_dot_product_scoring(),
        inst_interactive_predictor=SAM3InteractiveImagePredictor(
            mb.build_tracker(apply_temporal_disambiguation=False)) if interactive else None,
        eval_mode=True,
    )
    return model.eval()


@torch.no_grad()
def randomize_(module, seed, layer_std=0.02):
    """Seeded random weights in which nothing is trivial: norm affines (LayerNorm2d included) away
    from (1, 0), every bias and embedding non-zero, the zero-initialised box head non-zero,
    BatchNorm statistics away from (0, 1), the prompt encoder's random Fourier matrix seeded.

    Weight matrices inside the transformer layers (encoder, decoder, geometry encoder) get a small
    std (``layer_std``): with 1/fan_in weights there the text cross-attention dominates and all
    queries collapse to one score. Other weights get std 1/sqrt(fan_in). Returns the module.
    """
    g = torch.Generator().manual_seed(seed)

    def randn_(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    from sam3.sam.common import LayerNorm2d

    done = set()
    for m in module.modules():
        norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d, LayerNorm2d)
        if isinstance(m, norms) and m.weight is not None:
            randn_(m.weight, 0.2, 1.0)
            randn_(m.bias, 0.1)
            done.update({id(m.weight), id(m.bias)})
        elif isinstance(m, torch.nn.Embedding):
            randn_(m.weight, 1.0)
            done.add(id(m.weight))
    in_layer = re.compile(r"(encoder\.layers|decoder\.layers|encode)\.\d+\.")
    for name, p in module.named_parameters():
        if id(p) in done or not p.is_floating_point():
            continue
        if p.dim() < 2:
            randn_(p, 0.05)
        elif in_layer.search(name):
            randn_(p, layer_std)
        else:
            randn_(p, p[0].numel() ** -0.5)
    for name, b in module.named_buffers():
        if name.endswith("positional_encoding_gaussian_matrix"):  # the SAM prompt encoder's
            randn_(b, 1.0)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            randn_(b, 0.1)
    return module


def position_encodings(feature_maps):
    """The reference's sine position encoding of each [1, C, H, W] map (as the vision neck makes it)."""
    patch_sam3_for_cpu()
    from sam3.model.position_encoding import PositionEmbeddingSine

    pe = PositionEmbeddingSine(num_pos_feats=feature_maps[0].shape[1], normalize=True)
    return [pe(f) for f in feature_maps]


def _backbone_out_and_prompt(model, backbone_fpn, language_features, language_mask, boxes,
                             box_labels, points, point_labels):
    """The reference's backbone_out dict and geometric Prompt for NumPy inputs shaped as npsam3's."""
    fpn = [torch.from_numpy(f) for f in backbone_fpn]
    backbone_out = {
        "backbone_fpn": fpn,
        "vision_pos_enc": position_encodings(fpn),
        "language_features": torch.from_numpy(language_features),
        "language_mask": torch.from_numpy(language_mask),
    }
    prompt = model._get_dummy_prompt()
    if boxes is not None:
        prompt.append_boxes(torch.from_numpy(boxes)[:, None], torch.from_numpy(box_labels)[:, None])
    if points is not None:
        prompt.append_points(torch.from_numpy(points)[:, None],
                             torch.from_numpy(point_labels)[:, None])
    return backbone_out, prompt


@torch.inference_mode()
def reference_forward_grounding(model, backbone_fpn, language_features, language_mask, boxes=None,
                                box_labels=None, points=None, point_labels=None):
    """Sam3Image.forward_grounding on NumPy inputs shaped as npsam3's, plus the intermediate stages
    (captured with forward hooks) under npsam3's names. Returns a dict of NumPy arrays."""
    from sam3.model.data_misc import FindStage

    backbone_out, prompt = _backbone_out_and_prompt(model, backbone_fpn, language_features,
                                                    language_mask, boxes, box_labels, points,
                                                    point_labels)
    zero = torch.zeros(1, dtype=torch.long)
    find_input = FindStage(img_ids=zero, text_ids=zero, input_boxes=None, input_boxes_mask=None,
                           input_boxes_label=None, input_points=None, input_points_mask=None)
    captured = {}
    hooks = [
        model.geometry_encoder.register_forward_hook(
            lambda m, a, out: captured.update(geometry=out[0])),
        model.transformer.decoder.register_forward_hook(
            lambda m, a, out: captured.update(hs=out[0], refs=out[1])),
    ]
    try:
        out = model.forward_grounding(backbone_out=backbone_out, find_input=find_input,
                                      find_target=None, geometric_prompt=prompt)
    finally:
        for h in hooks:
            h.remove()
    res = {k: out[k] for k in ("pred_logits", "pred_boxes", "pred_boxes_xyxy",
                               "presence_logit_dec", "pred_masks", "semantic_seg",
                               "encoder_hidden_states", "queries")}
    res["prompt"] = out["prev_encoder_out"]["encoder_out"]["prompt_before_enc"]
    res["prompt_mask"] = out["prev_encoder_out"]["encoder_out"]["prompt_mask"]
    res["geometry_features"] = captured["geometry"]
    res["decoder_hidden_states"] = captured["hs"].transpose(1, 2)  # seq-first -> batch-first
    res["reference_boxes"] = captured["refs"].transpose(1, 2)
    return {k: v.numpy() for k, v in res.items()}


@torch.inference_mode()
def reference_postprocess(outputs, height, width, threshold):
    """Sam3Processor._forward_grounding's post-processing (the reference's own code, fed the given
    forward outputs through a stub model) for an original image of height x width.

    Returns {"scores" [N], "boxes" [N, 4] pixel xyxy, "masks" [N, H, W] bool}."""
    from types import SimpleNamespace

    from sam3.model.sam3_image_processor import Sam3Processor

    tensors = {k: torch.from_numpy(np.asarray(outputs[k])) for k in
               ("pred_logits", "pred_boxes", "pred_masks", "presence_logit_dec")}
    proc = Sam3Processor(SimpleNamespace(forward_grounding=lambda **kw: tensors), device="cpu",
                         confidence_threshold=threshold)
    state = proc._forward_grounding({"backbone_out": None, "geometric_prompt": None,
                                     "original_height": height, "original_width": width})
    return {"scores": state["scores"].numpy(), "boxes": state["boxes"].numpy(),
            "masks": state["masks"][:, 0].numpy()}
