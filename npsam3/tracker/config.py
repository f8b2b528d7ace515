"""The interactive SAM heads' configuration and the exact weight names and shapes it implies
(``sam_prompt_encoder.*`` and ``sam_mask_decoder.*`` as in Sam3TrackerBase's state_dict).

What sam3's ``_build_sam_heads`` / ``build_tracker`` fix is the default; the width, MLP size,
depth and number of mask tokens are read from the shapes. ``conv_s0`` / ``conv_s1`` of the mask
decoder are not here: they project the tracker neck's features and are folded into the bundle's
tracker-neck graph.
"""

from ..errors import Npsam3Error
from ..shapes import check_shapes, conv, count, linear, mlp, norm

PROMPT_ENCODER, MASK_DECODER = "sam_prompt_encoder.", "sam_mask_decoder."
NECK_CONVS = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")


def _attention(name, d, internal):
    return {**linear(f"{name}.q_proj", d, internal), **linear(f"{name}.k_proj", d, internal),
            **linear(f"{name}.v_proj", d, internal), **linear(f"{name}.out_proj", internal, d)}


def weight_shapes(cfg):
    """{reference key: shape} of the prompt encoder and the mask decoder (without conv_s0/s1)."""
    d, mlp_dim, cross = cfg["d_model"], cfg["mlp_dim"], cfg["d_model"] // cfg["downsample_rate"]
    pe, md = PROMPT_ENCODER, MASK_DECODER
    s = {f"{pe}pe_layer.positional_encoding_gaussian_matrix": (2, d // 2),
         f"{pe}not_a_point_embed.weight": (1, d), f"{pe}no_mask_embed.weight": (1, d),
         **{f"{pe}point_embeddings.{i}.weight": (1, d) for i in range(4)},
         **conv(f"{pe}mask_downscaling.0", 1, cfg["mask_in_chans"] // 4, 2),
         **norm(f"{pe}mask_downscaling.1", cfg["mask_in_chans"] // 4),
         **conv(f"{pe}mask_downscaling.3", cfg["mask_in_chans"] // 4, cfg["mask_in_chans"], 2),
         **norm(f"{pe}mask_downscaling.4", cfg["mask_in_chans"]),
         **conv(f"{pe}mask_downscaling.6", cfg["mask_in_chans"], d, 1)}
    t = f"{md}transformer"
    for i in range(cfg["depth"]):
        layer = f"{t}.layers.{i}"
        s.update({**_attention(f"{layer}.self_attn", d, d), **norm(f"{layer}.norm1", d),
                  **_attention(f"{layer}.cross_attn_token_to_image", d, cross),
                  **norm(f"{layer}.norm2", d), **linear(f"{layer}.mlp.lin1", d, mlp_dim),
                  **linear(f"{layer}.mlp.lin2", mlp_dim, d), **norm(f"{layer}.norm3", d),
                  **norm(f"{layer}.norm4", d),
                  **_attention(f"{layer}.cross_attn_image_to_token", d, cross)})
    n = cfg["num_mask_tokens"]
    s.update({**_attention(f"{t}.final_attn_token_to_image", d, cross),
              **norm(f"{t}.norm_final_attn", d),
              f"{md}iou_token.weight": (1, d), f"{md}mask_tokens.weight": (n, d),
              f"{md}obj_score_token.weight": (1, d),
              f"{md}output_upscaling.0.weight": (d, d // 4, 2, 2),
              f"{md}output_upscaling.0.bias": (d // 4,), **norm(f"{md}output_upscaling.1", d // 4),
              f"{md}output_upscaling.3.weight": (d // 4, d // 8, 2, 2),
              f"{md}output_upscaling.3.bias": (d // 8,),
              **{k: v for i in range(n)
                 for k, v in mlp(f"{md}output_hypernetworks_mlps.{i}", d, d, d // 8, 3).items()},
              **mlp(f"{md}iou_prediction_head", d, cfg["iou_head_hidden_dim"], n, 3),
              **mlp(f"{md}pred_obj_score_head", d, d, 1, 3)})
    return s


def infer_config(shapes):
    """The heads' configuration from {key: shape}; Npsam3Error when a tensor it needs is absent."""
    def shape(key):
        if key not in shapes:
            raise Npsam3Error(f"not SAM3's interactive heads: tensor {key} is missing")
        return tuple(shapes[key])

    md = MASK_DECODER
    d = shape(f"{PROMPT_ENCODER}no_mask_embed.weight")[1]
    return {
        "d_model": d,
        "mlp_dim": shape(f"{md}transformer.layers.0.mlp.lin1.weight")[0],
        "depth": count(shapes, r"sam_mask_decoder\.transformer\.layers\.(\d+)\."),
        "downsample_rate": d // shape(f"{md}transformer.final_attn_token_to_image.q_proj.weight")[0],
        "num_mask_tokens": shape(f"{md}mask_tokens.weight")[0],
        "mask_in_chans": shape(f"{PROMPT_ENCODER}mask_downscaling.3.weight")[0],
        "iou_head_hidden_dim": shape(f"{md}iou_prediction_head.layers.0.weight")[0],
    }


def check_weights(shapes, cfg, source):
    """Raise one Npsam3Error listing every missing, unexpected or mis-shaped head tensor."""
    check_shapes(shapes, weight_shapes(cfg), source, "interactive SAM heads")
