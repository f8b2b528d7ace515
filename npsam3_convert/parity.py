"""Stage-by-stage comparison of npsam3 with the PyTorch reference: the numbers behind the golden
tests, the README's parity table and ``npsam3-convert --parity``."""

from pathlib import Path

import numpy as np

# (stage, output key) in data-flow order; both sides use these names and layouts.
DETECTOR_STAGES = [
    ("geometry encoder", "geometry_features"),
    ("fusion encoder memory", "encoder_hidden_states"),
    ("decoder hidden states", "decoder_hidden_states"),
    ("decoder reference boxes", "reference_boxes"),
    ("presence logit", "presence_logit_dec"),
    ("scores (logits)", "pred_logits"),
    ("boxes (cxcywh)", "pred_boxes"),
    ("mask logits", "pred_masks"),
    ("semantic map", "semantic_seg"),
]


def stage_errors(ours, reference, stages=DETECTOR_STAGES):
    """[(stage, max |a - b|, max |a - b| / max |b|)] for every stage present on both sides."""
    return [(stage, *compare(ours[key], reference[key])) for stage, key in stages
            if ours.get(key) is not None and reference.get(key) is not None]


def mask_iou(a, b):
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def format_table(header, rows):
    """A plain-text table; floats in short scientific notation; short rows end in blanks."""
    cells = [[f"{c:.2e}" if isinstance(c, float) else str(c) for c in r] + [""] * (len(header) - len(r))
             for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def compare(actual, expected):
    """(max |a - b|, max |a - b| / max |b|) of two same-shape arrays (bools compare as 0/1)."""
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} vs reference {b.shape}")
    err = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return err, err / scale if scale else err


def encoders_and_noise(model, image, prompt):
    """The reference's FPN levels, text features and padding mask (NumPy) for a preprocessed
    image and a prompt, and its own noise on them: the relative difference of each float output
    between runs on 1 thread and on torch's default threads (the yardstick for an export)."""
    import torch

    def run():
        with torch.inference_mode():
            fpn = [f.numpy() for f in model.backbone.forward_image(image)["backbone_fpn"]]
            text = model.backbone.forward_text([prompt], device="cpu")
        return fpn, text["language_features"].numpy(), text["language_mask"].numpy()

    fpn, feats, mask = run()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fpn1, feats1, _ = run()
    finally:
        torch.set_num_threads(threads)
    floor = [compare(a, b)[1] for a, b in zip([*fpn1, feats1], [*fpn, feats])]
    return (fpn, feats, mask), floor


def concept_parity(model, bundle_dir, image, prompt, threshold=0.5):
    """Run the PyTorch reference and npsam3 on one image and text prompt and compare them.

    model: the torch Sam3Image the bundle was made from; or None when only a bundle is at hand:
    then the reference detector is loaded from the bundle's weights and fed npsam3's encoder
    outputs (the encoders themselves cannot be checked without PyTorch weights).

    Returns a dict: "title"; "rows", the error of every stage [(stage, max abs, max rel) and,
    for the encoders, the reference's own 1-vs-default-threads noise];
    "rgb", the image; "threshold"; "kept" / "ref_kept", the query indices each side keeps;
    "instances", per query kept by both: {"query", "ref_score", "score", "box_diff" (pixels),
    "iou", "ref_mask", "mask", "ref_box", "box"}; "only", a line per query kept by one side only."""
    import torch
    from PIL import Image
    from safetensors.numpy import load_file
    from torchvision.transforms import v2

    import npsam3
    from npsam3.image import load_image, preprocess
    from npsam3.postprocess import boxes_to_pixels, masks_to_image, select_queries

    from .reference import build_reference_detector, reference_forward_grounding, reference_postprocess

    rgb = load_image(image)
    height, width = rgb.shape[:2]
    ours_model = npsam3.load_model(bundle_dir)
    x = preprocess(rgb, ours_model.resolution)
    fpn, _ = ours_model.image_encoder(x)
    ids, _ = ours_model.tokenizer.tokenize(prompt, ours_model.context_length)
    feats, mask = ours_model.text_encoder(ids)
    rows = []
    if model is None:
        ref_model = build_reference_detector()
        weights = load_file(str(Path(bundle_dir) / "detector.safetensors"))
        ref_model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        ref_fpn, ref_feats, ref_mask = fpn, feats, mask
    else:
        from sam3.model.sam3_image_processor import Sam3Processor

        ref_model = model
        proc = Sam3Processor(model, resolution=ours_model.resolution, device="cpu")
        ref_x = proc.transform(v2.functional.to_image(Image.fromarray(rgb))).unsqueeze(0)
        (ref_fpn, ref_feats, ref_mask), floor = encoders_and_noise(model, ref_x, prompt)
        rows.append(("preprocessed image", *compare(x, ref_x.numpy())))
        rows += [(f"image encoder level {i}", *compare(a, b), floor[i])
                 for i, (a, b) in enumerate(zip(fpn, ref_fpn))]
        rows.append(("text encoder", *compare(feats, ref_feats), floor[3]))
        rows.append(("text padding mask", *compare(mask, ref_mask)))
    ref = reference_forward_grounding(ref_model, ref_fpn, ref_feats, ref_mask)
    ours = ours_model.detector.forward_grounding(fpn, feats, mask)
    rows += stage_errors(ours, ref)

    want = reference_postprocess(ref, height, width, threshold)
    ref_keep, _ = select_queries(ref["pred_logits"], ref["presence_logit_dec"], threshold)
    keep, scores = select_queries(ours["pred_logits"], ours["presence_logit_dec"], threshold)
    boxes = boxes_to_pixels(ours["pred_boxes"][0, keep], height, width)
    _, masks = masks_to_image(ours["pred_masks"][0, keep], height, width)
    instances, only = [], []
    for q in np.union1d(keep, ref_keep):
        i, j = np.flatnonzero(keep == q), np.flatnonzero(ref_keep == q)
        if i.size and j.size:
            i, j = i[0], j[0]
            instances.append({"query": int(q), "ref_score": float(want["scores"][j]),
                              "score": float(scores[i]),
                              "box_diff": float(np.abs(boxes[i] - want["boxes"][j]).max()),
                              "iou": mask_iou(masks[i], want["masks"][j]),
                              "ref_mask": want["masks"][j], "mask": masks[i],
                              "ref_box": want["boxes"][j], "box": boxes[i]})
        else:
            only.append(f"query {q} kept only by {'npsam3' if i.size else 'PyTorch'} (score "
                        f"{float(scores[i[0]] if i.size else want['scores'][j[0]]):.6f})")
    where = "end to end" if model is not None else "detector only (bundle weights, npsam3's encoder outputs)"
    return {"title": f"parity of npsam3 vs PyTorch sam3 on {image} ({width}x{height}), prompt "
                     f"{prompt!r}: {where}",
            "rows": rows, "rgb": rgb, "threshold": threshold, "kept": keep, "ref_kept": ref_keep,
            "instances": instances, "only": only}


def format_concept_report(result):
    """The text report of a concept_parity result: the stage table, then the kept instances."""
    both = result["instances"]
    text = [result["title"], format_table(["stage", "max abs error", "max rel error",
                                           "PyTorch 1 vs default threads"], result["rows"]),
            "", f"instances above {result['threshold']}: PyTorch kept {len(result['ref_kept'])}, "
            f"npsam3 kept {len(result['kept'])}, {len(both)} in common"]
    if both:
        score_diff = max(abs(r["ref_score"] - r["score"]) for r in both)
        text.append(f"over the common ones: max score difference {score_diff:.2e}, max box "
                    f"difference {max(r['box_diff'] for r in both):.4f} px, min mask IoU "
                    f"{min(r['iou'] for r in both):.6f}")
        top = sorted(both, key=lambda r: -r["ref_score"])[:10]
        text.append(format_table(["query", "score torch", "score npsam3", "box diff px", "mask IoU"],
                                 [(r["query"], f"{r['ref_score']:.5f}", f"{r['score']:.5f}",
                                   f"{r['box_diff']:.4f}", f"{r['iou']:.5f}") for r in top]))
    return "\n".join(text + result["only"])


def parity_report(model, bundle_dir, image, prompt, threshold=0.5):
    """concept_parity as text: what ``npsam3-convert --parity`` prints."""
    return format_concept_report(concept_parity(model, bundle_dir, image, prompt, threshold))
