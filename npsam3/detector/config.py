"""The detector's configuration and the exact weight names and shapes it implies.

Values fixed by sam3's model_builder (and unchanged in every SAM3-family checkpoint published so
far) are the defaults; everything the weights reveal is read from their shapes instead.
"""

from ..errors import Npsam3Error
from ..shapes import check_shapes, count, linear, mlp, norm

PREFIXES = ("transformer.", "geometry_encoder.", "segmentation_head.", "dot_prod_scoring.")

BUILDER_DEFAULTS = {
    "heads": 8,           # not visible in weight shapes except through the boxRPB MLP
    "resolution": 1008,
    "stride": 14,
    "box_rpb": "log",     # "log" and "linear" have identical shapes; every published model uses "log"
    "roi_size": 7,
}


def _mha(name, d):
    return {f"{name}.in_proj_weight": (3 * d, d), f"{name}.in_proj_bias": (3 * d,),
            **linear(f"{name}.out_proj", d, d)}


def _encoder_layer(name, d, ffn):
    return {**_mha(f"{name}.self_attn", d), **_mha(f"{name}.cross_attn_image", d),
            **linear(f"{name}.linear1", d, ffn), **linear(f"{name}.linear2", ffn, d),
            **norm(f"{name}.norm1", d), **norm(f"{name}.norm2", d), **norm(f"{name}.norm3", d)}


def _decoder_layer(name, d, ffn):
    return {**_mha(f"{name}.cross_attn", d), **norm(f"{name}.norm1", d),
            **_mha(f"{name}.ca_text", d), **norm(f"{name}.catext_norm", d),
            **_mha(f"{name}.self_attn", d), **norm(f"{name}.norm2", d),
            **linear(f"{name}.linear1", d, ffn), **linear(f"{name}.linear2", ffn, d),
            **norm(f"{name}.norm3", d)}


def weight_shapes(cfg):
    """{reference key: shape} of every detector tensor, under the four PREFIXES."""
    d, ffn, nh = cfg["d_model"], cfg["dim_feedforward"], cfg["heads"]
    s = {}
    for i in range(cfg["encoder_layers"]):
        s.update(_encoder_layer(f"transformer.encoder.layers.{i}", d, ffn))
    dec = "transformer.decoder"
    for i in range(cfg["decoder_layers"]):
        s.update(_decoder_layer(f"{dec}.layers.{i}", d, ffn))
    s.update({**norm(f"{dec}.norm", d), **mlp(f"{dec}.bbox_embed", d, d, 4, 3),
              f"{dec}.query_embed.weight": (cfg["num_queries"], d),
              f"{dec}.reference_points.weight": (cfg["num_queries"], 4),
              **mlp(f"{dec}.boxRPB_embed_x", 2, d, nh, 2),
              **mlp(f"{dec}.boxRPB_embed_y", 2, d, nh, 2),
              **mlp(f"{dec}.ref_point_head", 2 * d, d, d, 2)})
    if cfg["presence_token"]:
        s.update({f"{dec}.presence_token.weight": (1, d),
                  **mlp(f"{dec}.presence_token_head", d, d, 1, 3),
                  **norm(f"{dec}.presence_token_out_norm", d)})
    g, r = "geometry_encoder", cfg["roi_size"]
    s.update({f"{g}.label_embed.weight": (2, d), f"{g}.cls_embed.weight": (1, d),
              **linear(f"{g}.points_direct_project", 2, d),
              **linear(f"{g}.points_pool_project", d, d),
              **linear(f"{g}.points_pos_enc_project", d, d),
              **linear(f"{g}.boxes_direct_project", 4, d),
              f"{g}.boxes_pool_project.weight": (d, d, r, r), f"{g}.boxes_pool_project.bias": (d,),
              **linear(f"{g}.boxes_pos_enc_project", d + 2, d),
              **linear(f"{g}.final_proj", d, d), **norm(f"{g}.norm", d),
              **norm(f"{g}.img_pre_norm", d), **norm(f"{g}.encode_norm", d)})
    for i in range(cfg["geometry_layers"]):
        s.update(_encoder_layer(f"{g}.encode.{i}", d, ffn))
    sh = "segmentation_head"
    for i in range(cfg["pixel_decoder_convs"]):
        s.update({f"{sh}.pixel_decoder.conv_layers.{i}.weight": (d, d, 3, 3),
                  f"{sh}.pixel_decoder.conv_layers.{i}.bias": (d,),
                  **norm(f"{sh}.pixel_decoder.norms.{i}", d)})
    s.update({**mlp(f"{sh}.mask_predictor.mask_embed", d, d, d, 3),
              **_mha(f"{sh}.cross_attend_prompt", d), **norm(f"{sh}.cross_attn_norm", d),
              f"{sh}.semantic_seg_head.weight": (1, d, 1, 1), f"{sh}.semantic_seg_head.bias": (1,),
              f"{sh}.instance_seg_head.weight": (d, d, 1, 1), f"{sh}.instance_seg_head.bias": (d,)})
    ds = "dot_prod_scoring"
    s.update({**mlp(f"{ds}.prompt_mlp", d, cfg["scoring_mlp_dim"], d, 2),
              **norm(f"{ds}.prompt_mlp.out_norm", d),
              **linear(f"{ds}.prompt_proj", d, d), **linear(f"{ds}.hs_proj", d, d)})
    return s


def infer_config(shapes):
    """Detector configuration from {key: shape} of a checkpoint's detector tensors.

    Raises Npsam3Error when a tensor the inference needs is absent (not a SAM3-family detector).
    """
    def shape(key):
        if key not in shapes:
            raise Npsam3Error(f"not a SAM3-family detector: tensor {key} is missing")
        return tuple(shapes[key])

    dec = "transformer.decoder"
    num_queries, d = shape(f"{dec}.query_embed.weight")
    rpb_in = shape(f"{dec}.boxRPB_embed_x.layers.0.weight")[1]
    if rpb_in != 2:
        raise Npsam3Error(f"boxRPB with {rpb_in} inputs per axis ('both') is not supported; "
                          "npsam3 implements the 'log' mode of every published SAM3 model")
    cfg = {
        **BUILDER_DEFAULTS,
        "d_model": d,
        "heads": shape(f"{dec}.boxRPB_embed_x.layers.1.weight")[0],
        "num_queries": num_queries,
        "dim_feedforward": shape("transformer.encoder.layers.0.linear1.weight")[0],
        "encoder_layers": count(shapes, r"transformer\.encoder\.layers\.(\d+)\."),
        "decoder_layers": count(shapes, r"transformer\.decoder\.layers\.(\d+)\."),
        "geometry_layers": count(shapes, r"geometry_encoder\.encode\.(\d+)\."),
        "pixel_decoder_convs": count(shapes, r"segmentation_head\.pixel_decoder\.conv_layers\.(\d+)\."),
        "scoring_mlp_dim": shape("dot_prod_scoring.prompt_mlp.layers.0.weight")[0],
        "roi_size": shape("geometry_encoder.boxes_pool_project.weight")[-1],
        "presence_token": f"{dec}.presence_token.weight" in shapes,
    }
    if not cfg["presence_token"]:
        raise Npsam3Error("this detector has no presence token; npsam3 implements the SAM3 "
                          "detector with its presence head")
    return cfg


def check_weights(shapes, cfg, source):
    """Raise one Npsam3Error listing every missing, unexpected or mis-shaped detector tensor."""
    check_shapes(shapes, weight_shapes(cfg), source, "detector")
