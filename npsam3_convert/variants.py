"""Which SAM3-family image model a checkpoint holds, told from its ``{key: shape}`` alone.

Three families share one detector (``transformer.*``, ``geometry_encoder.*``,
``segmentation_head.*``, ``dot_prod_scoring.*``) and the ViTDet neck
(``backbone.vision_backbone.convs.*``); they differ in the two encoders:

- ``sam3``: ViT-H trunk ``backbone.vision_backbone.trunk.{pos_embed, patch_embed, ln_pre,
  blocks.0-31}`` and SAM3's VE text encoder ``backbone.language_backbone.encoder.{token_embedding,
  positional_embedding, transformer.resblocks.0-23, ln_final, text_projection}`` + ``resizer``.
- ``sam3-litetext``: the same ViT-H trunk and a MobileCLIP text encoder
  ``backbone.language_backbone.encoder.{embedding_layer, positional_embedding.pos_embed.pos_embed,
  transformer.N, final_layer_norm, projection_layer}`` + ``projector``.
- ``efficientsam3``: a student trunk ``backbone.vision_backbone.trunk.model.backbone.model.*``
  (RepViT / TinyViT / EfficientViT) with the projection head ``trunk.model.head.{0,1,3}``, and
  a MobileCLIP (rarely VE) text encoder.

Names (``backbone``, ``variant``, ``text_encoder``) are spelled as the EfficientSAM3 fork's
``build_efficientsam3_image_model(backbone_type=, model_name=, text_encoder_type=,
text_encoder_context_length=)`` takes them. Everything here is pure Python over shapes: no torch.
"""

import math
import re

from npsam3.errors import Npsam3Error

FAMILIES = ("sam3", "sam3-litetext", "efficientsam3")
BACKBONES = ("vit-h", "repvit", "tinyvit", "efficientvit")
VE_TEXT = "ve-text"

D_MODEL = 256          # detector width; both text encoders project to it
EMBED_DIM = 1024       # what the neck expects from the trunk (ViT-H width, student head output)
FEAT_SIZE = 72         # 1008 / 14; student trunks are resized (bilinear) to it
RESOLUTION = 1008
VOCAB = 49408
MOBILECLIP_TABLE = 77  # MobileCLIP's pretrained positional table; LiteText checkpoints keep it

TRUNK = "backbone.vision_backbone.trunk."
STUDENT = TRUNK + "model."
STUDENT_BODY = STUDENT + "backbone.model."
NECK = "backbone.vision_backbone.convs."
SAM2_NECK = "backbone.vision_backbone.sam2_convs."  # the tracker neck: the interactive predictor's
TEXT = "backbone.language_backbone."
DETECTOR_PREFIXES = ("transformer.", "geometry_encoder.", "segmentation_head.", "dot_prod_scoring.")
TRACKER = "tracker."
# what predict_inst uses of the tracker (the rest of tracker.* is the video tracker's)
TRACKER_HEADS = ("tracker.sam_prompt_encoder.", "tracker.sam_mask_decoder.", "tracker.no_mem_embed")
# SAM 3.1's tri-neck and multiplex tracker (facebook/sam3.1), not supported
SAM31 = ("backbone.vision_backbone.interactive_convs.",
         "backbone.vision_backbone.propagation_convs.", "tracker.model.")
# ImageNet classifier heads of older student trunks: no image model uses them
LEGACY_HEADS = ("classifier.", "distill_head.", "norm_head.", "head.")

# ---- student image trunks (fork: sam3/backbones/{repvit,tiny_vit}.py, efficientvit/backbone.py) --
# RepViT: stem conv width, number of ``features`` entries, output channels, tensors without
# BatchNorm ``num_batches_tracked``
REPVIT = {
    "m0.9": {"stem": 24, "features": 27, "out": 384, "tensors": 593},
    "m1.1": {"stem": 32, "features": 25, "out": 512, "tensors": 547},
    "m2.3": {"stem": 40, "features": 55, "out": 640, "tensors": 1237},
}
# TinyViT (built at img_size=1008, num_classes=0): widths of the 4 stages; depths (2, 2, 6, 2)
TINYVIT = {
    "5m": {"dims": (64, 128, 160, 320), "heads": (2, 4, 5, 10), "tensors": 265},
    "11m": {"dims": (64, 128, 256, 448), "heads": (2, 4, 8, 14), "tensors": 265},
    "21m": {"dims": (96, 192, 384, 576), "heads": (3, 6, 12, 18), "tensors": 265},
}
# EfficientViT-B: width_list, depth_list, attention head dim
EFFICIENTVIT = {
    "b0": {"widths": (8, 16, 32, 64, 128), "depths": (1, 2, 2, 2, 2), "dim": 16, "tensors": 161},
    "b1": {"widths": (16, 32, 64, 128, 256), "depths": (1, 2, 3, 3, 4), "dim": 16, "tensors": 227},
    "b2": {"widths": (24, 48, 96, 192, 384), "depths": (1, 3, 4, 4, 6), "dim": 32, "tensors": 308},
}
STUDENT_SIGNATURE = {  # first stem conv of each student family
    "repvit": STUDENT_BODY + "features.0.0.c.weight",
    "tinyvit": STUDENT_BODY + "patch_embed.seq.0.c.weight",
    "efficientvit": STUDENT_BODY + "input_stem.op_list.0.conv.weight",
}
PRETTY = {"vit-h": "ViT-H", "repvit": "RepViT", "tinyvit": "TinyViT", "efficientvit": "EfficientViT"}

# ---- text encoders (fork: model_builder._create_student_text_encoder, backbones/mobile_clip.py) --
# Layouts the keys can tell apart, each with every fork name that builds exactly that layout.
# MobileCLIP-B has the layout of S1 but causal self-attention: only a flag can select it.
MOBILECLIP = {
    "MobileCLIP-S0": {"dim": 512, "heads": 8, "attention_layers": 4, "repmixer": True,
                      "names": ("MobileCLIP-S0",)},
    "MobileCLIP-S1": {"dim": 512, "heads": 8, "attention_layers": 12, "repmixer": False,
                      "names": ("MobileCLIP-S1", "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP-B")},
    "MobileCLIP2-L": {"dim": 768, "heads": 12, "attention_layers": 12, "repmixer": False,
                      "names": ("MobileCLIP2-L", "MobileCLIP2-S3", "MobileCLIP2-S4")},
}
CAUSAL_TEXT = ("MobileCLIP-B",)
VE = {"width": 1024, "layers": 24, "heads": 16, "context_length": 32}
ATTN_BLOCK_TENSORS = 12     # pre_norm_mha.{0: LN, 1: qkv_proj, out_proj} + pre_norm_ffn.{0, 1, 4}
REPMIXER_BLOCK_TENSORS = 24  # without the 4 num_batches_tracked
VE_BLOCK_TENSORS = 12
VIT_H = {"depth": 32, "width": 1024, "patch": 14, "mlp": 4736, "pos_tokens": 577}


def _fail(msg):
    raise Npsam3Error(msg)


def _shape(value):
    """A tuple of ints from a shape (tuple/list/torch.Size) or from anything with ``.shape``."""
    shape = getattr(value, "shape", value)
    if callable(getattr(value, "get_shape", None)):  # safetensors slice
        shape = value.get_shape()
    try:
        return tuple(int(s) for s in shape)
    except TypeError:
        _fail(f"checkpoint entry has no tensor shape: {value!r:.60}")


def canonical_name(key):
    """A checkpoint key as npsam3 names it, or None for a tensor no image model uses:
    ``detector.`` stripped, the fork's ``student_trunk.`` wrapper removed (as its checkpoint
    loader does), the interactive heads as ``tracker.*`` (also when saved from a Sam3Image as
    ``inst_interactive_predictor.model.*``), the video tracker's other ``tracker.*`` tensors
    dropped. A SAM 3.1 tensor is refused."""
    name = key.removeprefix("detector.").replace("student_trunk.", "")
    if name.startswith("inst_interactive_predictor.model."):
        name = TRACKER + name.removeprefix("inst_interactive_predictor.model.")
    if name.startswith(SAM31):
        _fail(f"{name} is a SAM 3.1 tensor (interactive_convs / propagation_convs / "
              "tracker.model.*): npsam3 converts SAM 3 checkpoints; SAM 3.1's tri-neck and "
              "multiplex tracker are not supported")
    if name.startswith(TRACKER) and not name.startswith(TRACKER_HEADS):
        return None
    return name


def normalize_keys(shapes):
    """{canonical name: shape tuple} of a checkpoint's {key: shape} (see ``canonical_name``)."""
    if not isinstance(shapes, dict) or not shapes:
        _fail("checkpoint holds no tensors (empty state dict)")
    out = {}
    for key, value in shapes.items():
        if not isinstance(key, str):
            _fail(f"checkpoint key {key!r} is not a string")
        name = canonical_name(key)
        if name is None:
            continue
        if name in out:
            _fail(f"checkpoint is contradictory: {name} appears twice (with and without "
                  "the 'detector.' prefix or a 'student_trunk.' wrapper)")
        out[name] = _shape(value)
    if not any(not k.startswith(TRACKER) for k in out):
        _fail(f"checkpoint holds only {len(shapes)} tracker.* tensors and no image model")
    return out


def _indices(keys, prefix):
    """Sorted integer indices N of keys ``prefix + 'N.'...``."""
    found = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _count(keys, prefix):
    """Tensors under ``prefix``, BatchNorm ``num_batches_tracked`` not counted (some exports
    drop them)."""
    return sum(1 for k in keys if k.startswith(prefix) and not k.endswith("num_batches_tracked"))


def _need(s, key, what):
    if key not in s:
        _fail(f"{what} incomplete: tensor {key} is missing")
    return s[key]


def _expect(s, key, shape, what):
    got = _need(s, key, what)
    if got != tuple(shape):
        _fail(f"{what} not recognised: {key} has shape {list(got)}, expected {list(shape)}")
    return got


def _expect_count(s, prefix, expected, what):
    n = _count(s, prefix)
    if n != expected:
        word = "incomplete" if n < expected else "not recognised"
        _fail(f"{what} {word}: {n} tensors under {prefix}* where the layout has {expected}")


# ---------------------------------------------------------------------------- image trunks


def _vit_h(s):
    what = "ViT-H image trunk"
    _expect(s, TRUNK + "patch_embed.proj.weight",
            (VIT_H["width"], 3, VIT_H["patch"], VIT_H["patch"]), what)
    _expect(s, TRUNK + "pos_embed", (1, VIT_H["pos_tokens"], VIT_H["width"]), what)
    blocks = _indices(s, TRUNK + "blocks.")
    if blocks != list(range(VIT_H["depth"])):
        _fail(f"{what} not recognised: blocks {_span(blocks)} where SAM3 has 0-{VIT_H['depth'] - 1}")
    w = VIT_H["width"]
    for i in blocks:
        _expect(s, f"{TRUNK}blocks.{i}.attn.qkv.weight", (3 * w, w), what)
        _expect(s, f"{TRUNK}blocks.{i}.mlp.fc1.weight", (VIT_H["mlp"], w), what)
    # 4 trunk-level tensors + 12 per block; the RoPE tables (freqs_cis) are buffers, optional
    n = sum(1 for k in s if k.startswith(TRUNK) and not k.endswith(".attn.freqs_cis"))
    expected = 4 + 12 * VIT_H["depth"]
    if n != expected:
        _fail(f"{what} {'incomplete' if n < expected else 'not recognised'}: {n} tensors "
              f"under {TRUNK}* where SAM3 has {expected}")
    return {"backbone": "vit-h", "variant": None, "trunk_channels": w}


def _span(idx):
    return f"{idx[0]}-{idx[-1]}" if idx else "none"


def _repvit(s):
    stem = _need(s, STUDENT_SIGNATURE["repvit"], "RepViT image trunk")
    feats = len(_indices(s, STUDENT_BODY + "features."))
    for name, v in REPVIT.items():
        if stem == (v["stem"], 3, 3, 3) and feats == v["features"]:
            return name, v["out"], v["tensors"]
    _fail(f"RepViT image trunk not recognised: stem {list(stem)} with {feats} feature blocks "
          f"matches none of {', '.join(REPVIT)}")


def _tinyvit(s):
    stem = _need(s, STUDENT_SIGNATURE["tinyvit"], "TinyViT image trunk")
    dims = []
    for i in range(4):
        key = (f"{STUDENT_BODY}layers.{i}.blocks.0.conv3.c.weight" if i == 0
               else f"{STUDENT_BODY}layers.{i}.blocks.0.mlp.norm.weight")
        dims.append(_need(s, key, "TinyViT image trunk")[0])
    for name, v in TINYVIT.items():
        if tuple(dims) == v["dims"] and stem == (v["dims"][0] // 2, 3, 3, 3):
            return name, v["dims"][-1], v["tensors"]
    _fail(f"TinyViT image trunk not recognised: stage widths {dims} match none of "
          f"{', '.join(TINYVIT)}")


def _efficientvit(s):
    stem = _need(s, STUDENT_SIGNATURE["efficientvit"], "EfficientViT image trunk")
    stages = _indices(s, STUDENT_BODY + "stages.")
    ops = tuple(len(_indices(s, f"{STUDENT_BODY}stages.{i}.op_list.")) for i in stages)
    for name, v in EFFICIENTVIT.items():
        d = v["depths"]
        expected_ops = (d[1], d[2], d[3] + 1, d[4] + 1)
        if stem == (v["widths"][0], 3, 3, 3) and ops == expected_ops:
            return name, v["widths"][-1], v["tensors"]
    _fail(f"EfficientViT image trunk not recognised: stem {list(stem)} with {list(ops)} blocks "
          f"per stage matches none of {', '.join(EFFICIENTVIT)}")


def _student(s):
    kinds = [k for k, key in STUDENT_SIGNATURE.items() if key in s]
    if len(kinds) != 1:
        found = sorted({".".join(k[len(STUDENT_BODY):].split(".")[:2]) for k in s
                        if k.startswith(STUDENT_BODY)})[:4]
        _fail("student image trunk not recognised: "
              + (f"it mixes {' and '.join(PRETTY[k] for k in kinds)} layers" if kinds else
                 f"no RepViT/TinyViT/EfficientViT stem under {STUDENT_BODY}* (found {found})"))
    kind = kinds[0]
    variant, channels, tensors = {"repvit": _repvit, "tinyvit": _tinyvit,
                                  "efficientvit": _efficientvit}[kind](s)
    what = f"{PRETTY[kind]} {variant} image trunk"
    n = sum(1 for k in s if k.startswith(STUDENT_BODY) and not k.endswith("num_batches_tracked")
            and not k[len(STUDENT_BODY):].startswith(LEGACY_HEADS))
    if n != tensors:
        _fail(f"{what} {'incomplete' if n < tensors else 'not recognised'}: {n} tensors under "
              f"{STUDENT_BODY}* where the fork builds {tensors}")
    # projection head: 1x1 conv (no bias) -> BatchNorm -> GELU -> 3x3 conv, to 1024 channels
    h = STUDENT + "head."
    _expect(s, h + "0.weight", (EMBED_DIM, channels, 1, 1), what + " head")
    for p in ("weight", "bias", "running_mean", "running_var"):
        _expect(s, f"{h}1.{p}", (EMBED_DIM,), what + " head")
    _expect(s, h + "3.weight", (EMBED_DIM, EMBED_DIM, 3, 3), what + " head")
    _expect(s, h + "3.bias", (EMBED_DIM,), what + " head")
    extra = sorted(k for k in s if k.startswith(STUDENT) and not k.startswith(STUDENT_BODY)
                   and k not in (h + "0.weight", h + "3.weight", h + "3.bias")
                   and not k.startswith(h + "1."))
    if extra:
        _fail(f"{what} not recognised: unexpected tensor {extra[0]}")
    return {"backbone": kind, "variant": variant, "trunk_channels": channels}


def neck_shapes(width=EMBED_DIM, d=D_MODEL, prefix=NECK):
    """{key: shape} of a ViTDet-style neck (the detector's ``convs`` or the tracker's
    ``sam2_convs``), levels 4x, 2x, 1x (level 3, the 0.5x one the model drops with scalp=1, is
    optional)."""
    s = {}

    def conv(name, cin, cout, k):
        s[f"{prefix}{name}.weight"] = (cout, cin, k, k)
        s[f"{prefix}{name}.bias"] = (cout,)

    def deconv(name, cin, cout):  # ConvTranspose2d weight is [in, out, k, k]
        s[f"{prefix}{name}.weight"] = (cin, cout, 2, 2)
        s[f"{prefix}{name}.bias"] = (cout,)

    deconv("0.dconv_2x2_0", width, width // 2)
    deconv("0.dconv_2x2_1", width // 2, width // 4)
    conv("0.conv_1x1", width // 4, d, 1)
    conv("0.conv_3x3", d, d, 3)
    deconv("1.dconv_2x2", width, width // 2)
    conv("1.conv_1x1", width // 2, d, 1)
    conv("1.conv_3x3", d, d, 3)
    conv("2.conv_1x1", width, d, 1)
    conv("2.conv_3x3", d, d, 3)
    return s


def tracker_neck_shapes(d=D_MODEL):
    """{key: shape} of what the tracker neck graph needs beyond ``sam2_convs``: the mask decoder's
    projections of the two high-resolution levels and no_mem_embed."""
    md = TRACKER + "sam_mask_decoder."
    return {f"{md}conv_s0.weight": (d // 8, d, 1, 1), f"{md}conv_s0.bias": (d // 8,),
            f"{md}conv_s1.weight": (d // 4, d, 1, 1), f"{md}conv_s1.bias": (d // 4,),
            TRACKER + "no_mem_embed": (1, 1, d)}


def _interactive(s):
    """Whether the checkpoint holds SAM3's interactive predictor (what ``predict_inst`` uses):
    the tracker neck ``sam2_convs.{0,1,2}``, the SAM heads and ``no_mem_embed``. None of it: a
    detection-only model; all of it, well shaped: interactive; anything between: an error."""
    from npsam3.tracker.config import NECK_CONVS, check_weights, infer_config

    neck = {**neck_shapes(prefix=SAM2_NECK), **tracker_neck_shapes()}
    heads = {k[len(TRACKER):]: v for k, v in s.items()
             if k.startswith(TRACKER) and not k[len(TRACKER):].startswith(NECK_CONVS)
             and k != TRACKER + "no_mem_embed"}
    if not heads and not any(k in s for k in neck if k != TRACKER + "no_mem_embed"):
        return False  # (no_mem_embed alone is part of every tracker, video-only ones too)
    what = "interactive heads (sam2_convs, tracker.sam_*; --no-interactive converts without them)"
    missing = sorted(k for k in neck if k not in s)
    if missing:
        _fail(f"{what} incomplete: {len(missing)} missing, e.g. {', '.join(missing[:3])}")
    for key, shape in neck.items():
        _expect(s, key, shape, what)
    extra = sorted(k for k in s if k.startswith(SAM2_NECK) and k not in neck
                   and not k.startswith(SAM2_NECK + "3."))
    if extra:
        _fail(f"{what} not recognised: unexpected tensor {extra[0]}")
    check_weights(heads, infer_config(heads), "checkpoint")
    return True


# ---------------------------------------------------------------------------- text encoders


def _ve_text(s):
    what = "SAM3 (VE) text encoder"
    e = TEXT + "encoder."
    vocab, width = _need(s, e + "token_embedding.weight", what)
    ctx = _need(s, e + "positional_embedding", what)[0]
    layers = _indices(s, e + "transformer.resblocks.")
    if (vocab, width, len(layers)) != (VOCAB, VE["width"], VE["layers"]):
        _fail(f"{what} not recognised: width {width}, {len(layers)} layers, vocabulary {vocab} "
              f"(SAM3's is {VE['width']} wide with {VE['layers']} layers)")
    _expect(s, e + "positional_embedding", (ctx, width), what)
    _expect(s, TEXT + "resizer.weight", (D_MODEL, width), what)
    _expect(s, TEXT + "resizer.bias", (D_MODEL,), what)
    _expect_count(s, e, 5 + VE_BLOCK_TENSORS * VE["layers"], what)
    if ctx != VE["context_length"]:
        _fail(f"{what} not recognised: positional table of {ctx} tokens (SAM3's has "
              f"{VE['context_length']})")
    _only(s, TEXT, {e, TEXT + "resizer."}, what)
    return {"text_encoder": VE_TEXT, "text_encoder_names": (VE_TEXT,), "text_width": width,
            "text_layers": VE["layers"], "text_heads": VE["heads"], "text_causal": True,
            "pos_embed_len": ctx, "context_length": ctx, "context_length_flexible": False}


def _mobileclip(s, meta):
    what = "MobileCLIP text encoder"
    e = TEXT + "encoder."
    vocab, dim = _need(s, e + "embedding_layer.weight", what)
    table = _need(s, e + "positional_embedding.pos_embed.pos_embed", what)
    if vocab != VOCAB or len(table) != 4 or table[:2] != (1, 1) or table[3] != dim:
        _fail(f"{what} not recognised: token table {[vocab, dim]}, positional table {list(table)}")
    blocks = _indices(s, e + "transformer.")
    kinds = []
    for i in blocks:
        p = f"{e}transformer.{i}."
        if p + "pre_norm_mha.1.qkv_proj.weight" in s:
            kinds.append("attention")
        elif any(k.startswith(p + "token_mixer.") for k in s):
            kinds.append("repmixer")
        else:
            _fail(f"{what} not recognised: block {i} is neither attention nor RepMixer")
    n_attn = kinds.count("attention")
    repmixer = "repmixer" in kinds
    if repmixer and kinds != ["repmixer"] + ["attention"] * n_attn + ["repmixer"]:
        _fail(f"{what} not recognised: RepMixer blocks at {[i for i, k in enumerate(kinds) if k == 'repmixer']} "
              "(MobileCLIP-S0 has them first and last)")
    matches = [name for name, v in MOBILECLIP.items()
               if (v["dim"], v["attention_layers"], v["repmixer"]) == (dim, n_attn, repmixer)]
    if not matches:
        _fail(f"{what} not recognised: width {dim} with {n_attn} attention blocks"
              f"{' and RepMixer blocks' if repmixer else ''} matches none of {', '.join(MOBILECLIP)}")
    name = matches[0]
    ffn = int(math.ceil(dim * 4.0 / 16.0) * 16)
    for i, kind in zip(blocks, kinds):
        p = f"{e}transformer.{i}."
        if kind == "attention":
            _expect(s, p + "pre_norm_mha.1.qkv_proj.weight", (3 * dim, dim), what)
            _expect(s, p + "pre_norm_ffn.1.weight", (ffn, dim), what)
    expected = (ATTN_BLOCK_TENSORS * n_attn + REPMIXER_BLOCK_TENSORS * kinds.count("repmixer")
                + 4 + (e + "projection_layer" in s))  # token + position tables, final LN
    _expect_count(s, e, expected, f"{name} text encoder")
    _expect(s, e + "final_layer_norm.weight", (dim,), what)
    _expect(s, TEXT + "projector.weight", (D_MODEL, dim), what)
    _expect(s, TEXT + "projector.bias", (D_MODEL,), what)
    _only(s, TEXT, {e, TEXT + "projector."}, what)
    rows = table[2]
    ctx, flexible = rows, rows == MOBILECLIP_TABLE
    if meta:
        size = meta.get("text_pos_embed_table_size")
        if size is not None and int(size) != rows:
            _fail(f"checkpoint is contradictory: its meta says a positional table of {size} "
                  f"tokens, the table has {rows}")
        if meta.get("text_context_length") is not None:
            ctx = _context(int(meta["text_context_length"]), rows, "its meta's text_context_length")
            flexible = False
    return {"text_encoder": name, "text_encoder_names": MOBILECLIP[name]["names"],
            "text_width": dim, "text_layers": len(blocks), "text_heads": MOBILECLIP[name]["heads"],
            "text_causal": False, "pos_embed_len": rows, "context_length": ctx,
            "context_length_flexible": flexible}


def _context(ctx, rows, source):
    """A context length the fork can run with a positional table of ``rows`` tokens: the table's
    own length, or, for the 77-token MobileCLIP table, any shorter length (the fork slices the
    first rows, ``set_context_length``)."""
    if ctx == rows or (rows == MOBILECLIP_TABLE and 1 <= ctx < rows):
        return ctx
    _fail(f"{source} {ctx} contradicts the checkpoint, whose text positional table has {rows} "
          "tokens" + ("" if rows == MOBILECLIP_TABLE else f" (its context length is {rows})"))


def _only(s, prefix, allowed, what):
    extra = sorted(k for k in s if k.startswith(prefix) and not k.startswith(tuple(allowed)))
    if extra:
        _fail(f"{what} not recognised: unexpected tensor {extra[0]}")


# ---------------------------------------------------------------------------- public API


def detect_variant(shapes, meta=None, check_detector=True):
    """What a checkpoint is, from ``{key: shape}`` (shape tuples, or tensors/arrays with
    ``.shape``), keys with or without ``detector.``; ``tracker.*`` ignored.

    ``meta`` is the checkpoint's optional top-level ``"meta"`` entry (the fork's merge scripts
    write ``text_context_length`` / ``text_pos_embed_table_size`` there).

    Returns a dict: ``family``, ``backbone``, ``variant`` (fork ``model_name``; None for ViT-H),
    ``text_encoder`` (``"ve-text"`` or a fork ``text_encoder_type``), ``text_encoder_names``
    (every fork name with this exact layout), ``context_length``, ``pos_embed_len``,
    ``context_length_flexible`` (True when the positional table is MobileCLIP's 77-token one and
    nothing told the context length: any length <= 77 is then consistent, e.g. LiteText's 16/32),
    text/trunk dimensions, ``interactive`` (the checkpoint holds the tracker neck and SAM heads of
    the point/box predictor), and ``builder`` / ``builder_kwargs`` that rebuild the model with the
    fork. Raises Npsam3Error (one line) when the layout is unknown, incomplete or contradictory.
    """
    s = normalize_keys(shapes)
    if not any(k.startswith("backbone.vision_backbone.") for k in s):
        sam2 = ("image_encoder.", "sam_mask_decoder.", "memory_attention.", "sam_prompt_encoder.")
        hint = (" (it looks like a SAM2 checkpoint: image_encoder.*, sam_mask_decoder.*)"
                if any(k.startswith(sam2) for k in s) else
                f" (found e.g. {sorted(s)[0]})")
        _fail("not a SAM3-family checkpoint: no backbone.vision_backbone.* tensors" + hint)

    has_vit = any(k.startswith((TRUNK + "blocks.", TRUNK + "patch_embed.")) for k in s)
    has_student = any(k.startswith(STUDENT) for k in s)
    if has_vit and has_student:
        _fail("checkpoint is contradictory: it holds both a ViT-H trunk "
              f"({TRUNK}blocks.*) and a student trunk ({STUDENT}*)")
    if not (has_vit or has_student):
        _fail(f"image trunk not recognised: neither ViT-H ({TRUNK}blocks.*) nor a student "
              f"({STUDENT}*) tensors")
    out = _vit_h(s) if has_vit else _student(s)

    for key, shape in neck_shapes().items():
        _expect(s, key, shape, "image neck")
    neck_extra = sorted(k for k in s if k.startswith(NECK) and k not in neck_shapes()
                        and not k.startswith(NECK + "3."))
    if neck_extra:
        _fail(f"image neck not recognised: unexpected tensor {neck_extra[0]}")

    has_ve = any(k.startswith((TEXT + "resizer.", TEXT + "encoder.transformer.resblocks.",
                               TEXT + "encoder.token_embedding.")) for k in s)
    has_mc = any(k.startswith((TEXT + "projector.", TEXT + "encoder.embedding_layer.",
                               TEXT + "encoder.positional_embedding.pos_embed.")) for k in s)
    if has_ve and has_mc:
        _fail("checkpoint is contradictory: it holds both SAM3's VE text encoder "
              f"({TEXT}resizer) and a MobileCLIP one ({TEXT}projector)")
    if not (has_ve or has_mc):
        _fail(f"text encoder not recognised: no {TEXT}* tensors of SAM3's VE or of MobileCLIP")
    out.update(_ve_text(s) if has_ve else _mobileclip(s, meta))

    if check_detector:
        from npsam3.detector.config import check_weights, infer_config

        det = {k: v for k, v in s.items() if k.startswith(DETECTOR_PREFIXES)}
        if not det:
            _fail("checkpoint holds no detector (transformer.*, geometry_encoder.*, ...)")
        check_weights(det, infer_config(det), "checkpoint")

    out["interactive"] = _interactive(s)
    known = (TRUNK, NECK, SAM2_NECK, TEXT, TRACKER) + DETECTOR_PREFIXES
    unknown = sorted(k for k in s if not k.startswith(known))
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        _fail(f"checkpoint not recognised: unexpected tensor {unknown[0]}{more}")

    out["family"] = ("efficientsam3" if has_student else
                     "sam3" if out["text_encoder"] == VE_TEXT else "sam3-litetext")
    ignored = ["tracker.* of the video tracker"] if any(
        k.startswith(TRACKER) and not k.startswith(TRACKER_HEADS) for k in shapes) else []
    if any(k.startswith(tuple(STUDENT_BODY + h for h in LEGACY_HEADS)) for k in s):
        ignored.append(STUDENT_BODY + "{classifier,distill_head,norm_head,head}.* (ImageNet head)")
    out.update(embed_dim=EMBED_DIM, feat_size=FEAT_SIZE, resolution=RESOLUTION, d_model=D_MODEL,
               ignored=ignored)
    return _with_builder(out)


def _with_builder(d):
    """Add ``builder`` / ``builder_kwargs``: the fork call that builds this model."""
    d = dict(d)
    text = None if d["text_encoder"] == VE_TEXT else d["text_encoder"]
    if d["family"] == "sam3":
        d["builder"], kwargs = "build_sam3_image_model", {}
    elif d["family"] == "sam3-litetext":
        d["builder"] = "build_sam3_image_model"
        kwargs = {"text_encoder_type": text, "text_encoder_context_length": d["context_length"]}
    else:
        d["builder"] = "build_efficientsam3_image_model"
        kwargs = {"backbone_type": d["backbone"], "model_name": d["variant"],
                  "text_encoder_type": text}
        if text is not None:
            kwargs["text_encoder_context_length"] = d["context_length"]
    d["builder_kwargs"] = kwargs
    # the fork's EfficientSAM3 builder cuts the table to the context length BEFORE loading, its
    # LiteText builder after; a 77-token table with a shorter context must be cut after loading
    d["truncate_after_load"] = (text is not None and d["pos_embed_len"] == MOBILECLIP_TABLE
                                and d["context_length"] < MOBILECLIP_TABLE)
    d["text_causal"] = d["text_encoder"] in CAUSAL_TEXT or d["text_encoder"] == VE_TEXT
    return d


_FAMILY_ALIASES = {"sam3": "sam3", "sam3-litetext": "sam3-litetext", "litetext": "sam3-litetext",
                   "sam3-lite-text": "sam3-litetext", "efficientsam3": "efficientsam3",
                   "efficient-sam3": "efficientsam3"}
_BACKBONE_ALIASES = {"vit-h": "vit-h", "vith": "vit-h", "vit": "vit-h", "sam3": "vit-h",
                     "repvit": "repvit", "tinyvit": "tinyvit", "efficientvit": "efficientvit"}
_VE_ALIASES = ("ve-text", "ve", "vetext", "sam3")


def _norm_family(x):
    key = str(x).strip().lower().replace("_", "-").replace(" ", "-")
    if key not in _FAMILY_ALIASES:
        _fail(f"unknown family {x!r} (one of {', '.join(FAMILIES)})")
    return _FAMILY_ALIASES[key]


def _norm_backbone(x):
    key = str(x).strip().lower().replace("_", "").replace(" ", "")
    key = _BACKBONE_ALIASES.get(key, _BACKBONE_ALIASES.get(key.replace("-", ""), None))
    if key is None:
        _fail(f"unknown backbone {x!r} (one of {', '.join(BACKBONES)})")
    return key


def _norm_variant(x):
    """'m1_1', 'repvit_m1_1', 'RepViT-M1.1' -> 'm1.1'; 'tiny_vit_11m' -> '11m'; 'efficientvit_b1' -> 'b1'."""
    key = str(x).strip().lower()
    key = re.sub(r"^(rep[-_]?vit|tiny[-_]?vit|efficient[-_]?vit)[-_]?", "", key)
    key = re.sub(r"_224$", "", key)
    return re.sub(r"^(m\d)[_](\d)$", r"\1.\2", key)


def check_overrides(detected, family=None, backbone=None, variant=None, text_encoder=None,
                    context_length=None):
    """``detected`` (from detect_variant) with the user's flags applied; raises Npsam3Error when
    a flag contradicts the checkpoint. Flags may only fill in what the keys cannot tell: which of
    several same-layout text encoders it is (e.g. MobileCLIP-S1 vs MobileCLIP-B, the latter
    causal), and the context length when the positional table is MobileCLIP's 77-token one."""
    d = dict(detected)
    if family is not None and _norm_family(family) != d["family"]:
        _fail(f"--family {family} contradicts the checkpoint, which is {d['family']}")
    if backbone is not None and _norm_backbone(backbone) != d["backbone"]:
        _fail(f"--backbone {backbone} contradicts the checkpoint, whose image trunk is "
              f"{PRETTY[d['backbone']]}" + (f" {d['variant']}" if d["variant"] else ""))
    if variant is not None:
        if d["variant"] is None:
            _fail(f"--variant {variant} contradicts the checkpoint: its ViT-H trunk has no size variants")
        if _norm_variant(variant) != d["variant"]:
            _fail(f"--variant {variant} contradicts the checkpoint, whose image trunk is "
                  f"{PRETTY[d['backbone']]} {d['variant']}")
    if text_encoder is not None:
        flag = str(text_encoder).strip()
        if d["text_encoder"] == VE_TEXT:
            if flag.lower() not in _VE_ALIASES:
                _fail(f"--text-encoder {flag} contradicts the checkpoint, which holds SAM3's VE "
                      "text encoder")
        else:
            names = {n.lower(): n for n in d["text_encoder_names"]}
            if flag.lower() not in names:
                _fail(f"--text-encoder {flag} contradicts the checkpoint, whose text encoder has "
                      f"the {d['text_encoder']} layout (also built by: "
                      f"{', '.join(d['text_encoder_names'][1:]) or 'no other name'})")
            d["text_encoder"] = names[flag.lower()]
    if context_length is not None:
        try:
            ctx = int(context_length)
        except (TypeError, ValueError):
            _fail(f"--context-length {context_length!r} is not an integer")
        if d["context_length_flexible"]:
            d["context_length"] = _context(ctx, d["pos_embed_len"], "--context-length")
            d["context_length_flexible"] = False
        elif ctx != d["context_length"]:
            _fail(f"--context-length {ctx} contradicts the checkpoint, whose text context "
                  f"length is {d['context_length']}")
    return _with_builder(d)
