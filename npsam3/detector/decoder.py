"""TransformerDecoder (sam3/model/decoder.py): 200 learned queries and a presence token read the
encoder memory and the prompt; each layer refines the queries' boxes.

Weights under ``transformer.decoder.``. Eval mode: no DAC query duplication, dropout off.
"""

import numpy as np

from .. import nn

f32 = np.float32


def box_rpb_matrix(p, ref_boxes, feat_size):
    """_get_rpb_matrix with boxRPB="log": per-head attention bias [heads, 1 + Q, H*W] from the
    distance of every image token to the edges of each query's reference box. Row 0 is the
    presence token's, which has no box: zero."""
    h, w = feat_size
    q = len(ref_boxes)
    xyxy = nn.box_cxcywh_to_xyxy(ref_boxes)  # [Q, 4]
    deltas_y = (np.arange(h, dtype=f32) / f32(h))[None, :, None] - xyxy[:, None, 1::2]  # [Q, H, 2]
    deltas_x = (np.arange(w, dtype=f32) / f32(w))[None, :, None] - xyxy[:, None, 0::2]  # [Q, W, 2]

    def log_scale(d):  # normalise to [-8, 8], then signed log2(|d| + 1) / log2(8)
        d = d * f32(8)
        return np.sign(d) * np.log2(np.abs(d) + f32(1)) / f32(3)

    dy = nn.mlp(log_scale(deltas_y).reshape(-1, 2), p, "boxRPB_embed_y", 2).reshape(q, h, -1)
    dx = nn.mlp(log_scale(deltas_x).reshape(-1, 2), p, "boxRPB_embed_x", 2).reshape(q, w, -1)
    heads = dy.shape[-1]
    dy, dx = dy.transpose(2, 0, 1)[:, :, :, None], dx.transpose(2, 0, 1)[:, :, None, :]
    bias = np.empty((heads, 1 + q, h * w), f32)
    bias[:, 0] = 0

    def add(i, j):  # bias[k, 1 + q, y * w + x] = dy[k, q, y] + dx[k, q, x]
        np.add(dy[i:j], dx[i:j], out=bias[i:j, 1:].reshape(j - i, q, h, w))
    nn.parallel_for(add, heads)
    return bias


def decoder_layer(tgt, presence, query_pos, p, name, heads, prompt, prompt_mask, memory,
                  memory_pos, rpb):
    """TransformerDecoderLayer.forward (post-norm) with the presence token prepended to the queries.

    tgt, query_pos: [Q, C]; presence: [1, C]; rpb: [heads, 1 + Q, HW]. Returns (tgt, presence).
    """
    x = np.concatenate([presence, tgt], 0)
    pos = np.concatenate([np.zeros_like(presence), query_pos], 0)
    qk = x + pos
    x = nn.layer_norm(x + nn.multi_head_attention(qk, qk, x, p, f"{name}.self_attn", heads),
                      p, f"{name}.norm2")
    ca = nn.multi_head_attention(x + pos, prompt, prompt, p, f"{name}.ca_text", heads,
                                 key_padding_mask=prompt_mask)
    x = nn.layer_norm(x + ca, p, f"{name}.catext_norm")
    ca = nn.multi_head_attention(x + pos, memory + memory_pos, memory, p, f"{name}.cross_attn",
                                 heads, attn_bias=rpb)
    x = nn.layer_norm(x + ca, p, f"{name}.norm1")
    x = nn.layer_norm(x + nn.ffn(x, p, name), p, f"{name}.norm3")
    return x[1:], x[:1]


def transformer_decoder(p, cfg, memory, memory_pos, feat_size, prompt, prompt_mask):
    """TransformerDecoder.forward: memory [HW, C] with pos-enc, prompt [L, C] -> per layer:
    hs [layers, Q, C] (after the output norm), reference boxes [layers, Q, 4] (the input boxes of
    each layer, cxcywh in [0, 1]), presence logits [layers] (NOT clamped: the reference discards its
    clamp), and the final refined boxes [Q, 4]."""
    tgt = p["query_embed.weight"]
    ref = nn.sigmoid(p["reference_points.weight"])
    presence = p["presence_token.weight"]
    hs, refs, presence_logits = [], [], []
    for i in range(cfg["decoder_layers"]):
        refs.append(ref)
        query_pos = nn.mlp(nn.gen_sineembed_for_position(ref, cfg["d_model"]), p,
                           "ref_point_head", 2)
        rpb = box_rpb_matrix(p, ref, feat_size)
        tgt, presence = decoder_layer(tgt, presence, query_pos, p, f"layers.{i}", cfg["heads"],
                                      prompt, prompt_mask, memory, memory_pos, rpb)
        normed = nn.layer_norm(tgt, p, "norm")
        ref = nn.sigmoid(nn.mlp(normed, p, "bbox_embed", 3) + nn.inverse_sigmoid(ref))
        hs.append(normed)
        presence_logits.append(
            nn.mlp(nn.layer_norm(presence, p, "presence_token_out_norm"), p,
                   "presence_token_head", 3)[0, 0])
    return np.stack(hs), np.stack(refs), np.array(presence_logits, f32), ref
