"""Export the image and text encoders of a SAM3-family ``Sam3Image`` to ONNX, and check the
exported graphs in onnxruntime against PyTorch.

Image encoder: normalised image ``[1, 3, R, R]`` float32 ("image") -> the FPN levels the detector
uses ("backbone_fpn_0..2": ``[1, 256, 4R/14, 4R/14]``, ``[1, 256, 2R/14, 2R/14]``,
``[1, 256, R/14, R/14]``), i.e. ``model.backbone.forward_image(image)["backbone_fpn"]`` after scalp.
The sine position encodings are not exported (npsam3 computes them).

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

IMAGE_INPUT = "image"
IMAGE_OUTPUTS = ("backbone_fpn_0", "backbone_fpn_1", "backbone_fpn_2")
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


class ImageEncoder(torch.nn.Module):
    """``[1, 3, R, R]`` normalised image -> the backbone's FPN levels after scalp (tuple)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, image):
        return tuple(self.backbone.forward_image(image)["backbone_fpn"])


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


def export_image_encoder(model, path, resolution, opset=17):
    """Export ``model.backbone.forward_image`` (trunk + neck, after scalp) to ONNX at ``path``:
    input "image" ``[1, 3, resolution, resolution]`` float32, outputs ``IMAGE_OUTPUTS``.
    Returns the files written (the .onnx, plus ``<path>.data`` for models over 2 GB)."""
    backbone = model.backbone
    n_levels = len(backbone.vision_backbone.convs) - backbone.scalp
    if n_levels != len(IMAGE_OUTPUTS):
        raise ValueError(f"the vision backbone gives {n_levels} FPN levels after scalp, "
                         f"npsam3 expects {len(IMAGE_OUTPUTS)}")
    encoder = ImageEncoder(backbone).eval()
    image = torch.zeros(1, 3, resolution, resolution)
    print(f"exporting the image encoder ({_n_params(backbone.vision_backbone) / 1e6:.1f}M "
          f"parameters, {resolution}x{resolution}) to {path} ...", flush=True)
    start = time.perf_counter()
    with real_rope(encoder):
        files = _export(encoder, (image,), path, [IMAGE_INPUT], IMAGE_OUTPUTS, opset)
    _report(files, start)
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


def verify_image_encoder(model, onnx_path, image):
    """Run the exported image encoder in onnxruntime and ``model.backbone.forward_image`` in
    PyTorch on ``image`` ``[1, 3, R, R]`` float32 (NumPy or torch). Returns
    ``{output name: {"max_abs", "max_rel"}}`` (see ``compare``)."""
    image = torch.as_tensor(np.asarray(image, dtype=np.float32))
    with torch.inference_mode():
        expected = model.backbone.forward_image(image)["backbone_fpn"]
    actual = ort_session(onnx_path).run(None, {IMAGE_INPUT: image.numpy()})
    return {name: compare(a, e.numpy()) for name, a, e in zip(IMAGE_OUTPUTS, actual, expected)}


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
