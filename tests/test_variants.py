"""npsam3_convert.variants: which SAM3-family model a checkpoint holds, from {key: shape} alone.

The fixtures are generated here from compact rules describing each architecture as the
EfficientSAM3 fork builds it (RepViT m0.9/m1.1/m2.3, TinyViT 5m/11m/21m, EfficientViT b0/b1/b2,
MobileCLIP-S0/S1/2-L text encoders) and as SAM3 builds it (ViT-H trunk, VE text encoder); the
rules were checked key for key against state dicts of random-weight models built with the fork.
The detector part comes from npsam3's own detector specification.
"""

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from npsam3_convert.variants import check_overrides, detect_variant
from npsam3.detector.config import BUILDER_DEFAULTS, weight_shapes
from npsam3.errors import Npsam3Error

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ building blocks


def bn(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,),
            f"{p}.running_var": (c,), f"{p}.num_batches_tracked": ()}


def conv_bn(p, cin, cout, k, groups=1):  # Conv2d(bias=False) + BatchNorm as `c` / `bn`
    return {f"{p}.c.weight": (cout, cin // groups, k, k), **bn(f"{p}.bn", cout)}


def linear(p, cin, cout):
    return {f"{p}.weight": (cout, cin), f"{p}.bias": (cout,)}


def ln(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def prefixed(prefix, d):
    return {prefix + k: v for k, v in d.items()}


def div8(v):
    n = max(8, int(v + 4) // 8 * 8)
    return n + 8 if n < 0.9 * v else n


# ------------------------------------------------------------------ student image trunks

# RepViT: (channels, stride-1 blocks) per stage; each stage after the first opens with a
# stride-2 block; squeeze-excite on every other stride-1 block, never on a stage's last one
# unless it is the final stage
REPVIT = {"m0.9": ((48, 3), (96, 3), (192, 15), (384, 2)),
          "m1.1": ((64, 3), (128, 3), (256, 13), (512, 2)),
          "m2.3": ((80, 7), (160, 7), (320, 35), (640, 2))}


def repvit(name):
    stages = REPVIT[name]
    c0 = stages[0][0]
    s = {**conv_bn("features.0.0", 3, c0 // 2, 3), **conv_bn("features.0.2", c0 // 2, c0, 3)}
    i, cin = 1, c0

    def channel_mixer(p, c):
        s.update(conv_bn(f"{p}.channel_mixer.m.0", c, 2 * c, 1))
        s.update(conv_bn(f"{p}.channel_mixer.m.2", 2 * c, c, 1))

    for si, (c, n) in enumerate(stages):
        final = si == len(stages) - 1
        if si:
            p = f"features.{i}"
            s.update(conv_bn(f"{p}.token_mixer.0", cin, cin, 3, groups=cin))
            s.update(conv_bn(f"{p}.token_mixer.2", cin, c, 1))
            channel_mixer(p, c)
            i += 1
        for j in range(n):
            p = f"features.{i}"
            s.update(conv_bn(f"{p}.token_mixer.0.conv", c, c, 3, groups=c))
            s.update({f"{p}.token_mixer.0.conv1.weight": (c, 1, 1, 1),
                      f"{p}.token_mixer.0.conv1.bias": (c,), **bn(f"{p}.token_mixer.0.bn", c)})
            if j % 2 == 0 and (final or j < n - 1):
                rd = div8(c / 4)
                s.update({f"{p}.token_mixer.1.fc1.weight": (rd, c, 1, 1),
                          f"{p}.token_mixer.1.fc1.bias": (rd,),
                          f"{p}.token_mixer.1.fc2.weight": (c, rd, 1, 1),
                          f"{p}.token_mixer.1.fc2.bias": (c,)})
            channel_mixer(p, c)
            i += 1
        cin = c
    return s, cin


TINYVIT = {"5m": ((64, 128, 160, 320), (2, 4, 5, 10)),
           "11m": ((64, 128, 256, 448), (2, 4, 8, 14)),
           "21m": ((96, 192, 384, 576), (3, 6, 12, 18))}


def tinyvit(name):
    dims, heads = TINYVIT[name]
    windows, depths = (7, 7, 14, 7), (2, 2, 6, 2)
    s = {**conv_bn("patch_embed.seq.0", 3, dims[0] // 2, 3),
         **conv_bn("patch_embed.seq.2", dims[0] // 2, dims[0], 3)}
    d = dims[0]
    for b in range(depths[0]):  # MBConv, expansion 4
        p = f"layers.0.blocks.{b}"
        s.update({**conv_bn(f"{p}.conv1", d, 4 * d, 1), **conv_bn(f"{p}.conv2", 4 * d, 4 * d, 3, 4 * d),
                  **conv_bn(f"{p}.conv3", 4 * d, d, 1)})
    for i in range(1, 4):
        d = dims[i]
        for b in range(depths[i]):
            p = f"layers.{i}.blocks.{b}"
            s.update({f"{p}.attn.attention_biases": (heads[i], windows[i] ** 2),
                      **ln(f"{p}.attn.norm", d), **linear(f"{p}.attn.qkv", d, 3 * d),
                      **linear(f"{p}.attn.proj", d, d), **ln(f"{p}.mlp.norm", d),
                      **linear(f"{p}.mlp.fc1", d, 4 * d), **linear(f"{p}.mlp.fc2", 4 * d, d),
                      **conv_bn(f"{p}.local_conv", d, d, 3, d)})
    for i in range(3):  # patch merging between stages
        p, a, b = f"layers.{i}.downsample", dims[i], dims[i + 1]
        s.update({**conv_bn(f"{p}.conv1", a, b, 1), **conv_bn(f"{p}.conv2", b, b, 3, b),
                  **conv_bn(f"{p}.conv3", b, b, 1)})
    return s, dims[-1]


EFFICIENTVIT = {"b0": ((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16),
                "b1": ((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16),
                "b2": ((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32)}


def efficientvit(name):
    widths, depths, dim = EFFICIENTVIT[name]

    def conv(p, cin, cout, k, groups=1, norm=True, bias=False):
        out = {f"{p}.conv.weight": (cout, cin // groups, k, k)}
        if bias:
            out[f"{p}.conv.bias"] = (cout,)
        return {**out, **(bn(f"{p}.norm", cout) if norm else {})}

    def mbconv(p, cin, cout, fused_bias):  # 1x1 expand x4 -> 3x3 depthwise -> 1x1 project
        h = 4 * cin
        return {**conv(f"{p}.inverted_conv", cin, h, 1, norm=not fused_bias, bias=fused_bias),
                **conv(f"{p}.depth_conv", h, h, 3, h, norm=not fused_bias, bias=fused_bias),
                **conv(f"{p}.point_conv", h, cout, 1)}

    w0 = widths[0]
    s = conv("input_stem.op_list.0", 3, w0, 3)
    for j in range(1, depths[0] + 1):
        s.update(conv(f"input_stem.op_list.{j}.main.depth_conv", w0, w0, 3, w0))
        s.update(conv(f"input_stem.op_list.{j}.main.point_conv", w0, w0, 1))
    cin = w0
    for st in (0, 1):
        w = widths[st + 1]
        for k in range(depths[st + 1]):
            s.update(mbconv(f"stages.{st}.op_list.{k}.main", cin if k == 0 else w, w, False))
        cin = w
    for st in (2, 3):
        w = widths[st + 1]
        s.update(mbconv(f"stages.{st}.op_list.0.main", cin, w, True))
        for k in range(1, depths[st + 1] + 1):
            p = f"stages.{st}.op_list.{k}"
            s.update({f"{p}.context_module.main.qkv.conv.weight": (3 * w, w, 1, 1),
                      f"{p}.context_module.main.aggreg.0.0.weight": (3 * w, 1, 5, 5),
                      f"{p}.context_module.main.aggreg.0.1.weight": (3 * w, dim, 1, 1),
                      f"{p}.context_module.main.proj.conv.weight": (w, 2 * w, 1, 1),
                      **bn(f"{p}.context_module.main.proj.norm", w),
                      **mbconv(f"{p}.local_module.main", w, w, True)})
        cin = w
    return s, widths[-1]


STUDENTS = {"repvit": repvit, "tinyvit": tinyvit, "efficientvit": efficientvit}
STUDENT_VARIANTS = [("repvit", v) for v in REPVIT] + [("tinyvit", v) for v in TINYVIT] + \
                   [("efficientvit", v) for v in EFFICIENTVIT]


def student_trunk(kind, name):
    body, channels = STUDENTS[kind](name)
    s = prefixed("backbone.vision_backbone.trunk.model.backbone.model.", body)
    h = "backbone.vision_backbone.trunk.model.head."
    s.update({h + "0.weight": (1024, channels, 1, 1), **bn(h + "1", 1024),
              h + "3.weight": (1024, 1024, 3, 3), h + "3.bias": (1024,)})
    return s


def vit_h():
    t = "backbone.vision_backbone.trunk."
    s = {t + "pos_embed": (1, 577, 1024), t + "patch_embed.proj.weight": (1024, 3, 14, 14),
         **ln(t + "ln_pre", 1024)}
    for i in range(32):
        p = f"{t}blocks.{i}."
        s.update({p + "attn.freqs_cis": (5184 if i in (7, 15, 23, 31) else 576, 32),
                  **ln(p + "norm1", 1024), **linear(p + "attn.qkv", 1024, 3072),
                  **linear(p + "attn.proj", 1024, 1024), **ln(p + "norm2", 1024),
                  **linear(p + "mlp.fc1", 1024, 4736), **linear(p + "mlp.fc2", 4736, 1024)})
    return s


def neck():
    n = "backbone.vision_backbone.convs."

    def conv(p, cin, cout, k):
        return {f"{n}{p}.weight": (cout, cin, k, k), f"{n}{p}.bias": (cout,)}

    def deconv(p, cin, cout):
        return {f"{n}{p}.weight": (cin, cout, 2, 2), f"{n}{p}.bias": (cout,)}

    return {**deconv("0.dconv_2x2_0", 1024, 512), **deconv("0.dconv_2x2_1", 512, 256),
            **conv("0.conv_1x1", 256, 256, 1), **conv("0.conv_3x3", 256, 256, 3),
            **deconv("1.dconv_2x2", 1024, 512), **conv("1.conv_1x1", 512, 256, 1),
            **conv("1.conv_3x3", 256, 256, 3), **conv("2.conv_1x1", 1024, 256, 1),
            **conv("2.conv_3x3", 256, 256, 3), **conv("3.conv_1x1", 1024, 256, 1),
            **conv("3.conv_3x3", 256, 256, 3)}


# ------------------------------------------------------------------ text encoders

MOBILECLIP = {"MobileCLIP-S0": (512, True), "MobileCLIP-S1": (512, False),
              "MobileCLIP2-L": (768, False)}


def mobileclip(name, table):
    dim, repmixer = MOBILECLIP[name]
    e = "backbone.language_backbone.encoder."
    s = {e + "projection_layer": (dim, dim), e + "embedding_layer.weight": (49408, dim),
         e + "positional_embedding.pos_embed.pos_embed": (1, 1, table, dim),
         **ln(e + "final_layer_norm", dim),
         **linear("backbone.language_backbone.projector", dim, 256)}
    kinds = ["rep"] + ["attn"] * 4 + ["rep"] if repmixer else ["attn"] * 12
    for i, kind in enumerate(kinds):
        p = f"{e}transformer.{i}."
        if kind == "attn":
            s.update({**ln(p + "pre_norm_mha.0", dim), **linear(p + "pre_norm_mha.1.qkv_proj", dim, 3 * dim),
                      **linear(p + "pre_norm_mha.1.out_proj", dim, dim), **ln(p + "pre_norm_ffn.0", dim),
                      **linear(p + "pre_norm_ffn.1", dim, 4 * dim), **linear(p + "pre_norm_ffn.4", 4 * dim, dim)})
        else:  # RepMixer block (not re-parameterised) with a depthwise-conv FFN, kernel 11
            m = p + "token_mixer."
            s.update({p + "layer_scale": (dim, 1, 1), m + "layer_scale": (dim, 1, 1),
                      **bn(m + "norm.rbr_skip", dim), **bn(m + "mixer.rbr_skip", dim),
                      m + "mixer.rbr_conv.0.conv.weight": (dim, 1, 1, 11),
                      **bn(m + "mixer.rbr_conv.0.bn", dim),
                      p + "convffn.conv.conv.weight": (dim, 1, 1, 11), **bn(p + "convffn.conv.bn", dim),
                      p + "convffn.fc1.weight": (4 * dim, dim, 1, 1), p + "convffn.fc1.bias": (4 * dim,),
                      p + "convffn.fc2.weight": (dim, 4 * dim, 1, 1), p + "convffn.fc2.bias": (dim,)})
    return s


def ve_text():
    e = "backbone.language_backbone.encoder."
    s = {e + "positional_embedding": (32, 1024), e + "text_projection": (1024, 512),
         e + "token_embedding.weight": (49408, 1024), **ln(e + "ln_final", 1024),
         **linear("backbone.language_backbone.resizer", 1024, 256)}
    for i in range(24):
        p = f"{e}transformer.resblocks.{i}."
        s.update({p + "attn.in_proj_weight": (3072, 1024), p + "attn.in_proj_bias": (3072,),
                  **linear(p + "attn.out_proj", 1024, 1024), **ln(p + "ln_1", 1024),
                  **ln(p + "ln_2", 1024), **linear(p + "mlp.c_fc", 1024, 4096),
                  **linear(p + "mlp.c_proj", 4096, 1024)})
    return s


PUBLISHED_DETECTOR = {**BUILDER_DEFAULTS, "d_model": 256, "num_queries": 200,
                      "dim_feedforward": 2048, "encoder_layers": 6, "decoder_layers": 6,
                      "geometry_layers": 3, "pixel_decoder_convs": 3, "scoring_mlp_dim": 2048,
                      "presence_token": True}


def detector():
    return weight_shapes(PUBLISHED_DETECTOR)


def checkpoint(trunk, text, prefix="detector.", tracker=True):
    """A published-style checkpoint's {key: shape}: detector.* image model (+ a few tracker.*)."""
    s = prefixed(prefix, {**trunk, **neck(), **text, **detector()})
    if tracker:
        s.update({"tracker.maskmem_tpos_enc": (7, 1, 1, 64), "tracker.no_mem_embed": (1, 1, 256)})
    return s


def sam3(tracker=True):
    return checkpoint(vit_h(), ve_text(), tracker=tracker)


def efficientsam3(kind="repvit", name="m1.1", text="MobileCLIP-S1", table=32):
    return checkpoint(student_trunk(kind, name), mobileclip(text, table))


def raises(match, fn, *args, **kwargs):
    with pytest.raises(Npsam3Error, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------ the fixtures themselves


def test_fixture_sizes_match_the_fork_built_models():
    """Tensor counts of models built with the fork (random weights), as recorded."""
    counts = {("repvit", "m0.9"): 699, ("repvit", "m1.1"): 645, ("repvit", "m2.3"): 1455,
              ("tinyvit", "5m"): 292, ("tinyvit", "11m"): 292, ("tinyvit", "21m"): 292,
              ("efficientvit", "b0"): 186, ("efficientvit", "b1"): 261, ("efficientvit", "b2"): 354}
    for (kind, name), n in counts.items():
        assert len(STUDENTS[kind](name)[0]) == n, (kind, name)
    assert len(detector()) == 397 and len(neck()) == 22
    assert len(mobileclip("MobileCLIP-S0", 32)) == 111 and len(mobileclip("MobileCLIP-S1", 32)) == 151
    assert len(mobileclip("MobileCLIP2-L", 77)) == 151
    assert len(vit_h()) == 420 and len(ve_text()) == 295
    assert len(sam3()) - 2 == 1134  # = PyPI sam3's Sam3Image state dict


# ------------------------------------------------------------------ recognition


@pytest.mark.parametrize("kind,name", STUDENT_VARIANTS)
@pytest.mark.parametrize("text", list(MOBILECLIP))
def test_every_efficientsam3_variant(kind, name, text):
    d = detect_variant(efficientsam3(kind, name, text, table=16))
    assert (d["family"], d["backbone"], d["variant"], d["text_encoder"]) == \
        ("efficientsam3", kind, name, text)
    assert (d["context_length"], d["pos_embed_len"], d["context_length_flexible"]) == (16, 16, False)
    assert d["builder"] == "build_efficientsam3_image_model"
    assert d["builder_kwargs"] == {"backbone_type": kind, "model_name": name,
                                   "text_encoder_type": text, "text_encoder_context_length": 16}
    assert d["trunk_channels"] == STUDENTS[kind](name)[1]
    assert not d["truncate_after_load"] and "tracker.* of the video tracker" in d["ignored"]
    assert d["interactive"] is False


@pytest.mark.parametrize("ctx", [16, 32, 77])
def test_context_length_is_the_positional_table(ctx):
    d = detect_variant(efficientsam3(table=ctx))
    assert d["context_length"] == ctx
    assert d["context_length_flexible"] == (ctx == 77)


def test_text_dimensions():
    s0 = detect_variant(efficientsam3(text="MobileCLIP-S0"))
    assert (s0["text_width"], s0["text_layers"], s0["text_heads"], s0["text_causal"]) == (512, 6, 8, False)
    big = detect_variant(efficientsam3(text="MobileCLIP2-L"))
    assert (big["text_width"], big["text_layers"], big["text_heads"]) == (768, 12, 12)
    assert "MobileCLIP2-S4" in big["text_encoder_names"]
    assert detect_variant(efficientsam3(text="MobileCLIP-S1"))["text_encoder_names"] == \
        ("MobileCLIP-S1", "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP-B")


def test_sam3():
    d = detect_variant(sam3())
    assert (d["family"], d["backbone"], d["variant"], d["text_encoder"]) == \
        ("sam3", "vit-h", None, "ve-text")
    assert (d["context_length"], d["text_width"], d["text_layers"], d["text_causal"]) == (32, 1024, 24, True)
    assert d["builder"] == "build_sam3_image_model" and d["builder_kwargs"] == {}


def test_sam3_without_prefix_and_without_rope_buffers():
    s = {k.removeprefix("detector."): v for k, v in sam3().items() if not k.endswith("freqs_cis")}
    assert detect_variant(s)["family"] == "sam3"


@pytest.mark.parametrize("text", list(MOBILECLIP))
def test_sam3_litetext_keeps_the_77_token_table(text):
    """Published LiteText checkpoints keep MobileCLIP's 77-token table; the 16/32 context is cut
    from it after loading, so only a flag (or the checkpoint's meta) can tell it."""
    d = detect_variant(checkpoint(vit_h(), mobileclip(text, 77)))
    assert (d["family"], d["backbone"], d["text_encoder"]) == ("sam3-litetext", "vit-h", text)
    assert d["context_length_flexible"] and d["context_length"] == 77
    r = check_overrides(d, context_length=16)
    assert r["context_length"] == 16 and r["truncate_after_load"] and not r["context_length_flexible"]
    assert r["builder"] == "build_sam3_image_model"
    assert r["builder_kwargs"] == {"text_encoder_type": text, "text_encoder_context_length": 16}


def test_meta_context_length():
    s = checkpoint(vit_h(), mobileclip("MobileCLIP-S0", 77))
    d = detect_variant(s, meta={"text_context_length": 32, "text_pos_embed_table_size": 77})
    assert d["context_length"] == 32 and not d["context_length_flexible"]
    raises("contradicts", check_overrides, d, context_length=16)
    raises("meta says a positional table of 32", detect_variant, s,
           meta={"text_pos_embed_table_size": 32})
    raises("text_context_length 16 contradicts", detect_variant, efficientsam3(table=32),
           meta={"text_context_length": 16})


def test_efficientsam3_with_ve_text_encoder():
    d = detect_variant(checkpoint(student_trunk("tinyvit", "5m"), ve_text()))
    assert (d["family"], d["text_encoder"]) == ("efficientsam3", "ve-text")
    assert d["builder_kwargs"] == {"backbone_type": "tinyvit", "model_name": "5m",
                                   "text_encoder_type": None}


def test_tolerated_extras():
    """Tracker, SAM2-style neck, the fork's student_trunk. wrapper and the ImageNet heads older
    student checkpoints carried are all ignored, as the fork's loader ignores them."""
    s = efficientsam3("repvit", "m0.9")
    body = "detector.backbone.vision_backbone.trunk.model.backbone.model."
    s = {k.replace(body, body + "student_trunk.") if "features.0." in k else k: v for k, v in s.items()}
    s.update({body + "classifier.classifier.l.weight": (1000, 384),
              **prefixed(body, bn("classifier.classifier.bn", 384))})
    d = detect_variant(s)
    assert (d["backbone"], d["variant"]) == ("repvit", "m0.9")
    assert any("ImageNet" in x for x in d["ignored"])
    t = efficientsam3("tinyvit", "21m")
    t.update({body + "norm_head.weight": (576,), body + "head.weight": (1000, 576)})
    assert detect_variant(t)["variant"] == "21m"


def test_values_may_be_tensors():
    class Fake:
        def __init__(self, shape):
            self.shape = shape

    s = {k: Fake(v) for k, v in efficientsam3("efficientvit", "b2").items()}
    assert detect_variant(s)["variant"] == "b2"


# ------------------------------------------------------------------ overrides


def test_overrides_that_agree():
    d = detect_variant(efficientsam3("repvit", "m1.1", "MobileCLIP-S1", 32))
    r = check_overrides(d, family="EfficientSAM3", backbone="RepViT", variant="m1_1",
                        text_encoder="mobileclip-s1", context_length=32)
    assert r["builder_kwargs"] == d["builder_kwargs"]
    for spelling in ("m1.1", "repvit_m1_1", "RepViT-M1.1"):
        check_overrides(d, variant=spelling)
    t = detect_variant(efficientsam3("tinyvit", "11m", "MobileCLIP-S0", 16))
    check_overrides(t, backbone="tiny_vit", variant="tiny_vit_11m", text_encoder="MobileCLIP-S0")
    e = detect_variant(efficientsam3("efficientvit", "b1"))
    check_overrides(e, backbone="efficient_vit", variant="efficientvit_b1")
    s = detect_variant(sam3())
    check_overrides(s, family="sam3", backbone="vit-h", text_encoder="ve-text", context_length=32)


def test_overrides_fill_in_what_keys_cannot_tell():
    d = detect_variant(efficientsam3(text="MobileCLIP-S1"))
    b = check_overrides(d, text_encoder="MobileCLIP-B")  # same layout, causal attention
    assert b["text_encoder"] == "MobileCLIP-B" and b["text_causal"]
    assert b["builder_kwargs"]["text_encoder_type"] == "MobileCLIP-B"
    assert check_overrides(d, text_encoder="MobileCLIP2-S2")["text_encoder"] == "MobileCLIP2-S2"
    flexible = detect_variant(efficientsam3(table=77))
    assert check_overrides(flexible, context_length=32)["truncate_after_load"]
    assert not detect_variant(efficientsam3(table=32))["truncate_after_load"]


@pytest.mark.parametrize("flag,match", [
    ({"family": "sam3"}, "--family sam3 contradicts the checkpoint, which is efficientsam3"),
    ({"family": "sam3-litetext"}, "--family"),
    ({"family": "sam4"}, "unknown family"),
    ({"backbone": "tinyvit"}, "--backbone tinyvit contradicts .* RepViT m1.1"),
    ({"backbone": "resnet"}, "unknown backbone"),
    ({"variant": "m2.3"}, "--variant m2.3 contradicts"),
    ({"text_encoder": "MobileCLIP-S0"}, "--text-encoder MobileCLIP-S0 contradicts .* MobileCLIP-S1 layout"),
    ({"text_encoder": "ve-text"}, "--text-encoder ve-text contradicts"),
    ({"context_length": 16}, "--context-length 16 contradicts .* 32"),
    ({"context_length": "many"}, "not an integer"),
])
def test_contradicting_override(flag, match):
    raises(match, check_overrides, detect_variant(efficientsam3()), **flag)


def test_contradicting_overrides_for_sam3_and_litetext():
    s = detect_variant(sam3())
    raises("no size variants", check_overrides, s, variant="m1.1")
    raises("VE text encoder", check_overrides, s, text_encoder="MobileCLIP-S1")
    raises("contradicts", check_overrides, s, context_length=16)
    lite = detect_variant(checkpoint(vit_h(), mobileclip("MobileCLIP2-L", 77)))
    raises("--context-length 78 contradicts", check_overrides, lite, context_length=78)
    raises("--context-length 0 contradicts", check_overrides, lite, context_length=0)
    raises("--family efficientsam3 contradicts", check_overrides, lite, family="efficientsam3")


# ------------------------------------------------------------------ bad inputs


def sam2_checkpoint():
    """Key layout of a SAM2 checkpoint (hand-written excerpt)."""
    s = {"image_encoder.trunk.pos_embed": (1, 144, 7, 7),
         "image_encoder.trunk.patch_embed.proj.weight": (144, 3, 7, 7),
         "maskmem_tpos_enc": (7, 1, 1, 64), "no_mem_embed": (1, 1, 256),
         "sam_prompt_encoder.point_embeddings.0.weight": (1, 256),
         "sam_mask_decoder.iou_token.weight": (1, 256),
         "memory_attention.layers.0.self_attn.q_proj.weight": (256, 256)}
    for i in range(4):
        s[f"image_encoder.neck.convs.{i}.conv.weight"] = (256, 144 * 2 ** i, 1, 1)
    return s


def test_sam2_checkpoint():
    raises("not a SAM3-family checkpoint.*SAM2", detect_variant, sam2_checkpoint())
    raises("not a SAM3-family", detect_variant, {"model." + k: v for k, v in sam2_checkpoint().items()})


def test_empty_and_tracker_only():
    raises("no tensors", detect_variant, {})
    raises("no tensors", detect_variant, [])
    raises("only 2 tracker", detect_variant,
           {"tracker.no_mem_embed": (1, 1, 256), "tracker.maskmem_tpos_enc": (7, 1, 1, 64)})
    raises("no tensor shape", detect_variant, {"detector.x": 3})


def drop(s, pattern):
    hit = [k for k in s if pattern in k]
    assert hit, pattern
    return {k: v for k, v in s.items() if k != hit[0]}


@pytest.mark.parametrize("pattern,match", [
    (".features.7.channel_mixer.m.0.c.weight", "RepViT m1.1 image trunk incomplete: 546 tensors"),
    ("trunk.model.head.3.bias", "head incomplete: tensor .*head.3.bias is missing"),
    ("convs.1.conv_3x3.weight", "image neck incomplete"),
    ("encoder.transformer.11.pre_norm_ffn.4.bias", "MobileCLIP-S1 text encoder incomplete: 148"),
    ("projector.weight", "incomplete: tensor backbone.language_backbone.projector.weight"),
    ("positional_embedding.pos_embed.pos_embed", "text encoder incomplete"),
    ("transformer.decoder.layers.5.linear2.bias", "1 missing: transformer.decoder.layers.5.linear2.bias"),
    ("dot_prod_scoring.hs_proj.weight", "dot_prod_scoring.hs_proj.weight"),
])
def test_truncated_key_set(pattern, match):
    raises(match, detect_variant, drop(efficientsam3(), pattern))


def test_truncated_everywhere():
    """Any single missing tensor of the image model is reported (spot-check every 37th)."""
    s = efficientsam3("tinyvit", "5m", "MobileCLIP-S0")
    keys = [k for k in s if not k.startswith("tracker.") and not k.endswith("num_batches_tracked")
            and "sam2_convs" not in k and "projection_layer" not in k and "freqs_cis" not in k
            and ".convs.3." not in k]
    for k in keys[::37]:
        with pytest.raises(Npsam3Error):
            detect_variant({x: v for x, v in s.items() if x != k})


def test_truncated_sam3():
    raises("ViT-H image trunk not recognised: blocks 0-30", detect_variant,
           {k: v for k, v in sam3().items() if ".blocks.31." not in k})
    raises("VE\\) text encoder incomplete", detect_variant,
           drop(sam3(), "resblocks.3.mlp.c_fc.bias"))
    raises("ViT-H image trunk incomplete", detect_variant, drop(sam3(), "blocks.3.norm2.bias"))


def test_contradictory_layouts():
    both_trunks = {**efficientsam3(), **prefixed("detector.", vit_h())}
    raises("both a ViT-H trunk .* and a student trunk", detect_variant, both_trunks)
    both_texts = {**efficientsam3(), **prefixed("detector.", ve_text())}
    raises("both SAM3's VE text encoder .* and a MobileCLIP one", detect_variant, both_texts)
    s = efficientsam3()
    twice = {**s, "backbone.language_backbone.projector.bias": (256,)}
    raises("appears twice", detect_variant, twice)
    mixed = {**efficientsam3("repvit", "m1.1"),
             **prefixed("detector.backbone.vision_backbone.trunk.model.backbone.model.",
                        efficientvit("b0")[0])}
    raises("mixes RepViT and EfficientViT", detect_variant, mixed)


def test_unknown_layouts():
    raises("unexpected tensor something.else", detect_variant,
           {**efficientsam3(), "detector.something.else": (3,)})
    # RepViT m1.0 exists in the fork's repvit.py but its builder does not accept it
    m10 = efficientsam3()
    m10["detector.backbone.vision_backbone.trunk.model.backbone.model.features.0.0.c.weight"] = (28, 3, 3, 3)
    raises("RepViT image trunk not recognised: stem \\[28, 3, 3, 3\\]", detect_variant, m10)
    wrong_head = dict(efficientsam3())
    wrong_head["detector.backbone.vision_backbone.trunk.model.head.0.weight"] = (1024, 384, 1, 1)
    raises("head not recognised: .*head.0.weight has shape \\[1024, 384, 1, 1\\]", detect_variant,
           wrong_head)
    wide = efficientsam3(text="MobileCLIP-S1")
    wide["detector.backbone.language_backbone.encoder.embedding_layer.weight"] = (49408, 640)
    raises("MobileCLIP text encoder not recognised", detect_variant, wide)
    no_text = {k: v for k, v in efficientsam3().items() if "language_backbone" not in k}
    raises("text encoder not recognised: no backbone.language_backbone", detect_variant, no_text)
    no_det = {k: v for k, v in efficientsam3().items() if ".transformer." not in k
              and "geometry_encoder" not in k and "segmentation_head" not in k
              and "dot_prod_scoring" not in k or "language_backbone" in k}
    raises("no detector", detect_variant, no_det)
    assert detect_variant(no_det, check_detector=False)["family"] == "efficientsam3"
    s0 = efficientsam3(text="MobileCLIP-S0")
    moved = {k.replace(".transformer.0.", ".transformer.9."): v for k, v in s0.items()}
    raises("RepMixer blocks at", detect_variant, moved)


def test_student_layouts_are_distinct():
    """No two variants share a signature (so detection can never pick the wrong one)."""
    seen = {}
    for (kind, name), text in itertools.product(STUDENT_VARIANTS, MOBILECLIP):
        d = detect_variant(efficientsam3(kind, name, text), check_detector=False)
        key = (d["backbone"], d["variant"], d["text_encoder"])
        assert key not in seen
        seen[key] = True
    assert len(seen) == 27


def test_module_does_not_import_torch():
    """variants.py is pure Python: loaded on its own it pulls in neither torch nor sam3."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('v', {str(ROOT / 'npsam3_convert' / 'variants.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'sam3'))\n"
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr or "torch imported"


def interactive_heads():
    """What a published checkpoint holds for predict_inst: the tracker neck and the SAM heads,
    next to video-only tracker tensors."""
    from npsam3.tracker.config import weight_shapes
    from npsam3_convert.variants import SAM2_NECK, neck_shapes, tracker_neck_shapes

    cfg = {"d_model": 256, "mlp_dim": 2048, "depth": 2, "downsample_rate": 2, "num_mask_tokens": 4,
           "mask_in_chans": 16, "iou_head_hidden_dim": 256}
    return {**prefixed("detector.", neck_shapes(prefix=SAM2_NECK)), **tracker_neck_shapes(),
            **prefixed("tracker.", weight_shapes(cfg)),
            "tracker.maskmem_backbone.mask_downsampler.encoder.0.weight": (4, 1, 3, 3)}


def test_interactive_heads_are_recognised():
    d = detect_variant({**sam3(), **interactive_heads()})
    assert d["interactive"] is True and d["family"] == "sam3"
    assert detect_variant({**efficientsam3(), **interactive_heads()})["interactive"] is True
    saved = {k.replace("tracker.", "detector.inst_interactive_predictor.model.", 1): v
             for k, v in interactive_heads().items()}  # a Sam3Image state_dict's names
    assert detect_variant({**sam3(tracker=False), **saved})["interactive"] is True


def test_incomplete_or_misshapen_interactive_heads():
    heads = interactive_heads()
    del heads["tracker.sam_mask_decoder.conv_s0.weight"]
    raises("interactive heads .* incomplete: 1 missing.*conv_s0.weight", detect_variant,
           {**sam3(), **heads})
    heads = interactive_heads()
    heads["tracker.sam_mask_decoder.mask_tokens.weight"] = (5, 256)
    raises("interactive SAM heads npsam3 expects", detect_variant, {**sam3(), **heads})
    lone = {"detector.backbone.vision_backbone.sam2_convs.0.conv_1x1.weight": (256, 256, 1, 1)}
    raises("--no-interactive converts without them", detect_variant, {**sam3(), **lone})


@pytest.mark.parametrize("key", ["detector.backbone.vision_backbone.interactive_convs.0.conv_1x1.weight",
                                 "detector.backbone.vision_backbone.propagation_convs.1.conv_3x3.bias",
                                 "tracker.model.interactive_sam_mask_decoder.iou_token.weight"])
def test_sam31_checkpoints_are_refused(key):
    raises("SAM 3.1 tensor .* not supported", detect_variant, {**sam3(), key: (256,)})
