"""UniversalSegmentationHead with its PixelDecoder and MaskPredictor
(sam3/model/maskformer_segmentation.py). Weights under ``segmentation_head.``."""

from .. import nn


def cross_attend_prompt(p, memory, prompt, prompt_mask, heads):
    """Encoder memory [HW, C] attends to the prompt (pre LayerNorm, residual) -> [HW, C]."""
    t2 = nn.layer_norm(memory, p, "cross_attn_norm")
    return memory + nn.multi_head_attention(t2, prompt, prompt, p, "cross_attend_prompt", heads,
                                            key_padding_mask=prompt_mask)


def pixel_decoder(p, feats):
    """PixelDecoder (nearest upsampling): feats [C, 4h, 4w], [C, 2h, 2w], [C, h, w] -> [C, 4h, 4w].

    One conv3x3 + GroupNorm(8) + ReLU per upsampling step (only as many conv layers as steps run).
    """
    prev = feats[-1]
    for i, cur in enumerate(feats[-2::-1]):
        prev = cur + nn.interpolate_nearest(prev, cur.shape[-2:])
        prev = nn.conv2d(prev, p, f"pixel_decoder.conv_layers.{i}", padding=1)
        prev = nn.relu(nn.group_norm(prev, p, f"pixel_decoder.norms.{i}", 8))
    return prev


def segmentation_head(p, cfg, backbone_fpn, memory, feat_size, queries, prompt, prompt_mask,
                      semantic=True):
    """backbone_fpn: [C, 4h, 4w], [C, 2h, 2w] maps (the h x w level is replaced by the memory);
    memory [HW, C]; queries [Q, C] from the last decoder layer.

    Returns mask logits [Q, 4h, 4w] and, when asked, the semantic logits [1, 4h, 4w].
    """
    h, w = feat_size
    memory = cross_attend_prompt(p, memory, prompt, prompt_mask, cfg["heads"])
    pixel_embed = pixel_decoder(p, [backbone_fpn[0], backbone_fpn[1],
                                    memory.T.reshape(-1, h, w)])
    instance_embeds = nn.conv2d(pixel_embed, p, "instance_seg_head")
    mask_embed = nn.mlp(queries, p, "mask_predictor.mask_embed", 3)
    c, mh, mw = instance_embeds.shape
    masks = (mask_embed @ instance_embeds.reshape(c, -1)).reshape(len(queries), mh, mw)
    sem = nn.conv2d(pixel_embed, p, "semantic_seg_head") if semantic else None
    return masks, sem
