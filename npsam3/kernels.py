"""Kernels: onnxruntime's CPU implementations of primitives NumPy has no fast form of, used the
way NumPy hands matmul to BLAS. Every model layer stays NumPy code over the weight dict; only the
primitive underneath changes, and its pure NumPy version in ``nn`` stays complete and selectable.

    attention  com.microsoft.MultiHeadAttention: fused, memory-bounded scaled-dot-product
               attention over heads (key padding mask or additive per-head bias).
    conv2d     Conv (k x k, k > 1): MLAS's blocked convolution. Against nn's Winograd F(2x2, 3x3)
               on the pixel decoder's 144^2 and 288^2 maps it measured 1.6x faster on an Intel
               CPU with AVX-512 and 1.3x slower on an AMD EPYC with AVX2 only.

Kernel sets (``NPSAM3_KERNELS``, ``load_model(..., kernels=...)``, ``npsam3 segment --kernels``):
"auto" (the default) takes each kernel where it measured faster: attention always, conv2d where
the CPU has AVX-512; "onnxruntime" takes every kernel; "numpy" none (the pure NumPy path). A
kernel that cannot run (an older onnxruntime) says so once and NumPy serves it instead. The
selection is per context (``use``), so two models may run side by side on different paths.

Each kernel is a one-node ONNX graph with dynamic sizes (a convolution's weights are in its
graph, so onnxruntime pre-packs them), made into an onnxruntime session once per process on
first use (under a lock; sessions are thread-safe). A session runs on
``nn.num_threads()`` threads that sleep, not spin, between calls, so its pool and npsam3's own
never compete for the cores, and without a memory arena (``session_options``): a kernel's
workspace is freed after each call instead of staying resident in one arena per session, and
after the fusion encoder, whose attention calls are large, glibc is asked to hand it back
(``trim_heap``).
"""

import contextlib
import ctypes
import contextvars
import functools
import os
import threading
import warnings

import numpy as np

KERNELS = ("auto", "onnxruntime", "numpy")
_selected = contextvars.ContextVar("npsam3_kernels", default=None)
_sessions = {}
_unavailable = {}
_lock = threading.Lock()


def check(name):
    """``name`` if it is a known kernel set, else a ValueError naming the choices."""
    if name not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {name!r}")
    return name


def selected():
    """The kernel set of the current context: set by ``use``, else NPSAM3_KERNELS, else auto."""
    return _selected.get() or check(os.environ.get("NPSAM3_KERNELS", "auto"))


def serves(primitive):
    """Whether onnxruntime's kernel serves ``primitive`` ("attention", "conv2d") in this context."""
    name = selected()
    return name == "onnxruntime" or (name == "auto" and primitive in auto_kernels())


@functools.cache
def auto_kernels():
    """The kernels "auto" takes on this CPU: attention, and conv2d where the CPU has AVX-512."""
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = "avx512f" in f.read().split()
    except OSError:  # not Linux: the measured case is unknown, keep NumPy's Winograd
        avx512 = False
    return ("attention", "conv2d") if avx512 else ("attention",)


@contextlib.contextmanager
def use(name):
    """Run the enclosed code with kernel set ``name`` (one of KERNELS; None: unchanged)."""
    token = _selected.set(check(name) if name else _selected.get())
    try:
        yield
    finally:
        _selected.reset(token)


def describe():
    """One line for ``npsam3 info``: which kernels run in this process, and why."""
    name = selected()
    if name == "numpy":
        return "kernels: NumPy only (NPSAM3_KERNELS=numpy)"
    q = np.zeros((1, 8), np.float32)
    if serves("attention"):  # run each served kernel once to know whether it works here
        attention(q, q, q, 1)
    if serves("conv2d"):
        conv2d(np.zeros((1, 2, 2), np.float32), np.zeros((1, 1, 3, 3), np.float32),
               np.zeros(1, np.float32), 1)
    import onnxruntime as ort

    working = [k for k in ("attention", "conv2d") if serves(k) and k not in _unavailable]
    line = f"kernels ({name}): {', '.join(working) or 'none'} from onnxruntime {ort.__version__}"
    if name == "auto" and not serves("conv2d"):
        line += "; NumPy conv2d (Winograd: measured faster than onnxruntime's on CPUs without AVX-512)"
    return line + "".join(f"; NumPy {k}: {why}" for k, why in _unavailable.items() if serves(k))


def _attention_graph(num_heads, extra):
    """MultiHeadAttention on [1, Nq, E] x [1, Nk, E] (dynamic Nq, Nk, E); ``extra`` adds the key
    padding mask (int32 [1, Nk], 1 = attend) or the additive bias ([1, heads, Nq, Nk])."""
    from .onnx_graph import FLOAT, INT32, model, node, value_info

    inputs = [value_info("query", FLOAT, [1, "nq", "e"]), value_info("key", FLOAT, [1, "nk", "e"]),
              value_info("value", FLOAT, [1, "nk", "e"])]
    names = ["query", "key", "value"]
    if extra == "mask":
        inputs.append(value_info("key_padding_mask", INT32, [1, "nk"]))
        names += ["", "key_padding_mask"]
    elif extra == "bias":
        inputs.append(value_info("attention_bias", FLOAT, [1, num_heads, "nq", "nk"]))
        names += ["", "", "attention_bias"]
    mha = node("MultiHeadAttention", names, ["output"], "com.microsoft", num_heads=num_heads)
    return model([mha], inputs, [value_info("output", FLOAT, [1, "nq", "e"])],
                 {"": 17, "com.microsoft": 1}, name="attention")


def _session(kernel, key, graph, anchor=None):
    """The onnxruntime session of ``kernel`` for ``key``, built once from ``graph()`` (the model
    bytes); None where the kernel cannot run here. ``anchor`` (the weights a key's id() refers
    to) is kept with the session, so that id cannot be reused by another array."""
    entry = _sessions.get((kernel, key))
    if entry is None and kernel not in _unavailable:
        with _lock:
            entry = _sessions.get((kernel, key))
            if entry is None and kernel not in _unavailable:
                try:
                    entry = _sessions[(kernel, key)] = (_make_session(graph()), anchor)
                except Exception as e:  # an onnxruntime without the op: use NumPy
                    _disable(kernel, e)
    return None if entry is None else entry[0]


def _run(kernel, session, feeds):
    """session.run's one output; None (and the kernel disabled) if it fails."""
    try:
        return session.run(None, feeds)[0]
    except Exception as e:  # e.g. an onnxruntime whose MultiHeadAttention lacks attention_bias
        _disable(kernel, e)
        return None


def session_options():
    """The options of every npsam3 onnxruntime session (kernels and the bundle's encoders):
    ``nn.num_threads()`` threads that sleep between calls, and no memory arena (an arena per
    session keeps each one's peak resident: SAM3's image encoder peaks ~3 GB lower without, the
    detector's kernels 150-200 MB; the speed measured the same)."""
    import onnxruntime as ort

    from .nn import num_threads

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = False
    return opts


def _make_session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])


def _disable(kernel, error):
    reason = f"onnxruntime's {kernel} kernel is unavailable here ({str(error).splitlines()[0][:120]})"
    _unavailable[kernel] = reason
    warnings.warn(f"{reason}; the NumPy {kernel} serves instead", stacklevel=4)


def attention(q, k, v, num_heads, attn_bias=None, key_padding_mask=None):
    """Scaled dot-product attention [Nq, E] x [Nk, E] -> [Nq, E] by onnxruntime, as
    ``nn.attention_numpy``; None when the kernel cannot run (the caller then uses NumPy).
    attn_bias: additive [heads, Nq, Nk]; key_padding_mask: bool [Nk], True = ignore (with a
    bias, it is added to the bias as -inf)."""
    feeds = {"query": q[None], "key": k[None], "value": v[None]}
    padded = key_padding_mask is not None and key_padding_mask.any()
    extra = "none"
    if attn_bias is not None:
        bias = np.where(key_padding_mask, np.float32(-np.inf), attn_bias) if padded else attn_bias
        extra, feeds["attention_bias"] = "bias", np.ascontiguousarray(bias, np.float32)[None]
    elif padded:
        extra, feeds["key_padding_mask"] = "mask", (~key_padding_mask).astype(np.int32)[None]
    sess = _session("attention", (num_heads, extra), lambda: _attention_graph(num_heads, extra))
    out = None if sess is None else _run("attention", sess, feeds)
    return None if out is None else out[0]


def trim_heap():
    """glibc's malloc_trim(0), for the end of a stage of large attention calls (the fusion
    encoder's): the workspace onnxruntime's threads freed stays in their per-thread heaps (about
    100 MB) unless handed back; measured to lower the detector's peak RSS by 100-150 MB. Once per
    stage, not per call: trimming after each of the fusion encoder's six calls made the stage
    4.5% slower (its next arrays faulted their pages in again) for the same peak. A no-op where
    the C library is not glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc
        return None


def _conv_graph(weight, bias, padding):
    """Conv of [1, Ci, H, W] (dynamic H, W) with the given weights, stride 1, zero padding."""
    from .onnx_graph import FLOAT, initializer, model, node, value_info

    co, ci, kh, kw = weight.shape
    conv = node("Conv", ["x", "weight", "bias"], ["y"], kernel_shape=[kh, kw], pads=[padding] * 4)
    return model([conv], [value_info("x", FLOAT, [1, ci, "h", "w"])],
                 [value_info("y", FLOAT, [1, co, "ho", "wo"])], {"": 17}, name="conv2d",
                 initializers=[initializer("weight", weight), initializer("bias", bias)])


def conv2d(x, weight, bias, padding):
    """nn.Conv2d with stride 1 of a [Ci, H, W] map by onnxruntime -> [Co, Ho, Wo]; None when
    the kernel cannot run (the caller then uses NumPy)."""
    sess = _session("conv2d", (id(weight), padding), lambda: _conv_graph(weight, bias, padding),
                    anchor=weight)
    out = None if sess is None else _run("conv2d", sess, {"x": np.ascontiguousarray(x)[None]})
    return None if out is None else out[0]
