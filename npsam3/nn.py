"""NumPy primitives of the SAM3 detector, float32 throughout.

Weights live in a flat dict under the reference's own names (``p["linear1.weight"]``); the layer
functions take that dict and a name prefix so each call reads like its PyTorch counterpart.
Sequences are token-major ``[N, C]`` (batch size 1); feature maps are ``[C, H, W]``.
"""

import math

import numpy as np

f32 = np.float32


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
    return np.maximum(x, 0, out=x)


# --- layers over a weight dict -----------------------------------------------------------------

def linear(x, p, name):
    """nn.Linear: [..., in] -> [..., out]."""
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def layer_norm(x, p, name, eps=1e-5):
    """nn.LayerNorm over the last dimension."""
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = np.mean(xc * xc, -1, keepdims=True)
    return xc / np.sqrt(var + f32(eps)) * p[f"{name}.weight"] + p[f"{name}.bias"]


def mlp(x, p, name, num_layers, residual=False, out_norm=None):
    """sam3 MLP: ReLU between ``num_layers`` linears, optional residual and output LayerNorm."""
    h = x
    for i in range(num_layers):
        h = linear(h, p, f"{name}.layers.{i}")
        if i < num_layers - 1:
            relu(h)
    if residual:
        h = h + x
    if out_norm is not None:
        h = layer_norm(h, p, out_norm)
    return h


def group_norm(x, p, name, num_groups, eps=1e-5):
    """nn.GroupNorm on a [C, H, W] map."""
    c = x.shape[0]
    g = x.reshape(num_groups, -1)
    mean = g.mean(-1, keepdims=True)
    gc = g - mean
    var = np.mean(gc * gc, -1, keepdims=True)
    y = (gc / np.sqrt(var + f32(eps))).reshape(x.shape)
    return y * p[f"{name}.weight"].reshape(c, 1, 1) + p[f"{name}.bias"].reshape(c, 1, 1)


def multi_head_attention(query, key, value, p, name, num_heads, attn_bias=None,
                         key_padding_mask=None):
    """nn.MultiheadAttention (need_weights=False): [Nq, E] x [Nk, E] -> [Nq, E].

    attn_bias: optional additive [heads, Nq, Nk]; key_padding_mask: optional bool [Nk], True = ignore.
    """
    e = query.shape[-1]
    w, b = p[f"{name}.in_proj_weight"], p[f"{name}.in_proj_bias"]
    q = query @ w[:e].T + b[:e]
    k = key @ w[e:2 * e].T + b[e:2 * e]
    v = value @ w[2 * e:].T + b[2 * e:]
    out = attention(q, k, v, num_heads, attn_bias, key_padding_mask)
    return linear(out, p, f"{name}.out_proj")


def attention(q, k, v, num_heads, attn_bias=None, key_padding_mask=None, block=512):
    """Scaled dot-product attention over heads, [Nq, E] x [Nk, E] -> [Nq, E].

    Queries are processed in blocks so the largest temporary is heads x block x Nk.
    """
    nq, e = q.shape
    nk = k.shape[0]
    hd = e // num_heads
    qh = (q * f32(1 / math.sqrt(hd))).reshape(nq, num_heads, hd).transpose(1, 0, 2)
    kh = k.reshape(nk, num_heads, hd).transpose(1, 2, 0)
    vh = v.reshape(nk, num_heads, hd).transpose(1, 0, 2)
    mask_bias = None
    if key_padding_mask is not None and key_padding_mask.any():
        mask_bias = np.where(key_padding_mask, f32(-np.inf), f32(0))
    out = np.empty((nq, num_heads, hd), f32)
    for s in range(0, nq, block):
        sc = qh[:, s:s + block] @ kh  # [heads, b, Nk]
        if attn_bias is not None:
            sc += attn_bias[:, s:s + block]
        if mask_bias is not None:
            sc += mask_bias
        sc -= sc.max(-1, keepdims=True)
        np.exp(sc, out=sc)
        o = sc @ vh
        o /= sc.sum(-1, keepdims=True)
        out[s:s + block] = o.transpose(1, 0, 2)
    return out.reshape(nq, e)


# --- convolution and resampling on [C, H, W] maps --------------------------------------------

def conv2d(x, p, name, padding=0):
    """nn.Conv2d, stride 1: [Ci, H, W] -> [Co, Ho, Wo].

    A k x k kernel is k*k GEMMs on shifted views of the zero-padded input, flattened row-major
    with the padded width, so every shift is a contiguous slice (the wrap-around columns are cut).
    """
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    co, ci, kh, kw = w.shape
    _, h, wd = x.shape
    if kh == kw == 1 and padding == 0:
        return (w.reshape(co, ci) @ x.reshape(ci, -1) + b[:, None]).reshape(co, h, wd)
    hp, wp = h + 2 * padding, wd + 2 * padding
    ho, wo = hp - kh + 1, wp - kw + 1
    xp = np.zeros((ci, hp + 1, wp), f32)  # one spare row keeps the last shifted slice in bounds
    xp[:, padding:padding + h, padding:padding + wd] = x
    flat = xp.reshape(ci, -1)
    out = np.zeros((co, ho * wp), f32)
    tmp = np.empty_like(out)
    for i in range(kh):
        for j in range(kw):
            off = i * wp + j
            np.matmul(w[:, :, i, j], flat[:, off:off + ho * wp], out=tmp)
            out += tmp
    return out.reshape(co, ho, wp)[:, :, :wo] + b[:, None, None]


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


def interpolate_bilinear(x, size):
    """F.interpolate(mode="bilinear", align_corners=False, antialias=False) of [..., H, W]."""
    (h, w), (ho, wo) = x.shape[-2:], size
    x0, x1, wx0, wx1 = _linear_source_indices(w, wo)
    y0, y1, wy0, wy1 = _linear_source_indices(h, ho)
    rows = x[..., x0] * wx0 + x[..., x1] * wx1  # [..., H, Wo]
    return rows[..., y0, :] * wy0[:, None] + rows[..., y1, :] * wy1[:, None]


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
