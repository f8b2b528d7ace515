"""TwoWayTransformer (sam3/sam/transformer.py): the decoder tokens and the image embedding attend to
each other in TwoWayAttentionBlocks, then the tokens attend to the image once more.
Weights under ``sam_mask_decoder.transformer.``.

Batches broadcast as in NumPy: tokens [B, T, C]; the image side [B, N, C], or [1, N, C] while
every prompt set sees the same image (up to the first image-to-token attention), so the work on
it is done once for the batch.
"""

import math

import numpy as np

from .. import nn

f32 = np.float32
ROW_BLOCK = 512  # image tokens per block in the image-to-token attention


def _attention_plain(p, name, q, k, v, num_heads):
    q = nn.linear(q, p, f"{name}.q_proj")
    k = nn.linear(k, p, f"{name}.k_proj")
    v = nn.linear(v, p, f"{name}.v_proj")
    return nn.linear(nn.attention(q, k, v, num_heads), p, f"{name}.out_proj")


def _attention_few_queries(p, name, q, k, v, num_heads):
    """W_k and W_v act on the queries' side, as in nn.attention_folded (here internal_dim != C):
    q.(W_k m + b_k) = (W_k^T q).m + q.b_k, whose second term cancels in the softmax, and
    sum_j a_j (W_v m_j + b_v) = W_v (sum_j a_j m_j) + b_v."""
    wk, wv, bv = p[f"{name}.k_proj.weight"], p[f"{name}.v_proj.weight"], p[f"{name}.v_proj.bias"]
    internal, c = wk.shape
    hd = internal // num_heads
    qh = nn.linear(q, p, f"{name}.q_proj") * f32(nn.LOG2E / math.sqrt(hd))
    qk = np.einsum("qhd,hdc->qhc", qh.reshape(len(q), num_heads, hd),
                   wk.reshape(num_heads, hd, c)).reshape(-1, c)
    s = nn.matmul(qk, k.T)  # [Nq * heads, Nk]
    s -= s.max(1, keepdims=True)
    np.exp2(s, out=s)
    ctx = nn.matmul(s, v)
    ctx /= s.sum(1, keepdims=True)
    out = np.einsum("qhc,hdc->qhd", ctx.reshape(len(q), num_heads, c),
                    wv.reshape(num_heads, hd, c)).reshape(len(q), internal) + bv
    return nn.linear(out, p, f"{name}.out_proj")


def _attention_few_keys(p, name, q, k, v, num_heads):
    """W_q acts on the keys' side and W_out on the values': (W_q x + b_q).k_j = x.(W_q^T k_j) +
    b_q.k_j, and out_proj(concat_h sum_j a_hj v_hj) = sum_{h,j} a_hj (W_out,h v_hj) + b_out.
    So each query costs two GEMMs with heads * Nk columns; done in row blocks over threads."""
    wq, bq = p[f"{name}.q_proj.weight"], p[f"{name}.q_proj.bias"]
    wo, bo = p[f"{name}.out_proj.weight"], p[f"{name}.out_proj.bias"]
    internal, c = wq.shape
    hd, nk = internal // num_heads, len(k)
    kh = (nn.linear(k, p, f"{name}.k_proj") * f32(nn.LOG2E / math.sqrt(hd))).reshape(nk, num_heads, hd)
    vh = nn.linear(v, p, f"{name}.v_proj").reshape(nk, num_heads, hd)
    kq = np.einsum("khd,hdc->chk", kh, wq.reshape(num_heads, hd, c)).reshape(c, -1)
    kb = np.einsum("khd,hd->hk", kh, bq.reshape(num_heads, hd)).reshape(-1)
    vo = np.einsum("khd,chd->hkc", vh, wo.reshape(c, num_heads, hd)).reshape(-1, c)
    out = np.empty((len(q), c), f32)

    def rows(i, j):
        for a in range(i, j, ROW_BLOCK):
            s = q[a:min(a + ROW_BLOCK, j)] @ kq  # [rows, heads * Nk]
            s += kb
            sh = s.reshape(len(s), num_heads, nk)
            sh -= sh.max(2, keepdims=True)
            np.exp2(sh, out=sh)
            sh /= sh.sum(2, keepdims=True)
            np.matmul(s, vo, out=out[a:a + len(s)])
            out[a:a + len(s)] += bo
    nn.parallel_for(rows, len(q), 64)
    return out


def attention(p, name, q, k, v, num_heads):
    """SAM's Attention: q [Nq, C], k and v [Nk, C] -> [Nq, C]; q/k/v projections to internal_dim
    (C / downsample_rate), num_heads heads, SDPA's 1/sqrt(head_dim) scale, out_proj.

    When one side has few tokens (count x heads < internal_dim) its projections are folded into
    the other side's (exact algebra), which then needs none of its own: at the 72x72 image side
    this halves the FLOPs of every cross-attention."""
    internal = p[f"{name}.q_proj.weight"].shape[0]
    if len(q) * num_heads < internal:
        return _attention_few_queries(p, name, q, k, v, num_heads)
    if len(k) * num_heads < internal:
        return _attention_few_keys(p, name, q, k, v, num_heads)
    return _attention_plain(p, name, q, k, v, num_heads)


def batched_attention(p, name, q, k, v, num_heads):
    """attention() over broadcast batches: q [Bq, Nq, C], k and v [Bk, Nk, C] -> [B, Nq, C].
    Keys shared by the batch (Bk = 1): all B * Nq queries attend in one call."""
    if len(k) == 1:
        return attention(p, name, q.reshape(-1, q.shape[-1]), k[0], v[0], num_heads).reshape(q.shape)
    q = np.broadcast_to(q, (len(k), *q.shape[1:]))
    return np.stack([attention(p, name, qb, kb, vb, num_heads) for qb, kb, vb in zip(q, k, v)])


def _layer_norm(x, p, name):
    return nn.layer_norm(x.reshape(-1, x.shape[-1]), p, name).reshape(x.shape)


def mlp_block(p, name, x):
    """MLPBlock with ReLU: lin2(relu(lin1(x))) on [..., C]."""
    h = nn.relu(nn.linear(x.reshape(-1, x.shape[-1]), p, f"{name}.lin1"))
    return nn.linear(h, p, f"{name}.lin2").reshape(x.shape)


def two_way_attention_block(p, name, queries, keys, query_pe, key_pe, num_heads,
                            skip_first_layer_pe):
    """TwoWayAttentionBlock.forward: queries [B, T, C], keys [1 or B, N, C] -> (queries, keys).
    skip_first_layer_pe (layer 0): self-attention without PE and without residual."""
    if skip_first_layer_pe:
        queries = batched_attention(p, f"{name}.self_attn", queries, queries, queries, num_heads)
    else:
        q = queries + query_pe
        queries = queries + batched_attention(p, f"{name}.self_attn", q, q, queries, num_heads)
    queries = _layer_norm(queries, p, f"{name}.norm1")

    q = queries + query_pe
    k = keys + key_pe
    attn_out = batched_attention(p, f"{name}.cross_attn_token_to_image", q, k, keys, num_heads)
    queries = _layer_norm(queries + attn_out, p, f"{name}.norm2")

    queries = _layer_norm(queries + mlp_block(p, f"{name}.mlp", queries), p, f"{name}.norm3")

    q = queries + query_pe
    attn_out = batched_attention(p, f"{name}.cross_attn_image_to_token", k, q, queries, num_heads)
    keys = _layer_norm(keys + attn_out, p, f"{name}.norm4")
    return queries, keys


def two_way_transformer(p, image_embedding, image_pe, point_embedding, num_heads):
    """TwoWayTransformer.forward: image_embedding [1 or B, C, h, w], image_pe [1, C, h, w],
    point_embedding [B, T, C] -> queries [B, T, C], keys [B, h*w, C]."""
    def tokens(x):  # [B, C, h, w] -> [B, h*w, C]
        return np.ascontiguousarray(x.reshape(*x.shape[:2], -1).transpose(0, 2, 1))

    queries, keys, key_pe = point_embedding, tokens(image_embedding), tokens(image_pe)
    i = 0
    while f"layers.{i}.norm1.weight" in p:
        queries, keys = two_way_attention_block(p, f"layers.{i}", queries, keys, point_embedding,
                                                key_pe, num_heads, skip_first_layer_pe=i == 0)
        i += 1
    q = queries + point_embedding
    k = keys + key_pe
    attn_out = batched_attention(p, "final_attn_token_to_image", q, k, keys, num_heads)
    return _layer_norm(queries + attn_out, p, "norm_final_attn"), keys
