"""UniversalSegmentationHead with its PixelDecoder and MaskPredictor
(sam3/model/maskformer_segmentation.py). Weights under ``segmentation_head.``.

The pixel embedding does not depend on the queries, so it is computed once and masks are then
made for any subset of queries; the 1x1 instance_seg_head is folded into the query side:
mask_embed . (W pixel + b) = (mask_embed W) . pixel + mask_embed . b.
"""

from .. import nn


def cross_attend_prompt(p, memory, prompt, prompt_mask, heads):
    """Encoder memory [HW, C] attends to the prompt (pre LayerNorm, residual) -> [HW, C]."""
    t2 = nn.layer_norm(memory, p, "cross_attn_norm")
    return memory + nn.multi_head_attention(t2, prompt, prompt, p, "cross_attend_prompt", heads,
                                            key_padding_mask=prompt_mask)


def pixel_decoder(p, feats):
    """PixelDecoder (nearest upsampling): feats [C, 4h, 4w], [C, 2h, 2w], [C, h, w] -> [C, 4h, 4w].

    One conv3x3 + GroupNorm(8) + ReLU per upsampling step (only as many conv layers as steps run);
    the norm and the ReLU run in place on the convolution's output.
    """
    prev = feats[-1]
    for i, cur in enumerate(feats[-2::-1]):
        prev = nn.upsample_add(cur, prev)
        prev = nn.conv2d(prev, p, f"pixel_decoder.conv_layers.{i}", padding=1)
        prev = nn.relu(nn.group_norm(prev, p, f"pixel_decoder.norms.{i}", 8, out=prev))
    return prev


def pixel_embeddings(p, cfg, backbone_fpn, memory, feat_size, prompt, prompt_mask):
    """backbone_fpn: [C, 4h, 4w], [C, 2h, 2w] maps (the h x w level is the memory itself);
    memory [HW, C] -> pixel embedding [C, 4h, 4w]."""
    h, w = feat_size
    memory = cross_attend_prompt(p, memory, prompt, prompt_mask, cfg["heads"])
    return pixel_decoder(p, [backbone_fpn[0], backbone_fpn[1], memory.T.reshape(-1, h, w)])


def mask_logits(p, queries, pixel_embed):
    """MaskPredictor on instance_seg_head(pixel_embed): queries [Q, C] -> mask logits [Q, 4h, 4w]."""
    c, mh, mw = pixel_embed.shape
    mask_embed = nn.mlp(queries, p, "mask_predictor.mask_embed", 3)
    w = p["instance_seg_head.weight"].reshape(c, c)
    masks = nn.matmul(mask_embed @ w, pixel_embed.reshape(c, -1))
    masks += (mask_embed @ p["instance_seg_head.bias"])[:, None]
    return masks.reshape(len(queries), mh, mw)


def semantic_logits(p, pixel_embed):
    """semantic_seg_head: pixel embedding [C, 4h, 4w] -> semantic logits [1, 4h, 4w]."""
    return nn.conv2d(pixel_embed, p, "semantic_seg_head")
