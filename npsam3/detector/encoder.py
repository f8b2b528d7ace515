"""TransformerEncoderFusion (sam3/model/encoder.py): image tokens attend to themselves and to the prompt.

Weights under ``transformer.encoder.``; the same pre-norm layer also serves the geometry encoder.
"""

from .. import nn


def encoder_layer(tgt, p, name, heads, memory, tgt_pos=None, memory_pos=None,
                  memory_key_padding_mask=None):
    """TransformerEncoderLayer.forward_pre: [N, C] tokens, [M, C] memory -> [N, C].

    tgt_pos is added to the self-attention queries and keys (pos_enc_at_attn), memory_pos to the
    cross-attention keys (pos_enc_at_cross_attn_keys).
    """
    t2 = nn.layer_norm(tgt, p, f"{name}.norm1")
    qk = t2 if tgt_pos is None else t2 + tgt_pos
    tgt = tgt + nn.multi_head_attention(qk, qk, t2, p, f"{name}.self_attn", heads)
    t2 = nn.layer_norm(tgt, p, f"{name}.norm2")
    key = memory if memory_pos is None else memory + memory_pos
    tgt = tgt + nn.multi_head_attention(t2, key, memory, p, f"{name}.cross_attn_image", heads,
                                        key_padding_mask=memory_key_padding_mask)
    return tgt + nn.ffn(nn.layer_norm(tgt, p, f"{name}.norm3"), p, name)


def fusion_encoder(p, cfg, img_feat, img_pos, prompt, prompt_mask):
    """[HW, C] image tokens + [HW, C] sine pos-enc, [L, C] prompt with [L] padding mask -> memory [HW, C]."""
    x = img_feat
    for i in range(cfg["encoder_layers"]):
        x = encoder_layer(x, p, f"layers.{i}", cfg["heads"], memory=prompt, tgt_pos=img_pos,
                          memory_key_padding_mask=prompt_mask)
    return x
