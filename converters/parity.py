"""Stage-by-stage comparison of npsam3 with the PyTorch reference: the numbers behind the golden
tests, the README's parity table and ``npsam3-convert --parity``."""

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
    rows = []
    for stage, key in stages:
        if ours.get(key) is None or reference.get(key) is None:
            continue
        a, b = np.asarray(ours[key], np.float64), np.asarray(reference[key], np.float64)
        if a.shape != b.shape:
            raise ValueError(f"{stage}: shape {a.shape} vs reference {b.shape}")
        err = float(np.abs(a - b).max()) if a.size else 0.0
        scale = float(np.abs(b).max()) if b.size else 0.0
        rows.append((stage, err, err / scale if scale else err))
    return rows


def mask_iou(a, b):
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def format_table(header, rows):
    """A plain-text table; floats in short scientific notation."""
    cells = [[f"{c:.2e}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
