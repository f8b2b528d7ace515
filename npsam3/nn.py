"""NumPy primitives of the SAM3 detector, float32 throughout.

Weights live in a flat dict under the reference's own names (``p["linear1.weight"]``); the layer
functions take that dict and a name prefix so each call reads like its PyTorch counterpart.
Sequences are token-major ``[N, C]`` (batch size 1); feature maps are ``[C, H, W]``.

Speed: NumPy ufuncs run on one core and release the GIL, so the heavy functions here split their
work into one contiguous share per core and run the shares on a thread pool, with BLAS held to one
thread inside ``parallel_region()`` (the detector enters it once per call). Attention runs in
per-head query blocks small enough to stay in cache; no heads x N x N tensor is ever made.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from threadpoolctl import ThreadpoolController

from . import kernels

f32 = np.float32
LOG2E = f32(math.log2(math.e))

# --- threads -----------------------------------------------------------------------------------

_pool = None
_blas = None


def num_threads():
    """Worker threads: NPSAM3_NUM_THREADS, else the cores this process may run on."""
    return int(os.environ.get("NPSAM3_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))


@contextmanager
def parallel_region():
    """Hold BLAS to one thread (the thread pool provides the parallelism); restored on exit."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield


def parallel_for(fn, n, min_share=1):
    """Call fn(start, stop) on one contiguous share of range(n) per thread; returns when all are
    done (exceptions propagate). Runs inline for one thread or fewer than 2 * min_share items."""
    global _pool
    k = min(num_threads(), n // min_share)
    if k <= 1:
        return fn(0, n)
    if _pool is None or _pool._max_workers < k:
        _pool = ThreadPoolExecutor(max(k, num_threads()), thread_name_prefix="npsam3")
    bounds = np.linspace(0, n, k + 1).astype(int)
    for f in [_pool.submit(fn, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
        f.result()


# --- elementwise -------------------------------------------------------------------------------

def sigmoid(x):
    """Logistic function; exp(-|x|) keeps it overflow-free in float32."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def inverse_sigmoid(x, eps=1e-3):
    """sam3.model.model_misc.inverse_sigmoid: log(x / (1 - x)) with both clamped to >= eps."""
    x = np.clip(x, 0, 1)
    return np.log(np.maximum(x, f32(eps)) / np.maximum(1 - x, f32(eps)))


def relu(x):
    """max(x, 0) in place; a large contiguous x is split over threads."""
    if not x.flags.c_contiguous:
        return np.maximum(x, 0, out=x)
    flat = x.reshape(-1)

    def part(i, j):
        np.maximum(flat[i:j], 0, out=flat[i:j])
    parallel_for(part, len(flat), 1 << 18)
    return x


# --- layers over a weight dict -----------------------------------------------------------------

def matmul(a, b, bias=None):
    """a @ b (+ bias [N]) for 2-D a [M, K], b [K, N], split over threads along the longer of M, N."""
    m, n = a.shape[0], b.shape[1]
    out = np.empty((m, n), f32)

    def rows(i, j):
        np.matmul(a[i:j], b, out=out[i:j])
        if bias is not None:
            out[i:j] += bias

    def cols(i, j):
        out[:, i:j] = a @ b[:, i:j] if bias is None else a @ b[:, i:j] + bias[i:j]

    if m >= n:
        parallel_for(rows, m, 64)
    else:
        parallel_for(cols, n, 256)
    return out


def linear(x, p, name):
    """nn.Linear: [..., in] -> [..., out]."""
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    if x.ndim != 2:
        return x @ w.T + b
    return matmul(x, w.T, b)


def ffn(x, p, name):
    """linear2(relu(linear1(x))) of a transformer layer, [N, C] -> [N, C]."""
    return relu_mlp(x, p, [f"{name}.linear1", f"{name}.linear2"])


def relu_mlp(x, p, names):
    """The nn.Linear layers ``names`` with ReLU between, [..., in] -> [..., out]. Rows run in
    blocks (split over threads) small enough that every hidden activation of a block stays in
    cache (~2 MB), instead of a pass over memory per layer."""
    layers = [(p[f"{n}.weight"], p[f"{n}.bias"]) for n in names]
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    out = np.empty((len(x), layers[-1][0].shape[0]), f32)
    block = max(16, (1 << 19) // max(w.shape[0] for w, _ in layers))

    def rows(i, j):
        for a in range(i, j, block):
            h = x[a:min(a + block, j)]
            for k, (w, b) in enumerate(layers):
                h = h @ w.T
                h += b
                if k < len(layers) - 1:
                    np.maximum(h, 0, out=h)
            out[a:a + len(h)] = h
    parallel_for(rows, len(x), 64)
    return out.reshape(*shape[:-1], -1)


def layer_norm(x, p, name, eps=1e-5):
    """nn.LayerNorm over the last dimension; [N, C] inputs are split over threads by rows."""
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    out = np.empty(x.shape, f32)

    def rows(i, j):
        xc = x[i:j] - x[i:j].mean(-1, keepdims=True)
        var = np.mean(xc * xc, -1, keepdims=True)
        xc /= np.sqrt(var + f32(eps))
        xc *= w
        xc += b
        out[i:j] = xc
    if x.ndim == 2:
        parallel_for(rows, len(x), 256)
    else:
        rows(None, None)
    return out


def mlp(x, p, name, num_layers, residual=False, out_norm=None):
    """sam3 MLP: ReLU between ``num_layers`` linears, optional residual and output LayerNorm."""
    h = relu_mlp(x, p, [f"{name}.layers.{i}" for i in range(num_layers)])
    if residual:
        h = h + x
    if out_norm is not None:
        h = layer_norm(h, p, out_norm)
    return h


def group_norm(x, p, name, num_groups, eps=1e-5, out=None):
    """nn.GroupNorm on a [C, H, W] map; groups are split over threads. ``out`` (C-contiguous, x's
    shape) may be x itself, a map the caller owns: normalising in place spares a fresh map's
    page faults."""
    c = x.shape[0]
    g = x.reshape(num_groups, -1)
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    if out is None:
        out = np.empty(x.shape, f32)
    elif not out.flags.c_contiguous or out.shape != x.shape:
        raise ValueError(f"group_norm's out must be C-contiguous with shape {x.shape}")
    go = out.reshape(num_groups, -1)
    per = c // num_groups

    def groups(i, j):
        for k in range(i, j):
            y = go[k]
            np.subtract(g[k], g[k].mean(), out=y)
            std = np.sqrt(np.mean(np.square(y)) + f32(eps))
            y = y.reshape(per, -1)
            y *= (w[k * per:(k + 1) * per] / std)[:, None]
            y += b[k * per:(k + 1) * per, None]
    parallel_for(groups, num_groups)
    return out


def multi_head_attention(query, key, value, p, name, num_heads, attn_bias=None,
                         key_padding_mask=None):
    """nn.MultiheadAttention (need_weights=False): [Nq, E] x [Nk, E] -> [Nq, E].

    attn_bias: optional additive [heads, Nq, Nk]; key_padding_mask: optional bool [Nk], True = ignore.
    """
    e = query.shape[-1]
    w, b = p[f"{name}.in_proj_weight"], p[f"{name}.in_proj_bias"]
    q = matmul(query, w[:e].T, b[:e])
    if len(query) * num_heads < e:  # few queries (geometry encoder): cheaper to fold W_k, W_v
        out = attention_folded(q, key, value, w[e:2 * e], w[2 * e:], b[2 * e:], num_heads,
                               attn_bias, key_padding_mask)
    else:
        k = matmul(key, w[e:2 * e].T, b[e:2 * e])
        v = matmul(value, w[2 * e:].T, b[2 * e:])
        out = attention(q, k, v, num_heads, attn_bias, key_padding_mask)
    return linear(out, p, f"{name}.out_proj")


def _mask_bias(key_padding_mask):
    if key_padding_mask is None or not key_padding_mask.any():
        return None
    return np.where(key_padding_mask, f32(-np.inf), f32(0))


def attention(q, k, v, num_heads, attn_bias=None, key_padding_mask=None):
    """Scaled dot-product attention over heads, [Nq, E] x [Nk, E] -> [Nq, E]: onnxruntime's fused
    kernel where the selected kernels allow it (npsam3.kernels), else ``attention_numpy``.

    attn_bias: optional additive [heads, Nq, Nk]; key_padding_mask: optional bool [Nk], True = ignore.
    """
    if kernels.serves("attention"):
        out = kernels.attention(q, k, v, num_heads, attn_bias, key_padding_mask)
        if out is not None:
            return out
    return attention_numpy(q, k, v, num_heads, attn_bias, key_padding_mask)


def attention_numpy(q, k, v, num_heads, attn_bias=None, key_padding_mask=None, block=128):
    """Scaled dot-product attention over heads in NumPy, [Nq, E] x [Nk, E] -> [Nq, E].

    Work items are (head, block of queries); the scores of one item, [block, Nk], stay in cache.
    Softmax in base 2 (log2(e) folded into the query scale: exp2 is twice as fast as exp), and
    its denominators come from a column of ones appended to V.
    """
    nq, e = q.shape
    nk, hd = len(k), e // num_heads
    qh = (q * (LOG2E / f32(math.sqrt(hd)))).reshape(nq, num_heads, hd).transpose(1, 0, 2).copy()
    kh = k.reshape(nk, num_heads, hd).transpose(1, 2, 0).copy()  # [heads, hd, Nk]
    vh = np.ones((num_heads, nk, hd + 1), f32)
    vh[:, :, :hd] = v.reshape(nk, num_heads, hd).transpose(1, 0, 2)
    mask_bias = _mask_bias(key_padding_mask)
    out = np.empty((nq, e), f32)
    items = [(h, a) for h in range(num_heads) for a in range(0, nq, block)]

    def work(i, j):
        sc = np.empty((block, nk), f32)
        o = np.empty((block, hd + 1), f32)
        for h, a in items[i:j]:
            n = min(block, nq - a)
            s = sc[:n]
            np.matmul(qh[h, a:a + n], kh[h], out=s)
            if attn_bias is not None:
                s += attn_bias[h, a:a + n] * LOG2E
            if mask_bias is not None:
                s += mask_bias
            s -= s.max(1, keepdims=True)
            np.exp2(s, out=s)
            np.matmul(s, vh[h], out=o[:n])
            out[a:a + n, h * hd:(h + 1) * hd] = o[:n, :hd] / o[:n, hd:]
    parallel_for(work, len(items))
    return out


def attention_folded(q, key, value, wk, wv, bv, num_heads, attn_bias=None, key_padding_mask=None):
    """The same attention for few queries, without projecting every key and value:
    q.(W_k m + b_k) = (W_k^T q).m + const (the constant cancels in the softmax), and
    sum_j a_j (W_v m_j + b_v) = W_v (sum_j a_j m_j) + b_v. [Nq, E] x raw [Nk, E] inputs -> [Nq, E]."""
    nq, e = q.shape
    hd = e // num_heads
    qh = (q * (LOG2E / f32(math.sqrt(hd)))).reshape(nq, num_heads, hd)
    qk = np.einsum("qhd,hde->qhe", qh, wk.reshape(num_heads, hd, e)).reshape(-1, e)
    s = matmul(qk, key.T)  # [Nq * heads, Nk]
    if attn_bias is not None:
        s += attn_bias.transpose(1, 0, 2).reshape(s.shape) * LOG2E
    mask_bias = _mask_bias(key_padding_mask)
    if mask_bias is not None:
        s += mask_bias
    s -= s.max(1, keepdims=True)
    np.exp2(s, out=s)
    s /= s.sum(1, keepdims=True)
    ctx = (s @ value).reshape(nq, num_heads, e)
    return np.einsum("qhe,hde->qhd", ctx, wv.reshape(num_heads, hd, e)).reshape(nq, e) + bv


# --- convolution and resampling on [C, H, W] maps --------------------------------------------

def conv2d(x, p, name, padding=0):
    """nn.Conv2d, stride 1: [Ci, H, W] -> [Co, Ho, Wo]. A k x k kernel (k > 1) runs on
    onnxruntime's convolution where the selected kernels allow it (npsam3.kernels), else
    ``conv2d_numpy``; 1 x 1 is a matrix product."""
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    if w.shape[-1] > 1 and kernels.serves("conv2d"):
        out = kernels.conv2d(x, w, b, padding)
        if out is not None:
            return out
    return conv2d_numpy(x, w, b, padding)


def conv2d_numpy(x, w, b, padding=0):
    """nn.Conv2d with stride 1 in NumPy: [Ci, H, W] x weight [Co, Ci, k, k] -> [Co, Ho, Wo].

    A k x k kernel is k*k GEMMs on shifted views of the zero-padded input, flattened row-major with
    the padded width, so every shift is a contiguous slice (the wrap-around columns are cut). Output
    rows are split over threads and accumulated a few rows at a time, in cache; 3 x 3 with
    padding 1 on even sizes is Winograd F(2x2, 3x3).
    """
    co, ci, kh, kw = w.shape
    _, h, wd = x.shape
    if kh == kw == 3 and padding == 1 and h % 2 == 0 and wd % 2 == 0:
        return conv3x3_winograd(x, w, b)
    if kh == kw == 1 and padding == 0:
        out = matmul(w.reshape(co, ci), x.reshape(ci, -1))
        out += b[:, None]
        return out.reshape(co, h, wd)
    hp, wp = h + 2 * padding, wd + 2 * padding
    ho, wo = hp - kh + 1, wp - kw + 1
    xp = np.zeros((ci, hp + 1, wp), f32)  # one spare row keeps the last shifted slice in bounds
    xp[:, padding:padding + h, padding:padding + wd] = x
    flat = xp.reshape(ci, -1)
    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw, co, ci)
    offsets = [i * wp + j for i in range(kh) for j in range(kw)]
    out = np.empty((co, ho, wo), f32)
    step = max(1, (1 << 18) // (co * wp))  # rows per accumulation block: ~1 MB of output

    def rows(r0, r1):
        acc = np.empty((co, step * wp), f32)
        tmp = np.empty_like(acc)
        for ra in range(r0, r1, step):
            n = (min(ra + step, r1) - ra) * wp
            a, t = acc[:, :n], tmp[:, :n]
            for k, off in enumerate(offsets):
                src = flat[:, ra * wp + off:ra * wp + off + n]
                np.matmul(taps[k], src, out=a if k == 0 else t)
                if k:
                    a += t
            a += b[:, None]
            out[:, ra:ra + n // wp] = a.reshape(co, -1, wp)[:, :, :wo]
    parallel_for(rows, ho)
    return out


# Winograd F(2x2, 3x3): a 2x2 output tile from a 4x4 input tile with 16 multiplies instead of 36.
WINOGRAD_COLUMNS = 1024  # tiles per GEMM
WINOGRAD_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], f32)


def conv3x3_winograd(x, w, b):
    """3x3 convolution, stride 1, padding 1, of a [Ci, H, W] map with even H and W -> [Co, H, W].

    Winograd F(2x2, 3x3) (Lavin & Gray 2016): the kernel is transformed once (U = G g G^T), each
    4x4 input tile d with stride 2 as V = B^T d B, their 16 products become 16 GEMMs
    [Co, Ci] @ [Ci, tiles], and Y = A^T M A gives the 2x2 outputs: 2.25x fewer multiplies than the
    direct convolution, the same result up to float rounding. Bands of tile rows run on threads.
    """
    ci, h, wd = x.shape
    co = w.shape[0]
    th, tw = h // 2, wd // 2
    u = np.einsum("ik,ockl,jl->ijoc", WINOGRAD_G, w, WINOGRAD_G).reshape(16, co, ci).copy()
    xp = np.zeros((ci, h + 2, wd + 2), f32)
    xp[:, 1:-1, 1:-1] = x
    out = np.empty((co, h, wd), f32)
    band = max(1, WINOGRAD_COLUMNS // tw)  # tile rows per band

    def bands(t0, t1):
        v = np.empty((16, ci, band * tw), f32)
        m = np.empty((16, co, band * tw), f32)
        for a in range(t0, t1, band):
            n = min(band, t1 - a)
            rows = [xp[:, 2 * a + r:2 * a + r + 2 * n:2] for r in range(4)]  # [Ci, n, W+2]
            e = (rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3])
            for i, ei in enumerate(e):  # B^T d B, the column half
                c = [ei[:, :, k:k + wd:2] for k in range(4)]  # [Ci, n, W/2]
                vi = v[4 * i:4 * i + 4, :, :n * tw].reshape(4, ci, n, tw)
                np.subtract(c[0], c[2], out=vi[0])
                np.add(c[1], c[2], out=vi[1])
                np.subtract(c[2], c[1], out=vi[2])
                np.subtract(c[1], c[3], out=vi[3])
            for k in range(16):
                np.matmul(u[k], v[k, :, :n * tw], out=m[k, :, :n * tw])
            mk = m[:, :, :n * tw].reshape(4, 4, co, n, tw)
            p0 = mk[0] + mk[1] + mk[2]  # A^T M, rows
            p1 = mk[1] - mk[2] - mk[3]
            for i, pi in enumerate((p0, p1)):  # then columns: Y = A^T M A
                dst = out[:, 2 * a + i:2 * (a + n):2]
                np.add(pi[0] + pi[1], pi[2], out=dst[:, :, 0::2])
                np.subtract(pi[1] - pi[2], pi[3], out=dst[:, :, 1::2])
                dst += b[:, None, None]
    parallel_for(bands, th)
    return out


def upsample_add(cur, prev):
    """cur + F.interpolate(prev, cur.shape[-2:], mode="nearest") for [C, H, W] maps; an exact
    integer factor is a broadcast add of prev repeated along W, a few channels at a time (in
    cache), the channels split over threads."""
    (h, w), (ho, wo) = prev.shape[-2:], cur.shape[-2:]
    if ho % h or wo % w:
        return cur + interpolate_nearest(prev, (ho, wo))
    out = np.empty_like(cur)

    def channels(i, j):
        for a in range(i, j, 8):
            b = min(a + 8, j)
            wide = np.repeat(prev[a:b], wo // w, axis=-1)[:, :, None]  # [c, h, 1, Wo]
            np.add(cur[a:b].reshape(b - a, h, ho // h, wo), wide,
                   out=out[a:b].reshape(b - a, h, ho // h, wo))
    parallel_for(channels, len(cur))
    return out


def interpolate_nearest(x, size):
    """F.interpolate(mode="nearest") of [C, H, W] to size (Ho, Wo): source index floor(dst * in/out)."""
    (h, w), (ho, wo) = x.shape[-2:], size
    iy = np.minimum(np.floor(np.arange(ho, dtype=f32) * (f32(h) / f32(ho))).astype(np.int64), h - 1)
    ix = np.minimum(np.floor(np.arange(wo, dtype=f32) * (f32(w) / f32(wo))).astype(np.int64), w - 1)
    return x[..., iy[:, None], ix[None, :]]


def _linear_source_indices(n_in, n_out):
    """PyTorch's align_corners=False source indices and weights, in float32 like the reference."""
    scale = f32(n_in) / f32(n_out)
    # scale * (i + 0.5) - 0.5 rounded once, as the fused multiply-add of torch's CPU kernel
    src = np.maximum((np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(f32), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam1 = np.clip(src - i0.astype(f32), 0, 1).astype(f32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (1 - lam1).astype(f32), lam1


def interpolate_bilinear(x, size, rows=slice(None), cols=slice(None)):
    """F.interpolate(mode="bilinear", align_corners=False, antialias=False) of [..., H, W] to
    size (Ho, Wo); ``rows`` / ``cols`` (slices of the output) compute one window of the result."""
    (h, w), (ho, wo) = x.shape[-2:], size
    x0, x1, wx0, wx1 = (a[cols] for a in _linear_source_indices(w, wo))
    y0, y1, wy0, wy1 = (a[rows] for a in _linear_source_indices(h, ho))
    tmp = x[..., x0] * wx0 + x[..., x1] * wx1  # [..., H, Wo]
    return tmp[..., y0, :] * wy0[:, None] + tmp[..., y1, :] * wy1[:, None]


def bilinear_support(n_in, n_out, lo, hi):
    """The output indices [a, b) of an align_corners=False linear resize from n_in to n_out whose
    value depends on an input index in [lo, hi]: outside them, only other inputs contribute."""
    i0, i1, _, _ = _linear_source_indices(n_in, n_out)
    touched = np.flatnonzero((i1 >= lo) & (i0 <= hi))
    return (int(touched[0]), int(touched[-1]) + 1) if touched.size else (0, 0)


def _roi_axis_weights(start, size, pooled, n):
    """Per-bin bilinear weights [pooled, n] of torchvision's roi_align along one axis (aligned=False).

    Averaging the bin's samples commutes with the (separable) bilinear weights, so a whole ROI is
    A_y @ feature @ A_x^T.
    """
    size = max(size, f32(1))
    bin_size = f32(size / f32(pooled))
    grid = max(int(math.ceil(size / f32(pooled))), 1)
    # (start + p * bin) + (i + .5) * bin / grid, associated as in torchvision's kernel
    pos = ((f32(start) + np.arange(pooled, dtype=f32) * bin_size)[:, None]
           + (np.arange(grid, dtype=f32) + f32(0.5)) * bin_size / f32(grid)).reshape(-1)
    valid = (pos >= -1) & (pos <= n)
    pos = np.maximum(pos, 0)
    lo = pos.astype(np.int64)
    edge = lo >= n - 1
    lo = np.where(edge, n - 1, lo)
    hi = np.where(edge, n - 1, lo + 1)
    pos = np.where(edge, lo.astype(f32), pos)
    frac = pos - lo.astype(f32)
    a = np.zeros((pooled * grid, n), f32)
    rows = np.arange(pooled * grid)
    np.add.at(a, (rows, lo), np.where(valid, 1 - frac, 0).astype(f32))
    np.add.at(a, (rows, hi), np.where(valid, frac, 0).astype(f32))
    return a.reshape(pooled, grid, n).sum(1) / f32(grid), grid


def roi_align(feat, boxes_xyxy, output_size):
    """torchvision.ops.roi_align(feat[None], [boxes], output_size) with scale 1, adaptive
    sampling and aligned=False: [C, H, W] x [K, 4] (feature pixels) -> [K, C, S, S]."""
    _, h, w = feat.shape
    out = []
    for x0, y0, x1, y1 in boxes_xyxy.astype(f32):
        ay, _ = _roi_axis_weights(y0, f32(y1 - y0), output_size, h)
        ax, _ = _roi_axis_weights(x0, f32(x1 - x0), output_size, w)
        out.append(np.einsum("ph,chw,qw->cpq", ay, feat, ax, optimize=True))
    return np.stack(out).astype(f32)


def grid_sample_points(feat, xy):
    """F.grid_sample(bilinear, zeros padding, align_corners=False) at points: [C, H, W] x [P, 2]
    (x, y in [-1, 1]) -> [P, C]."""
    c, h, w = feat.shape
    ix = ((xy[:, 0] + 1) * w - 1) / 2
    iy = ((xy[:, 1] + 1) * h - 1) / 2
    x0, y0 = np.floor(ix), np.floor(iy)
    out = np.zeros((len(xy), c), f32)
    for dy in (0, 1):
        for dx in (0, 1):
            xs, ys = x0 + dx, y0 + dy
            wgt = (1 - np.abs(ix - xs)) * (1 - np.abs(iy - ys))
            inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
            xi = np.clip(xs, 0, w - 1).astype(np.int64)
            yi = np.clip(ys, 0, h - 1).astype(np.int64)
            out += np.where(inside, wgt, 0)[:, None].astype(f32) * feat[:, yi, xi].T
    return out


# --- sine position encodings -------------------------------------------------------------------

def _dim_t(num_feats, temperature=10000):
    i = np.arange(num_feats, dtype=f32)
    return (f32(temperature) ** (2 * np.floor(i / 2) / f32(num_feats))).astype(f32)


def _sin_cos(pos):
    """Interleave sin of even and cos of odd channels: [..., F] -> [..., F]."""
    return np.stack((np.sin(pos[..., 0::2]), np.cos(pos[..., 1::2])), -1).reshape(pos.shape)


def position_encoding_sine(h, w, num_pos_feats=256, temperature=10000):
    """PositionEmbeddingSine(normalize=True) of an h x w map -> [num_pos_feats, h, w] (y then x)."""
    scale = f32(2 * math.pi)
    y = np.arange(1, h + 1, dtype=f32) / (f32(h) + f32(1e-6)) * scale
    x = np.arange(1, w + 1, dtype=f32) / (f32(w) + f32(1e-6)) * scale
    dim_t = _dim_t(num_pos_feats // 2, temperature)
    pos_y = _sin_cos(y[:, None] / dim_t)  # [h, F]
    pos_x = _sin_cos(x[:, None] / dim_t)  # [w, F]
    f = num_pos_feats // 2
    return np.concatenate([np.broadcast_to(pos_y.T[:, :, None], (f, h, w)),
                           np.broadcast_to(pos_x.T[:, None, :], (f, h, w))], 0)


def encode_xy(x, y, num_pos_feats=256, temperature=10000):
    """PositionEmbeddingSine._encode_xy of normalised coordinates: [N], [N] -> two [N, F/2]."""
    scale = f32(2 * math.pi)
    dim_t = _dim_t(num_pos_feats // 2, temperature)
    return (_sin_cos((x * scale)[:, None] / dim_t), _sin_cos((y * scale)[:, None] / dim_t))


def gen_sineembed_for_position(pos, num_feats=256):
    """sam3 gen_sineembed_for_position of [N, 4] cxcywh boxes -> [N, 2 * num_feats] (y, x, w, h)."""
    scale = f32(2 * math.pi)
    dim_t = _dim_t(num_feats // 2)
    cx, cy, w, h = (_sin_cos((pos[:, i] * scale)[:, None] / dim_t) for i in range(4))
    return np.concatenate([cy, cx, w, h], -1)


def box_cxcywh_to_xyxy(b):
    cx, cy, w, h = np.moveaxis(b, -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


# --- primitives of the interactive SAM heads ---------------------------------------------------
# Kernels without threads of their own: the heads call them on cache-sized bands of a map from
# their own parallel_for (the transposed convolutions and norms here are local along rows).

# Abramowitz & Stegun 7.1.26, the approximation inside torch's vectorised CPU erf (and so its GELU):
# erfc(u) = t P(t) exp(-u^2) for u >= 0, t = 1 / (1 + p u); |error| <= 1.5e-7.
# Python floats: the arithmetic keeps the dtype of the array (float32 in gelu, float64 in erf).
ERF_P = 0.3275911
ERF_A = [1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592]
ELEMENTWISE_BLOCK = 1 << 16  # elements per block of gelu: in L2, and long enough ops for threads


def _horner(coefs, x):
    """c[0] x^n + c[1] x^(n-1) + ... + c[n] of an array x (a new array)."""
    acc = x * coefs[0]
    acc += coefs[1]
    for c in coefs[2:]:
        acc *= x
        acc += c
    return acc


def _scaled_erfc(u, s, c):
    """c erfc(s u) of an array u >= 0 (a new array of its dtype), s and c folded into the
    constants: t = 1 / (1 + p s u), c erfc(s u) = t (c P)(t) 2^(-log2(e) s^2 u^2)."""
    t = u * (ERF_P * s)
    t += 1
    np.reciprocal(t, out=t)
    q = _horner([c * a for a in ERF_A], t)
    q *= t
    e = u * u
    e *= -math.log2(math.e) * s * s
    q *= np.exp2(e, out=e)
    return q


def erf(x):
    """The error function of an array, evaluated in float64 (1 - erfc cancels near 0) -> float32."""
    q = _scaled_erfc(np.abs(x).astype(np.float64), 1.0, 1.0)
    return np.copysign(1 - q, x).astype(f32)


def gelu(x):
    """nn.GELU() (the exact erf form) of a float32 array, in place if it is contiguous (use the
    result): x/2 (1 + erf(x / sqrt 2)) = relu(x) - |x|/2 erfc(|x| / sqrt 2), no cancellation for
    x < 0."""
    flat = x.reshape(-1)
    for a in range(0, len(flat), ELEMENTWISE_BLOCK):
        xb = flat[a:a + ELEMENTWISE_BLOCK]
        ax = np.abs(xb)
        q = _scaled_erfc(ax, math.sqrt(0.5), 0.5)
        q *= ax
        np.maximum(xb, 0, out=xb)
        xb -= q
    return flat.reshape(x.shape)


def layer_norm_2d(x, p, name, eps=1e-6):
    """LayerNorm2d (sam3/sam/common.py): LayerNorm over axis 0 (channels) of [C, ...] (a new
    array); the channel means as GEMVs, the variance as a fused einsum."""
    c = len(x)
    flat = x.reshape(c, -1)
    average = np.full(c, 1 / c, f32)
    xc = flat - average @ flat
    var = np.einsum("ij,ij->j", xc, xc)
    var *= f32(1 / c)
    var += f32(eps)
    xc *= 1 / np.sqrt(var)
    xc *= p[f"{name}.weight"][:, None]
    xc += p[f"{name}.bias"][:, None]
    return xc.reshape(x.shape)


def conv2d_patch(x, p, name):
    """nn.Conv2d with stride = kernel size k, no padding: [Ci, H, W] -> [Co, H // k, W // k], one
    GEMM over the non-overlapping k x k patches."""
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    co, ci, k, _ = w.shape
    ho, wo = x.shape[1] // k, x.shape[2] // k
    patches = x[:, :ho * k, :wo * k].reshape(ci, ho, k, wo, k).transpose(0, 2, 4, 1, 3)
    out = w.reshape(co, -1) @ patches.reshape(ci * k * k, -1)
    out += b[:, None]
    return out.reshape(co, ho, wo)


def conv_transpose2d(x, p, name):
    """nn.ConvTranspose2d with stride = kernel size k, no padding: [Ci, H, W] -> [Co, kH, kW].
    The outputs never overlap: one GEMM [k*k*Co, Ci] @ [Ci, HW], then kernel tap (a, c) fills the
    pixels (k i + a, k j + c). Output rows k i .. k i + k - 1 depend on input row i alone."""
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    ci, co, k, _ = w.shape
    _, h, wd = x.shape
    taps = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1, ci) @ x.reshape(ci, -1)
    taps = taps.reshape(k, k, co, h, wd)
    out = np.empty((co, h, k, wd, k), f32)
    for a in range(k):
        for c in range(k):
            np.add(taps[a, c], b[:, None, None], out=out[:, :, a, :, c])
    return out.reshape(co, k * h, k * wd)
