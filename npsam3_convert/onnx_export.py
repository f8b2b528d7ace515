"""Export the image trunk, the two necks and the text encoder of a SAM3-family ``Sam3Image`` to
ONNX, and check the exported graphs in onnxruntime against PyTorch.

The image side is three graphs, so that each kind of call pays only for what it uses (each
neck is ~213 GFLOP at 1008 px):

- image trunk: normalised image ``[1, 3, R, R]`` float32 ("image") -> "vision_features"
  ``[1, 1024, R/14, R/14]``, the trunk's output (SAM3's ViT-H or an EfficientSAM3 student with
  its head and resize);
- detector neck: "vision_features" -> the FPN levels the detector uses ("backbone_fpn_0..2":
  ``[1, 256, 4R/14, ...]``, ``[1, 256, 2R/14, ...]``, ``[1, 256, R/14, R/14]``), i.e.
  ``model.backbone.forward_image(image)["backbone_fpn"]`` after scalp (the sine position
  encodings are not exported: npsam3 computes them);
- tracker neck (models with the interactive predictor): "vision_features" -> what
  ``predict_inst`` reads: "high_res_feats_0" ``[1, 32, 288, 288]`` (sam2_convs[0], then the mask
  decoder's conv_s0), "high_res_feats_1" ``[1, 64, 144, 144]`` (sam2_convs[1], conv_s1) and
  "image_embed" ``[1, 256, 72, 72]`` (sam2_convs[2] + no_mem_embed), as
  ``Sam3Processor.set_image`` and ``Sam3Image.predict_inst`` make them.

Text encoder: token ids ``[B, L]`` int64 ("input_ids", dynamic batch) -> "language_features"
``[L, B, 256]`` float32 and "language_mask" ``[B, L]`` bool (True = padding, id == 0), as
``model.backbone.forward_text`` returns them for the same tokens.

SAM3's ViT applies its 2-D rotary position embedding with complex tensors (``freqs_cis``,
``view_as_complex``), which ONNX cannot express; during the export the rotation is computed with
real cos/sin tensors instead (``real_rope``).
"""

import contextlib
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import parity

IMAGE_INPUT, TRUNK_OUTPUT = "image", "vision_features"
FPN_OUTPUTS = ("backbone_fpn_0", "backbone_fpn_1", "backbone_fpn_2")
TRACKER_NECK_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embed")
IMAGE_GRAPHS = {"image_trunk": "image_trunk.onnx", "detector_neck": "detector_neck.onnx",
                "tracker_neck": "tracker_neck.onnx"}
TEXT_INPUT = "input_ids"
TEXT_OUTPUTS = ("language_features", "language_mask")
ONNX_SIZE_LIMIT = 2**31 - 2**26  # weights above this go to external data: 2 GiB less a margin


def rotate_pairs(x, cos, sin):
    """Rotate consecutive channel pairs ``(x[2i], x[2i+1])`` of ``x`` ``[B, heads, L, D]`` by the
    angles whose cos/sin are ``[L, D/2]``: the real form of sam3's ``apply_rotary_enc`` (channel
    pair = real, imaginary part; multiplication by ``cos + i sin``)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    re, im = pairs.unbind(-1)
    rotated = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return rotated.flatten(3).type_as(x)


@contextlib.contextmanager
def real_rope(model):
    """Within the context, every RoPE attention of sam3's ViT (``sam3.model.vitdet.Attention``)
    in ``model`` rotates q and k with real cos/sin tensors taken from its ``freqs_cis``; the
    complex buffer is detached from the module so that no complex tensor reaches the exporter.
    Both are restored on exit."""
    from sam3.model.vitdet import Attention

    patched = [m for m in model.modules() if isinstance(m, Attention) and m.use_rope]
    saved = []
    try:
        for attn in patched:
            freqs_cis = attn.freqs_cis
            cos, sin = freqs_cis.real.contiguous(), freqs_cis.imag.contiguous()
            saved.append((attn, freqs_cis))
            del attn._buffers["freqs_cis"]
            attn._apply_rope = lambda q, k, cos=cos, sin=sin: (
                rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin))
        yield
    finally:
        for attn, freqs_cis in saved:
            attn.__dict__.pop("_apply_rope", None)
            attn.register_buffer("freqs_cis", freqs_cis)


class ImageTrunk(torch.nn.Module):
    """``[1, 3, R, R]`` normalised image -> the trunk's output ``[1, 1024, R/14, R/14]``, the
    input of both necks (Sam3DualViTDetNeck.forward's ``x``)."""

    def __init__(self, backbone):
        super().__init__()
        self.trunk = backbone.vision_backbone.trunk

    def forward(self, image):
        return self.trunk(image)[-1]


class DetectorNeck(torch.nn.Module):
    """Trunk output -> the detector's FPN levels after scalp (the neck's ``convs``)."""

    def __init__(self, backbone):
        super().__init__()
        self.convs = backbone.vision_backbone.convs
        self.levels = len(self.convs) - backbone.scalp

    def forward(self, vision_features):
        return tuple(self.convs[i](vision_features) for i in range(self.levels))


class TrackerNeck(torch.nn.Module):
    """Trunk output -> (high_res_feats_0, high_res_feats_1, image_embed) of predict_inst."""

    def __init__(self, model):
        super().__init__()
        tracker = model.inst_interactive_predictor.model
        self.sam2_convs = model.backbone.vision_backbone.sam2_convs
        self.conv_s0 = tracker.sam_mask_decoder.conv_s0
        self.conv_s1 = tracker.sam_mask_decoder.conv_s1
        self.no_mem_embed = tracker.no_mem_embed  # [1, 1, C]

    def forward(self, vision_features):
        fpn = [self.sam2_convs[i](vision_features) for i in range(3)]
        return (self.conv_s0(fpn[0]), self.conv_s1(fpn[1]),
                fpn[2] + self.no_mem_embed.reshape(1, -1, 1, 1))


class TextEncoder(torch.nn.Module):
    """``[B, L]`` int64 token ids -> (``[L, B, d_model]`` features, ``[B, L]`` bool padding mask)
    for already tokenised text: SAM3's ``VETextEncoder`` (transformer, then ``resizer``) or the
    EfficientSAM3 fork's MobileCLIP student (embedding, transformer, then ``projector``)."""

    def __init__(self, language_backbone):
        super().__init__()
        self.language_backbone = language_backbone

    def forward(self, input_ids):
        lb = self.language_backbone
        if hasattr(lb, "resizer"):
            _, text_memory = lb.encoder(input_ids)  # [B, L, width]
            features = lb.resizer(text_memory.transpose(0, 1))
        else:
            text_memory = lb.encoder(lb.encoder.forward_embedding(input_ids),
                                     return_all_tokens=True, input_is_embeddings=True)
            features = lb.projector(text_memory).transpose(0, 1)
        return features, input_ids == 0


def _export(module, args, path, input_names, output_names, opset, dynamic_axes=None):
    """TorchScript ONNX export of ``module`` to ``path``, then simplified (``_simplify``).
    ``path`` is one self-contained file when the weights fit under protobuf's 2 GiB limit;
    otherwise the weights go to one external-data file ``<path>.data`` beside it.
    Returns the files written."""
    import onnx_ir as ir

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        traced = Path(tmp) / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation warnings
            torch.onnx.export(module, args, str(traced), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        model = _simplify(ir.load(traced))
        weight_bytes = sum(t.const_value.nbytes for t in model.graph.initializers.values())
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        if weight_bytes < ONNX_SIZE_LIMIT:
            ir.save(model, path)
            return [path]
        ir.save(model, path, external_data=data.name)
        return [path, data]


def _simplify(model):
    """Fold what the TorchScript exporter leaves computed from the (static) input shapes (shape
    arithmetic, If nodes on constant conditions), so that the graph has static shapes where its
    input has; drop the initializers no node uses any more. Large constant subgraphs (the tiled
    position embedding) are left for onnxruntime to fold when it loads the model."""
    import onnx_ir as ir
    import onnxscript.optimizer

    with _keep_tiny_constants():
        onnxscript.optimizer.optimize(model)
    # the folded If nodes' branches still count as users in the IR: look at live nodes only
    graph = model.graph
    used = {v for node in ir.traversal.RecursiveGraphIterator(graph) for v in node.inputs}
    for name in [n for n, v in graph.initializers.items() if v not in used]:
        del graph.initializers[name]
    return model


@contextlib.contextmanager
def _keep_tiny_constants():
    """Leave out onnxscript's no-op rewrite rules while optimising: they treat a scalar within
    1e-8 of zero as zero, which turns EfficientViT's ``x + 1e-15`` into ``x`` and a 0/0 into NaN."""
    import onnxscript.rewriter as rewriter
    from onnxscript.rewriter.rules.common import _no_op

    saved = rewriter._DEFAULT_REWRITE_RULES
    no_op = set(_no_op.rules.rules)
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if r not in no_op)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


def export_image_graphs(model, folder, resolution, interactive, opset=17):
    """Export the image trunk, the detector neck and (``interactive``) the tracker neck to
    ``folder``/IMAGE_GRAPHS[...] at ``resolution``. Returns the files written (a graph over
    2 GB keeps its weights in ``<name>.data`` beside it)."""
    backbone = model.backbone
    neck = DetectorNeck(backbone).eval()
    if neck.levels != len(FPN_OUTPUTS):
        raise ValueError(f"the vision backbone gives {neck.levels} FPN levels after scalp, "
                         f"npsam3 expects {len(FPN_OUTPUTS)}")
    width = backbone.vision_backbone.trunk.channel_list[-1]
    image = torch.zeros(1, 3, resolution, resolution)
    x = torch.zeros(1, width, resolution // 14, resolution // 14)
    graphs = [(ImageTrunk(backbone), "image_trunk", image, [IMAGE_INPUT], [TRUNK_OUTPUT]),
              (neck, "detector_neck", x, [TRUNK_OUTPUT], FPN_OUTPUTS)]
    if interactive:
        graphs.append((TrackerNeck(model), "tracker_neck", x, [TRUNK_OUTPUT], TRACKER_NECK_OUTPUTS))
    files = []
    for module, name, arg, inputs, outputs in graphs:
        path = Path(folder) / IMAGE_GRAPHS[name]
        print(f"exporting the {name.replace('_', ' ')} ({_n_params(module) / 1e6:.1f}M parameters, "
              f"{resolution}x{resolution} px) to {path} ...", flush=True)
        start = time.perf_counter()
        with real_rope(module):
            written = _export(module.eval(), (arg,), path, inputs, outputs, opset)
        _report(written, start)
        files += written
    return files


def export_text_encoder(model, path, context_length, opset=17):
    """Export the text encoder from token ids to ONNX at ``path``: input "input_ids" ``[B, L]``
    int64 (L = ``context_length``, B dynamic), outputs "language_features" ``[L, B, 256]`` float32
    and "language_mask" ``[B, L]`` bool (True = padding). Returns the files written."""
    encoder = TextEncoder(model.backbone.language_backbone).eval()
    input_ids = torch.ones(2, context_length, dtype=torch.long)
    print(f"exporting the text encoder ({_n_params(encoder) / 1e6:.1f}M parameters, context "
          f"{context_length}) to {path} ...", flush=True)
    start = time.perf_counter()
    dynamic_axes = {TEXT_INPUT: {0: "batch"}, TEXT_OUTPUTS[0]: {1: "batch"},
                    TEXT_OUTPUTS[1]: {0: "batch"}}
    files = _export(encoder, (input_ids,), path, [TEXT_INPUT], TEXT_OUTPUTS, opset, dynamic_axes)
    _report(files, start)
    return files


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def _report(files, start):
    sizes = ", ".join(f"{Path(f).name} {Path(f).stat().st_size / 2**20:.1f} MiB" for f in files)
    print(f"  done in {time.perf_counter() - start:.1f} s: {sizes}", flush=True)


def ort_session(onnx_path):
    """An onnxruntime CPU session for ``onnx_path``. The CPU memory arena is off: with it, SAM3's
    image encoder at 1008 peaks at ~8.3 GB instead of ~5 GB (its global-attention matrices are
    1.7 GB each), at the same speed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def compare(actual, expected):
    """{"max_abs": max |actual - expected|, "max_rel": max_abs / max |expected|} (parity.compare)."""
    max_abs, max_rel = parity.compare(actual, expected)
    return {"max_abs": max_abs, "max_rel": max_rel}


def reference_image_features(model, image):
    """What the reference computes from a preprocessed image [1, 3, R, R], as NumPy: the trunk's
    "vision_features", the detector's three "backbone_fpn" levels and, for an interactive model,
    "high_res_feats" (two levels) and "image_embed" as Sam3Processor.set_image and
    Sam3Image.predict_inst make them."""
    image = torch.as_tensor(np.asarray(image, dtype=np.float32))
    with torch.inference_mode():
        out = model.backbone.forward_image(image)
        feats = {"vision_features": model.backbone.vision_backbone.trunk(image)[-1].numpy(),
                 "backbone_fpn": [f.numpy() for f in out["backbone_fpn"]]}
        if model.inst_interactive_predictor is not None:
            tracker = model.inst_interactive_predictor.model
            sam2 = out["sam2_backbone_out"]["backbone_fpn"]
            feats["high_res_feats"] = [tracker.sam_mask_decoder.conv_s0(sam2[0]).numpy(),
                                       tracker.sam_mask_decoder.conv_s1(sam2[1]).numpy()]
            feats["image_embed"] = (sam2[2] + tracker.no_mem_embed.reshape(1, -1, 1, 1)).numpy()
    return feats


def verify_image_graphs(model, folder, image, interactive):
    """Run the exported image graphs (trunk, then each neck on onnxruntime's trunk output) and
    the reference in PyTorch on ``image`` ``[1, 3, R, R]`` float32. Returns ``{output name:
    {"max_abs", "max_rel"}}`` (see ``compare``) for the trunk, the FPN levels and the tracker
    neck's outputs."""
    image = np.asarray(image, dtype=np.float32)
    want = reference_image_features(model, image)
    folder = Path(folder)
    (trunk,) = ort_session(folder / IMAGE_GRAPHS["image_trunk"]).run(None, {IMAGE_INPUT: image})
    errors = {TRUNK_OUTPUT: compare(trunk, want["vision_features"])}
    fpn = ort_session(folder / IMAGE_GRAPHS["detector_neck"]).run(None, {TRUNK_OUTPUT: trunk})
    errors.update({n: compare(a, e) for n, a, e in zip(FPN_OUTPUTS, fpn, want["backbone_fpn"])})
    if interactive:
        got = ort_session(folder / IMAGE_GRAPHS["tracker_neck"]).run(None, {TRUNK_OUTPUT: trunk})
        wanted = [*want["high_res_feats"], want["image_embed"]]
        errors.update({n: compare(a, e) for n, a, e in zip(TRACKER_NECK_OUTPUTS, got, wanted)})
    return errors


@contextlib.contextmanager
def _tokenizer_returning(language_backbone, input_ids):
    """Within the context the text encoder's tokenizer returns ``input_ids`` whatever the text."""
    tokenizer = language_backbone.tokenizer
    language_backbone.tokenizer = lambda texts, context_length: input_ids
    try:
        yield
    finally:
        language_backbone.tokenizer = tokenizer


def reference_text_encoding(model, input_ids):
    """``model.backbone.forward_text`` for already tokenised text ``input_ids`` ``[B, L]`` int64:
    (language_features ``[L, B, 256]``, language_mask ``[B, L]``) as NumPy arrays."""
    input_ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
    placeholders = [""] * input_ids.shape[0]
    with torch.inference_mode(), _tokenizer_returning(model.backbone.language_backbone, input_ids):
        out = model.backbone.forward_text(placeholders, device="cpu")
    return out["language_features"].numpy(), out["language_mask"].numpy()


def verify_text_encoder(model, onnx_path, input_ids):
    """Run the exported text encoder in onnxruntime and ``model.backbone.forward_text`` in PyTorch
    on ``input_ids`` ``[B, L]`` int64. Returns ``{output name: {"max_abs", "max_rel"}}`` (see
    ``compare``; for the bool mask max_abs 0 means identical)."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    expected = reference_text_encoding(model, input_ids)
    actual = ort_session(onnx_path).run(None, {TEXT_INPUT: input_ids})
    if actual[1].dtype != np.bool_:
        raise ValueError(f"language_mask is {actual[1].dtype}, expected bool")
    return {name: compare(a, e) for name, a, e in zip(TEXT_OUTPUTS, actual, expected)}
