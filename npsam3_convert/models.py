"""SAM3-family ``Sam3Image`` models built on CPU from the installed ``sam3`` package (no download).

``build_sam3_image_model`` is the published SAM3 configuration (ViT trunk 1024 wide, 32 blocks;
VE text encoder 1024 wide, 24 layers); ``build_tiny_sam3_image_model`` keeps the real detector and
neck and shrinks the ViT trunk and the text encoder, for fast tests of the export path.
Everything here needs torch and sam3 (the ``convert`` extra).
"""

import importlib.util
import os

from npsam3.errors import Npsam3Error

from .reference import build_reference_detector, patch_sam3_for_cpu, randomize_
from .variants import SAM2_NECK

RESOLUTION = 1008  # input side of every SAM3-family image model; the detector sees 1008 / 14 = 72
CONTEXT_LENGTH = 32  # SAM3's text context length


BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"


def default_bpe_path():
    """The CLIP BPE vocabulary: not in the PyPI sam3 wheel, but open_clip_torch ships the same
    file, and so does the EfficientSAM3 fork (sam3/assets/)."""
    for package, folder in (("open_clip", "."), ("sam3", "../assets")):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.normpath(os.path.join(location, folder, BPE_NAME))
            if os.path.isfile(path):
                return path
    raise Npsam3Error(f"cannot find the BPE vocabulary {BPE_NAME}: install open_clip_torch or "
                      "pass --bpe PATH")


def _assemble(vision_neck, text_encoder):
    """Sam3Image in eval mode on CPU: the given backbone parts plus the published detector, and
    the interactive predictor when the neck has its tracker convs (sam2_convs)."""
    from sam3 import model_builder as mb

    return build_reference_detector(mb._create_vl_backbone(vision_neck, text_encoder),
                                    interactive=vision_neck.sam2_convs is not None)


PREDICTOR = "inst_interactive_predictor.model."  # where Sam3Image keeps the tracker's modules
USED_TRACKER = tuple(PREDICTOR + k for k in ("sam_prompt_encoder.", "sam_mask_decoder.",
                                             "no_mem_embed"))


def load_state(model, state, source):
    """Load a normalised state dict (npsam3_convert.checkpoint; its ``tracker.*`` heads go to the
    interactive predictor) into ``model``. Every model tensor must be present but the ViT's RoPE
    tables (``freqs_cis``, computed from the configuration) and the video tracker's modules that
    predict_inst does not use. Returns the sorted checkpoint keys the model does not use."""
    state = {PREDICTOR + k.removeprefix("tracker.") if k.startswith("tracker.") else k: v
             for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".freqs_cis")
               and (not k.startswith(PREDICTOR) or k.startswith(USED_TRACKER))]
    if missing:
        raise Npsam3Error(f"{source} lacks {len(missing)} tensors of the image model, "
                          f"e.g. {', '.join(missing[:3])}")
    return sorted(unexpected)


def build_sam3_image_model(state=None, bpe_path=None, source="checkpoint", interactive=False):
    """The published SAM3 image model on CPU, in eval mode; ``interactive`` adds the tracker neck
    and the instance-interactive predictor (enable_inst_interactivity).

    With ``state`` (a normalised state dict) its weights are loaded (every model key must be
    present); without, the weights stay as sam3 initialises them (random, unseeded; use
    ``randomize_`` for reproducible non-trivial weights).
    """
    patch_sam3_for_cpu()
    from sam3 import model_builder as mb

    model = _assemble(
        mb._create_vision_backbone(enable_inst_interactivity=interactive),
        mb._create_text_encoder(bpe_path or default_bpe_path()),
    )
    if state is not None:
        load_state(model, state, source)
    return model


def is_efficientsam3_fork():
    """True when the importable ``sam3`` is the EfficientSAM3 fork (it has student text encoders)."""
    return importlib.util.find_spec("sam3.model.text_encoder_student") is not None


def build_image_model(variant, state, bpe_path=None, source="checkpoint", interactive=None):
    """Build the image model that npsam3_convert.variants.detect_variant recognised and load ``state``
    (with the interactive predictor when ``interactive``, default: when the checkpoint has it;
    without, its tracker tensors are left out).

    SAM3 builds with PyPI sam3 (or the fork); SAM3-LiteText and EfficientSAM3 need the fork. A
    MobileCLIP table longer than the context length (``truncate_after_load``: LiteText's 77 rows)
    is loaded whole and then cut."""
    fork = is_efficientsam3_fork()
    interactive = variant["interactive"] if interactive is None else interactive
    if not interactive:
        state = {k: v for k, v in state.items() if not k.startswith(("tracker.", SAM2_NECK))}
    if variant["family"] == "sam3" and not fork:
        return build_sam3_image_model(state, bpe_path, source, interactive)
    if not fork:
        raise Npsam3Error(
            f"{source} is {describe(variant)}; building it needs the EfficientSAM3 fork of sam3 "
            "(github SimonZeng7108/efficientsam3) installed in place of PyPI sam3: "
            "pip install -e <clone>/sam3 opencv-python-headless einops pycocotools omegaconf")
    from sam3 import model_builder

    kwargs = dict(variant["builder_kwargs"])
    if variant["truncate_after_load"]:  # build with the full table; cut it after loading
        kwargs["text_encoder_context_length"] = variant["pos_embed_len"]
    model = getattr(model_builder, variant["builder"])(
        bpe_path=bpe_path or default_bpe_path(), device="cpu", eval_mode=True,
        checkpoint_path=None, load_from_HF=False, enable_inst_interactivity=interactive, **kwargs)
    load_state(model, state, source)
    if variant["truncate_after_load"]:
        _truncate_text_context(model, variant["context_length"])
    return model.eval()


RESIZABLE_TRUNKS = ("repvit", "efficientvit")  # convolutional / linear-attention students


def set_resolution(model, variant, resolution):
    """Make ``model`` take ``resolution`` x ``resolution`` images (the detector then sees
    resolution / 14 features): the EfficientSAM3 RepViT and EfficientViT students resize their
    output to that size instead of 72. Other trunks are refused: SAM3's ViT-H (SAM3,
    SAM3-LiteText) has its RoPE tables and attention windows laid out for 1008 px, and TinyViT its
    attention layers for a fixed input size."""
    if resolution == RESOLUTION:
        return
    if resolution % 14 or not 224 <= resolution <= 2016:
        raise Npsam3Error(f"--resolution {resolution} must be a multiple of 14 between 224 and 2016")
    if variant["backbone"] not in RESIZABLE_TRUNKS:
        why = ("its RoPE tables and attention windows are laid out for 1008 px"
               if variant["backbone"] == "vit-h" else
               "its attention layers are built for a fixed 1008 px input")
        raise Npsam3Error(f"--resolution needs an EfficientSAM3 RepViT or EfficientViT student; "
                          f"{describe(variant)} runs at 1008 px only: {why}")
    model.backbone.vision_backbone.trunk.model.embed_size = resolution // 14


def _truncate_text_context(model, context_length):
    """Keep the first ``context_length`` rows of the loaded MobileCLIP positional table, as the
    fork's LiteText ``build_sam3_image_model`` does after loading its checkpoint."""
    model.backbone.language_backbone.set_context_length(context_length)


def describe(variant):
    """'EfficientSAM3 (RepViT m1.1 image trunk, MobileCLIP-S1 text encoder, 32 tokens)'."""
    trunk = {"vit-h": "ViT-H", "repvit": "RepViT", "tinyvit": "TinyViT",
             "efficientvit": "EfficientViT"}[variant["backbone"]]
    text = "SAM3's VE" if variant["text_encoder"] == "ve-text" else variant["text_encoder"]
    family = {"sam3": "SAM3", "sam3-litetext": "SAM3-LiteText",
              "efficientsam3": "EfficientSAM3"}[variant["family"]]
    return (f"{family} ({trunk}{' ' + variant['variant'] if variant.get('variant') else ''} image "
            f"trunk, {text} text encoder, {variant['context_length']} tokens)")


def _tiny_vit(embed_dim, depth, num_heads):
    """SAM3's ViT trunk (patch 14, tiled absolute position embedding from a 336 pretraining size,
    window 24 with the last block global, interpolated 2-D RoPE, ln_pre) at a reduced size."""
    from sam3.model.vitdet import ViT

    return ViT(
        img_size=RESOLUTION,
        pretrain_img_size=336,
        patch_size=14,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.625,
        norm_layer="LayerNorm",
        drop_path_rate=0.0,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=(depth - 1,),
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=24,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )


def build_tiny_sam3_image_model(seed, bpe_path=None, embed_dim=128, depth=2, num_heads=4,
                                text_width=256, text_layers=2, text_heads=4, interactive=True):
    """A small Sam3Image for fast tests, in eval mode on CPU with ``randomize_(model, seed)``
    weights: the real detector and ``Sam3DualViTDetNeck`` (d_model 256, scales 4, 2, 1, 0.5; with
    ``interactive`` its tracker neck and the real interactive predictor), a reduced ViT trunk
    (``depth`` blocks, the last global, RoPE on) and a reduced ``VETextEncoder`` (context length
    32). Input resolution 1008, so the detector sees 72x72 as with SAM3.
    ``embed_dim / num_heads`` must be a multiple of 4 (2-D RoPE)."""
    patch_sam3_for_cpu()
    from sam3 import model_builder as mb
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer

    neck = mb._create_vit_neck(
        mb._create_position_encoding(precompute_resolution=RESOLUTION),
        _tiny_vit(embed_dim, depth, num_heads),
        enable_inst_interactivity=interactive,
    )
    text = VETextEncoder(
        d_model=256,
        tokenizer=SimpleTokenizer(bpe_path=bpe_path or default_bpe_path()),
        width=text_width,
        heads=text_heads,
        layers=text_layers,
        context_length=CONTEXT_LENGTH,
    )
    return randomize_(_assemble(neck, text), seed)
