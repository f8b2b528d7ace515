"""npsam3.kernels: onnxruntime's fused attention against the NumPy attention, the selection of the
kernel set (env, per model, per context), and the fall-back to NumPy when a kernel cannot run."""

import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest

import npsam3
from npsam3 import kernels, nn
from npsam3.onnx_graph import FLOAT, INT32, initializer, model, node, value_info

rng = np.random.default_rng(0)


def test_onnx_graph_bytes_are_a_valid_onnx_model():
    """The hand-written protobuf parses with the onnx package into the graph onnx.helper makes."""
    from onnx import TensorProto, helper

    ours = onnx.load_from_string(model(
        [node("MultiHeadAttention", ["q", "k", "v", "", "m"], ["o"], "com.microsoft", num_heads=8)],
        [value_info("q", FLOAT, [1, "nq", 256]), value_info("k", FLOAT, [1, "nk", 256]),
         value_info("v", FLOAT, [1, "nk", 256]), value_info("m", INT32, [1, "nk"])],
        [value_info("o", FLOAT, [1, "nq", 256])], {"": 17, "com.microsoft": 1}, name="g"))
    onnx.checker.check_model(ours)
    want = helper.make_graph(
        [helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "m"], ["o"],
                          domain="com.microsoft", num_heads=8)], "g",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, "nq", 256]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, "nk", 256]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, "nk", 256]),
         helper.make_tensor_value_info("m", TensorProto.INT32, [1, "nk"])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, "nq", 256])])
    assert ours.graph == want
    assert {(o.domain, o.version) for o in ours.opset_import} == {("", 17), ("com.microsoft", 1)}
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    conv = onnx.load_from_string(model(
        [node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [value_info("x", FLOAT, [1, 3, "h", "w"])], [value_info("y", FLOAT, [1, 4, "h", "w"])],
        {"": 17}, initializers=[initializer("w", w)]))
    onnx.checker.check_model(conv)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(conv.graph.initializer[0]), w)
    assert list(conv.graph.node[0].attribute[1].ints) == [1, 1, 1, 1]


@pytest.mark.parametrize("nq, nk, heads, bias, pad", [
    (5184, 37, 8, False, True),    # fusion encoder cross-attention to a padded prompt
    (201, 5184, 8, True, False),   # decoder cross-attention with the boxRPB bias
    (700, 700, 8, False, False),   # self-attention
    (40, 9, 4, True, True),        # bias and padding together
    (1, 1, 8, False, False),
])
def test_attention_kernel_matches_numpy(nq, nk, heads, bias, pad):
    e = 256 if heads == 8 else 32
    q, k, v = (rng.standard_normal((n, e), dtype=np.float32) for n in (nq, nk, nk))
    b = rng.standard_normal((heads, nq, nk), dtype=np.float32) if bias else None
    m = (np.arange(nk) >= nk // 2 + 1) if pad else None
    got = kernels.attention(q, k, v, heads, b, m)
    want = nn.attention_numpy(q, k, v, heads, b, m)
    assert got is not None and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("k, padding, size", [(3, 1, (144, 144)), (3, 1, (13, 7)), (7, 0, (11, 9))])
def test_conv2d_kernel_matches_numpy(k, padding, size):
    x = rng.standard_normal((16, *size), dtype=np.float32)
    w = rng.standard_normal((8, 16, k, k), dtype=np.float32) * 0.1
    b = rng.standard_normal(8, dtype=np.float32)
    got, want = kernels.conv2d(x, w, b, padding), nn.conv2d_numpy(x, w, b, padding)
    assert got is not None and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_selection_per_context_and_environment(monkeypatch):
    calls = []
    real = kernels.attention
    monkeypatch.setattr(kernels, "attention", lambda *a: calls.append(1) or real(*a))
    q = rng.standard_normal((20, 32), dtype=np.float32)
    with kernels.use("numpy"):
        assert kernels.selected() == "numpy"
        nn.attention(q, q, q, 4)
        with kernels.use(None):  # None keeps the enclosing choice
            nn.attention(q, q, q, 4)
    assert calls == []
    with kernels.use("onnxruntime"):
        nn.attention(q, q, q, 4)
    assert calls == [1]
    monkeypatch.delenv("NPSAM3_KERNELS", raising=False)
    assert kernels.selected() == "auto"
    monkeypatch.setenv("NPSAM3_KERNELS", "numpy")
    assert kernels.selected() == "numpy"
    monkeypatch.setenv("NPSAM3_KERNELS", "cuda")
    with pytest.raises(ValueError, match="kernels must be one of auto, onnxruntime, numpy"):
        kernels.selected()


@pytest.mark.parametrize("cpu_kernels", [("attention",), ("attention", "conv2d")])
def test_auto_takes_the_kernels_measured_faster_on_this_cpu(monkeypatch, cpu_kernels):
    """"auto" serves attention by onnxruntime everywhere, conv2d only where auto_kernels (the
    CPU's AVX-512) says; "onnxruntime" serves both, "numpy" neither."""
    calls = []
    for name in ("attention", "conv2d"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    monkeypatch.setattr(kernels, "auto_kernels", lambda: cpu_kernels)
    q = rng.standard_normal((20, 32), dtype=np.float32)
    p = {"c.weight": rng.standard_normal((4, 3, 3, 3), dtype=np.float32), "c.bias": np.zeros(4, np.float32)}
    for kernel_set, served in [("auto", cpu_kernels), ("onnxruntime", ("attention", "conv2d")),
                               ("numpy", ())]:
        calls.clear()
        with kernels.use(kernel_set):
            nn.attention(q, q, q, 4)
            nn.conv2d(q[:3].reshape(3, 4, 8), p, "c", padding=1)
        assert tuple(calls) == served, kernel_set


def test_models_choose_their_kernels(bundle):
    assert npsam3.load_model(bundle, kernels="numpy").detector.kernels == "numpy"
    assert npsam3.load_model(bundle).detector.kernels is None  # follows NPSAM3_KERNELS
    with pytest.raises(ValueError, match="kernels must be one of"):
        npsam3.load_model(bundle, kernels="fast")


def test_unavailable_kernel_falls_back_to_numpy_with_one_notice(monkeypatch):
    def no_op(model):
        raise RuntimeError("Could not find an implementation for MultiHeadAttention(1) node")

    monkeypatch.setattr(kernels, "_make_session", no_op)
    monkeypatch.setattr(kernels, "_sessions", {})
    monkeypatch.setattr(kernels, "_unavailable", {})
    q = rng.standard_normal((20, 32), dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught, kernels.use("onnxruntime"):
        warnings.simplefilter("always")
        for _ in range(3):
            out = nn.attention(q, q, q, 4)
    np.testing.assert_array_equal(out, nn.attention_numpy(q, q, q, 4))
    assert len(caught) == 1 and "NumPy attention serves instead" in str(caught[0].message)
    with warnings.catch_warnings(), kernels.use("onnxruntime"):
        warnings.simplefilter("ignore")
        line = kernels.describe()
    assert line.startswith("kernels (onnxruntime): none from onnxruntime")
    assert "NumPy attention: onnxruntime's attention kernel is unavailable here" in line


def test_runtime_needs_no_onnx_package():
    """The kernels build their graphs without the onnx package (not a runtime dependency)."""
    code = ("import sys\nsys.modules['onnx'] = None\nimport numpy as np\n"
            "import os\nos.environ['NPSAM3_KERNELS'] = 'onnxruntime'\n"
            "from npsam3 import kernels\nq = np.ones((5, 16), np.float32)\n"
            "assert kernels.attention(q, q, q, 2) is not None\nprint(kernels.describe())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "kernels (onnxruntime): attention, conv2d from" in r.stdout, r.stderr


TRIM_CHECK = """
import numpy as np
from npsam3 import kernels
q = np.random.default_rng(0).standard_normal((4096, 256), dtype=np.float32)
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
kernels.attention(q, q, q, 8)
kernels.trim_heap()
first = rss()
for _ in range(8):
    kernels.attention(q, q, q, 8)
kernels.trim_heap()
print(rss() - first)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_hands_back_what_large_attention_calls_freed():
    """Without malloc_trim, RSS grows by tens of MB over repeated fusion-encoder-sized calls (the
    freed workspace stays in onnxruntime's per-thread heaps); trimmed after them, it stays put."""
    grown = subprocess.run([sys.executable, "-c", TRIM_CHECK], capture_output=True, text=True,
                           check=True).stdout
    assert int(grown) < 20, f"RSS grew {grown.strip()} MiB over 8 attention calls"
