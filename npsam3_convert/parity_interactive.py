"""``npsam3-convert --parity`` for the interactive predictor: sam3's SAM3InteractiveImagePredictor
against npsam3's, stage by stage on the reference's own inputs to each stage (captured with
forward hooks), then end to end."""

from types import SimpleNamespace

import numpy as np
import torch

from .parity import compare, format_table, mask_iou


def _np(t):
    return t.detach().float().numpy()


class Capture:
    """The inputs and outputs of the reference's prompt encoder, mask decoder and two-way
    transformer during one call (``with Capture(pe, md) as cap: ...``; then ``cap.transformer``
    = (args, kwargs, output), ...)."""

    def __init__(self, pe, md):
        self.hooks = [pe.register_forward_hook(self.keep("prompt_encoder"), with_kwargs=True),
                      md.register_forward_hook(self.keep("mask_decoder"), with_kwargs=True),
                      md.transformer.register_forward_hook(self.keep("transformer"),
                                                           with_kwargs=True)]

    def keep(self, name):
        def hook(module, args, kwargs, out):
            setattr(self, name, (args, kwargs, out))
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def reference_heads_from_bundle(bundle_dir):
    """sam3's prompt encoder and mask decoder (as build_tracker makes them) with the bundle's
    tracker.safetensors weights: the reference side when only a bundle is at hand."""
    from safetensors.numpy import load_file

    from sam3 import model_builder as mb

    from .reference import patch_sam3_for_cpu

    patch_sam3_for_cpu()
    tracker = mb.build_tracker(apply_temporal_disambiguation=False)
    weights = load_file(str(bundle_dir / "tracker.safetensors"))
    missing, unexpected = tracker.load_state_dict(
        {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert not unexpected, unexpected
    return tracker.sam_prompt_encoder.eval(), tracker.sam_mask_decoder.eval()


def reference_predict(pe, md, features, orig_hw, prompts, multimask_output):
    """SAM3InteractiveImagePredictor's own _prep_prompts and _predict (on a stub predictor) with
    the given image features; returns ((masks, iou, low_res) as NumPy, the Capture)."""
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
    from sam3.model.utils.sam1_utils import SAM2Transforms

    stub = SimpleNamespace(
        model=SimpleNamespace(sam_prompt_encoder=pe, sam_mask_decoder=md), device="cpu",
        _is_image_set=True, _orig_hw=[orig_hw], mask_threshold=0.0,
        _features={"image_embed": torch.as_tensor(features["image_embed"]),
                   "high_res_feats": [torch.as_tensor(f) for f in features["high_res_feats"]]},
        _transforms=SAM2Transforms(1008, 0.0, max_hole_area=256.0))
    with torch.inference_mode(), Capture(pe, md) as cap:
        mask_input, coords, labels, box = SAM3InteractiveImagePredictor._prep_prompts(
            stub, prompts.get("point_coords"), prompts.get("point_labels"), prompts.get("box"),
            None, True)
        out = SAM3InteractiveImagePredictor._predict(stub, coords, labels, box, mask_input,
                                                     multimask_output)
    return [_np(o) for o in out], cap


def interactive_parity(model, bundle_dir, image, prompts, multimask_output=True):
    """Run sam3's interactive predictor and npsam3's on one image and prompts (predict_inst's
    point_coords / point_labels / box, pixels). model: the torch Sam3Image the bundle was made
    from (then the tracker neck is compared too and each side uses its own features), or None:
    the reference heads are loaded from the bundle and fed npsam3's features.
    Returns the report text."""
    from PIL import Image

    import npsam3
    from npsam3 import nn
    from npsam3.image import load_image, preprocess
    from npsam3.tracker import mask_decoder, prompt_encoder
    from npsam3.tracker.predictor import predict
    from npsam3.tracker.transformer import two_way_transformer

    ours_model = npsam3.load_model(bundle_dir)
    ours_model.require_interactive()
    rgb = load_image(image)
    hw = rgb.shape[:2]
    trunk = ours_model.image_encoder.trunk_features(preprocess(rgb, ours_model.resolution))
    features = ours_model.tracker_neck(trunk)
    rows = []
    if model is None:
        pe, md = reference_heads_from_bundle(bundle_dir)
        ref_features = features
    else:
        from sam3.model.sam3_image_processor import Sam3Processor

        tracker = model.inst_interactive_predictor.model
        pe, md = tracker.sam_prompt_encoder, tracker.sam_mask_decoder
        state = Sam3Processor(model, device="cpu").set_image(Image.fromarray(rgb))
        sam2 = state["backbone_out"]["sam2_backbone_out"]["backbone_fpn"]
        no_mem_embed = tracker.no_mem_embed.detach().reshape(1, -1, 1, 1)
        ref_features = {"high_res_feats": [_np(sam2[0]), _np(sam2[1])],
                        "image_embed": _np(sam2[2] + no_mem_embed)}
        for i, name in enumerate(("high_res_feats_0", "high_res_feats_1")):
            rows.append((f"tracker neck {name}",
                         *compare(features["high_res_feats"][i], ref_features["high_res_feats"][i])))
        rows.append(("tracker neck image_embed",
                     *compare(features["image_embed"], ref_features["image_embed"])))
    (ref_masks, ref_iou, ref_low), cap = reference_predict(pe, md, ref_features, hw, prompts,
                                                          multimask_output)
    heads = ours_model.sam_heads
    _, kw, (sparse, dense) = cap.prompt_encoder
    coords, labels = (t.numpy() for t in kw["points"])
    our_sparse, our_dense = prompt_encoder.forward(heads.prompt_encoder_weights, coords, labels,
                                                   None, (1008, 1008), (72, 72))
    rows += [("sparse embeddings", *compare(our_sparse, _np(sparse))),
             ("dense embeddings", *compare(np.broadcast_to(our_dense, dense.shape), _np(dense))),
             ("dense PE", *compare(heads.dense_pe, _np(pe.get_dense_pe())))]
    (src, pos, tokens), _, (queries, keys) = cap.transformer
    tp = {k[len("transformer."):]: v for k, v in heads.mask_decoder_weights.items()
          if k.startswith("transformer.")}
    _, kw, (masks, iou, _, _) = cap.mask_decoder
    inputs = [_np(kw[k]) for k in ("image_embeddings", "image_pe", "sparse_prompt_embeddings",
                                      "dense_prompt_embeddings")]
    with nn.parallel_region():
        our_q, our_k = two_way_transformer(tp, _np(src), _np(pos[:1]), _np(tokens), 8)
        decoded = mask_decoder.forward(heads.mask_decoder_weights, *inputs, multimask_output,
                                       [_np(f) for f in kw["high_res_features"]], 8, 0.05, 0.98)
    rows += [("decoder tokens (transformer queries)", *compare(our_q, _np(queries))),
             ("decoder image side (transformer keys)", *compare(our_k, _np(keys))),
             ("mask decoder low-res logits", *compare(decoded[0], _np(masks))),
             ("mask decoder IoU predictions", *compare(decoded[1], _np(iou)))]
    out_masks, out_iou, out_low = predict(ours_model, features, hw,
                                          multimask_output=multimask_output, **prompts)
    rows += [("end to end low-res masks", *compare(out_low, ref_low[0])),
             ("end to end IoU predictions", *compare(out_iou, ref_iou[0]))]
    ious = [mask_iou(a > 0, b > 0) for a, b in zip(out_masks, ref_masks[0])]
    where = ("end to end" if model is not None else
             "SAM heads from the bundle's weights, fed npsam3's tracker-neck features")
    return "\n".join([
        f"interactive parity of npsam3 vs PyTorch sam3 on {image} ({hw[1]}x{hw[0]}), prompts "
        f"{ {k: np.asarray(v).tolist() for k, v in prompts.items()} }: {where}",
        format_table(["stage", "max abs error", "max rel error"], rows), "",
        f"final masks: IoU with PyTorch's {', '.join(f'{v:.6f}' for v in ious)}; predicted IoU "
        f"PyTorch {', '.join(f'{v:.5f}' for v in ref_iou[0].ravel())}, npsam3 "
        f"{', '.join(f'{v:.5f}' for v in out_iou.ravel())}"])
