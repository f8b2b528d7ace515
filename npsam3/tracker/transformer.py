"""TwoWayTransformer (sam3/sam/transformer.py): the decoder tokens and the image embedding attend to
each other in TwoWayAttentionBlocks, then the tokens attend to the image once more.
Weights under ``sam_mask_decoder.transformer.``.

The image side is kept channel-major, [B, C, N] (N = h*w), as the image embedding arrives and as
the upscaling wants it: channel LayerNorms then reduce over rows, and the scores of the
image-to-token attention are [heads * T, N] with the few tokens on the slow axis. Batches
broadcast as in NumPy: tokens [B, T, C]; the image [B, C, N], or [1, C, N] while every prompt
set sees the same image (up to the first image-to-token attention): that work is done once.
"""

import math

import numpy as np

from .. import nn

f32 = np.float32
COLUMN_BLOCK = 256  # image tokens per block of the image-to-token attention and norm (in cache)
KEY_BLOCK = 1024  # image tokens per block of the token-to-image attention


def attention(p, name, q, k, v, num_heads):
    """SAM's Attention on token-major inputs: q [Nq, C], k and v [Nk, C] -> [Nq, C]. q/k/v
    projections to internal_dim (C / downsample_rate), num_heads heads, SDPA's 1/sqrt(head_dim)
    scale, out_proj."""
    q = nn.linear(q, p, f"{name}.q_proj")
    k = nn.linear(k, p, f"{name}.k_proj")
    v = nn.linear(v, p, f"{name}.v_proj")
    return nn.linear(nn.attention(q, k, v, num_heads), p, f"{name}.out_proj")


def _folded(p, name, num_heads, few):
    """Whether folding the projections of the side with ``few`` tokens into the other side
    (count x heads < internal_dim) costs fewer FLOPs than projecting all image tokens."""
    return few * num_heads < p[f"{name}.q_proj.weight"].shape[0]


def attention_to_image(p, name, q, k, v, num_heads):
    """Attention of tokens q [Nq, C] to the channel-major image k, v [C, N] -> [Nq, C].

    Folded for few queries, as nn.attention_folded (here internal_dim != C): q.(W_k m + b_k) =
    (W_k^T q).m + q.b_k, whose second term cancels in the softmax, and sum_j a_j (W_v m_j + b_v)
    = W_v (sum_j a_j m_j) + b_v: no image token is projected. Each thread takes a share of the
    image in column blocks with a running (online) softmax; the shares are merged in order."""
    if not _folded(p, name, num_heads, len(q)):
        return attention(p, name, q, k.T, v.T, num_heads)
    wk, wv, bv = p[f"{name}.k_proj.weight"], p[f"{name}.v_proj.weight"], p[f"{name}.v_proj.bias"]
    internal, c = wk.shape
    hd = internal // num_heads
    qh = nn.linear(q, p, f"{name}.q_proj") * f32(nn.LOG2E / math.sqrt(hd))
    qk = np.einsum("qhd,hdc->qhc", qh.reshape(len(q), num_heads, hd),
                   wk.reshape(num_heads, hd, c)).reshape(-1, c)  # [Nq * heads, C]
    shares = {}

    def cols(i, j):  # max, sum of exp2 and exp2-weighted sum of v over columns i..j
        m = np.full((len(qk), 1), -np.inf, f32)
        total, ctx = np.zeros((len(qk), 1), f32), np.zeros((len(qk), c), f32)
        for a in range(i, j, KEY_BLOCK):
            s = qk @ k[:, a:min(a + KEY_BLOCK, j)]
            m_new = np.maximum(m, s.max(1, keepdims=True))
            rescale = np.exp2(m - m_new)
            s -= m_new
            np.exp2(s, out=s)
            total = total * rescale + s.sum(1, keepdims=True)
            ctx *= rescale
            ctx += s @ v[:, a:a + s.shape[1]].T
            m = m_new
        shares[i] = m, total, ctx
    nn.parallel_for(cols, k.shape[1], KEY_BLOCK)
    parts = [shares[i] for i in sorted(shares)]
    m = np.max([mt for mt, _, _ in parts], 0)
    weights = [np.exp2(mt - m) for mt, _, _ in parts]
    ctx = sum(w * ct for w, (_, _, ct) in zip(weights, parts))
    ctx /= sum(w * tt for w, (_, tt, _) in zip(weights, parts))
    out = np.einsum("qhc,hdc->qhd", ctx.reshape(len(q), num_heads, c),
                    wv.reshape(num_heads, hd, c)).reshape(len(q), internal) + bv
    return nn.linear(out, p, f"{name}.out_proj")


def attention_from_image(p, name, k, v, num_heads):
    """SAM's Attention of the image to the tokens k, v [Nk, C], as a function of channel-major
    blocks of image queries: attend(x [C, n]) -> [C, n].

    Folded for few keys: W_q acts on the keys' side and out_proj on the values', (W_q x + b_q).k_j
    = x.(W_q^T k_j) + b_q.k_j and out_proj(concat_h sum_j a_hj v_hj) = sum_hj a_hj (W_o,h v_hj)
    + b_o: two GEMMs with heads * Nk rows per block. Scores are [heads, Nk, n]: the softmax
    reduces over the few keys along a slow axis."""
    wq, bq = p[f"{name}.q_proj.weight"], p[f"{name}.q_proj.bias"]
    wo, bo = p[f"{name}.out_proj.weight"], p[f"{name}.out_proj.bias"][:, None]
    internal, c = wq.shape
    hd, nk = internal // num_heads, len(k)
    kh = nn.linear(k, p, f"{name}.k_proj") * f32(nn.LOG2E / math.sqrt(hd))
    kh = kh.reshape(nk, num_heads, hd)
    vh = nn.linear(v, p, f"{name}.v_proj").reshape(nk, num_heads, hd)
    if _folded(p, name, num_heads, nk):
        kq = np.einsum("khd,hdc->hkc", kh, wq.reshape(num_heads, hd, c)).reshape(-1, c)
        kb = np.einsum("khd,hd->hk", kh, bq.reshape(num_heads, hd)).reshape(-1, 1)
        vo = np.einsum("khd,chd->chk", vh, wo.reshape(c, num_heads, hd)).reshape(c, -1)

        def scores(x):
            s = kq @ x
            s += kb
            return s.reshape(num_heads, nk, -1)

        def output(a):
            return vo @ a.reshape(vo.shape[1], -1) + bo
    else:
        kh, vh = kh.transpose(1, 0, 2), vh.transpose(1, 2, 0)  # [heads, Nk, hd], [heads, hd, Nk]

        def scores(x):
            return kh @ (wq @ x + bq[:, None]).reshape(num_heads, hd, -1)

        def output(a):
            return wo @ (vh @ a).reshape(internal, -1) + bo

    def attend(x):
        s = scores(x)
        s -= s.max(1, keepdims=True)
        np.exp2(s, out=s)
        s /= s.sum(1, keepdims=True)
        return output(s)
    return attend


def image_attends_tokens(p, name, keys, keys_pe, key_pe, q, queries, num_heads, out):
    """The block's "image embedding attending to tokens" and norm4: keys = norm4(keys +
    cross_attn_image_to_token(q=keys_pe, k=q, v=queries)) and keys + key_pe (the next
    attention's image keys), written to out [2, B, C, N] (which may be keys, keys_pe
    themselves). keys, keys_pe [1 or B, C, N], key_pe [1, C, N], q and queries [B, T, C].
    In column blocks over threads: each block is read once, then overwritten."""
    n = keys.shape[2]
    for i in range(len(q)):
        attend = attention_from_image(p, f"{name}.cross_attn_image_to_token", q[i], queries[i],
                                      num_heads)
        x, x_pe = keys[min(i, len(keys) - 1)], keys_pe[min(i, len(keys) - 1)]

        def cols(s, e):
            for a in range(s, e, COLUMN_BLOCK):
                blk = slice(a, min(a + COLUMN_BLOCK, e))
                y = attend(x_pe[:, blk])
                y += x[:, blk]
                y = nn.layer_norm_2d(y, p, f"{name}.norm4", 1e-5)
                out[0, i, :, blk] = y
                np.add(y, key_pe[0, :, blk], out=out[1, i, :, blk])
        nn.parallel_for(cols, n, COLUMN_BLOCK)
    return out[0], out[1]


def tokens_attend(fn, p, name, q, k, v, num_heads):
    """fn (attention or attention_to_image) over batches: token queries q [B, T, C], k and v
    [1 or B, ...]. When all share the keys the B * T queries attend in one call (attention is
    per query)."""
    if len(k) == 1:
        return fn(p, name, q.reshape(-1, q.shape[-1]), k[0], v[0], num_heads).reshape(q.shape)
    return np.stack([fn(p, name, *x, num_heads) for x in zip(q, k, v)])


def _token_norm(x, p, name):
    return nn.layer_norm(x.reshape(-1, x.shape[-1]), p, name).reshape(x.shape)


def mlp_block(p, name, x):
    """MLPBlock with ReLU: lin2(relu(lin1(x))) on [..., C]."""
    return nn.relu_mlp(x, p, [f"{name}.lin1", f"{name}.lin2"])


def two_way_attention_block(p, name, queries, keys, keys_pe, query_pe, key_pe, num_heads,
                            skip_first_layer_pe, out):
    """TwoWayAttentionBlock.forward: queries [B, T, C]; keys and keys_pe = keys + key_pe
    [1 or B, C, N] -> (queries, keys, keys + key_pe), the image side written to out [2, B, C, N].
    skip_first_layer_pe (layer 0): self-attention without PE and without residual."""
    if skip_first_layer_pe:
        queries = tokens_attend(attention, p, f"{name}.self_attn", queries, queries, queries,
                                num_heads)
    else:
        q = queries + query_pe
        queries = queries + tokens_attend(attention, p, f"{name}.self_attn", q, q, queries,
                                          num_heads)
    queries = _token_norm(queries, p, f"{name}.norm1")

    q = queries + query_pe
    attn_out = tokens_attend(attention_to_image, p, f"{name}.cross_attn_token_to_image", q,
                             keys_pe, keys, num_heads)
    queries = _token_norm(queries + attn_out, p, f"{name}.norm2")

    queries = _token_norm(queries + mlp_block(p, f"{name}.mlp", queries), p, f"{name}.norm3")

    q = queries + query_pe
    keys, keys_pe = image_attends_tokens(p, name, keys, keys_pe, key_pe, q, queries, num_heads,
                                         out)
    return queries, keys, keys_pe


def two_way_transformer(p, image_embedding, image_pe, point_embedding, num_heads):
    """TwoWayTransformer.forward: image_embedding [1 or B, C, h, w], image_pe [1, C, h, w],
    point_embedding [B, T, C] -> queries [B, T, C], keys [B, h*w, C] (a view of channel-major
    keys)."""
    keys = image_embedding.reshape(*image_embedding.shape[:2], -1)
    key_pe = image_pe.reshape(*image_pe.shape[:2], -1)
    keys_pe = keys + key_pe
    queries = point_embedding
    out = np.empty((2, len(queries), *keys.shape[1:]), f32)  # every layer's image side, in place
    i = 0
    while f"layers.{i}.norm1.weight" in p:
        queries, keys, keys_pe = two_way_attention_block(
            p, f"layers.{i}", queries, keys, keys_pe, point_embedding, key_pe, num_heads,
            skip_first_layer_pe=i == 0, out=out)
        i += 1
    q = queries + point_embedding
    attn_out = tokens_attend(attention_to_image, p, "final_attn_token_to_image", q, keys_pe, keys,
                             num_heads)
    return _token_norm(queries + attn_out, p, "norm_final_attn"), keys.transpose(0, 2, 1)
