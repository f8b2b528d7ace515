"""npsam3-convert: turn a SAM3-family checkpoint into an npsam3 bundle, or check a bundle's parity.

    npsam3-convert CHECKPOINT OUT_DIR [--family ...] [--backbone ...] [--variant ...]
                   [--text-encoder ...] [--context-length N] [--detector-only] [--force]
    npsam3-convert --parity CHECKPOINT_OR_BUNDLE IMAGE PROMPT [--threshold T]
"""

import sys
from pathlib import Path

from npsam3.cli.common import Parser, pixel_box
from npsam3.cli.object import point
from npsam3.errors import Npsam3Error, run_command


def build_parser():
    p = Parser(prog="npsam3-convert", description=(
        "Convert a SAM3 / SAM3-LiteText / EfficientSAM3 checkpoint into an npsam3 bundle "
        "(family, image trunk, text encoder and context length are read from the checkpoint; "
        "flags only fill in what it cannot tell), or with --parity compare PyTorch and npsam3 "
        "on an image and a prompt."))
    p.add_argument("source", metavar="CHECKPOINT", help="checkpoint file (.pt / .pth); with "
                   "--parity a checkpoint or a bundle folder")
    p.add_argument("target", metavar="OUT_DIR", help="bundle folder to create; with --parity the IMAGE")
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="with --parity: the text prompt")
    p.add_argument("--parity", action="store_true",
                   help="run PyTorch and npsam3 on IMAGE and PROMPT and print the error per stage")
    p.add_argument("--threshold", type=float, default=0.5, help="--parity score threshold")
    p.add_argument("--point", type=point, action="append", default=[], metavar="X,Y[,LABEL]",
                   help="--parity of the interactive predictor: a click in pixels (repeatable; "
                   "default: one positive click at the image centre)")
    p.add_argument("--box", type=pixel_box, metavar="X0,Y0,X1,Y1",
                   help="--parity of the interactive predictor: a box in pixels")
    p.add_argument("--detector-only", action="store_true",
                   help="export only the detector (detector.safetensors + manifest.json)")
    p.add_argument("--no-interactive", action="store_true",
                   help="leave out the interactive predictor (tracker neck, SAM heads) even when "
                   "the checkpoint has it")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")
    p.add_argument("--family", help="sam3 | sam3-litetext | efficientsam3")
    p.add_argument("--backbone", help="vit-h | repvit | tinyvit | efficientvit")
    p.add_argument("--variant", help="image trunk size, e.g. m1.1, 11m, b1")
    p.add_argument("--text-encoder", help="e.g. MobileCLIP-S0, MobileCLIP-S1, MobileCLIP2-L")
    p.add_argument("--context-length", type=int, help="text context length (tokens)")
    p.add_argument("--resolution", type=int, default=1008,
                   help="input size of the bundle, a multiple of 14 (default 1008; other sizes "
                   "only for EfficientSAM3 RepViT / EfficientViT students, detection only; their "
                   "accuracy away from 1008 is yours to judge)")
    p.add_argument("--bpe", help="BPE vocabulary (default: the one open_clip_torch ships)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX-vs-PyTorch check")
    return p


def model_from_checkpoint(path, args):
    """Read a checkpoint, recognise its variant (flags may only fill in) and build the model."""
    from .checkpoint import read_checkpoint
    from .models import build_image_model, describe, set_resolution
    from .variants import check_overrides, detect_variant

    print(f"reading {path} ...", flush=True)
    state, meta = read_checkpoint(path)
    variant = detect_variant({k: v.shape for k, v in state.items()}, meta)
    variant = check_overrides(variant, args.family, args.backbone, args.variant,
                              args.text_encoder, args.context_length)
    if variant["context_length_flexible"]:
        raise Npsam3Error(
            f"{path.name} keeps MobileCLIP's {variant['pos_embed_len']}-token positional table, "
            "which does not tell the text context length the model runs at: pass "
            "--context-length (SAM3-LiteText: 16 or 32, often in the file name; 77 keeps the "
            "whole table)")
    interactive = variant["interactive"] and not args.no_interactive
    print(f"recognised {describe(variant)}, " + (
        "with the interactive predictor" if interactive else
        "detection only (--no-interactive)" if variant["interactive"] else
        "detection only (no tracker neck and SAM heads in the checkpoint)")
        + "; building it ...", flush=True)
    model = build_image_model(variant, state, args.bpe, path.name, interactive)
    set_resolution(model, variant, args.resolution)
    return model, variant


def convert(args):
    from .bundle import export_bundle
    from .detector import export_detector

    source = Path(args.source)
    if args.detector_only:
        manifest = export_detector(source, args.target, force=args.force)
    else:
        model, v = model_from_checkpoint(source, args)
        manifest = export_bundle(
            model, args.target, context_length=v["context_length"], bpe_path=args.bpe,
            verify=not args.no_verify, force=args.force, weights={"checkpoint": source.name},
            resolution=args.resolution,
            model_info={k: v[k] for k in ("family", "backbone", "variant", "text_encoder")})
    print(f"wrote bundle {args.target} ({', '.join(manifest['files'])})")


def parity(args):
    import tempfile

    from .bundle import export_bundle

    if args.prompt is None:
        raise Npsam3Error("--parity needs CHECKPOINT_OR_BUNDLE IMAGE PROMPT")
    source = Path(args.source)
    if source.is_dir():
        return print_parity(None, source, args)
    model, v = model_from_checkpoint(source, args)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(model, bundle, context_length=v["context_length"], bpe_path=args.bpe,
                      verify=False, resolution=args.resolution)
        print_parity(model, bundle, args)


def print_parity(model, bundle, args):
    """The concept report and, for a bundle with the interactive predictor, the interactive one
    (for --point / --box, or one click at the image centre)."""
    import json

    from npsam3.image import load_image

    from .parity import parity_report
    from .parity_interactive import interactive_parity

    print(parity_report(model, bundle, args.target, args.prompt, args.threshold))
    if not json.loads((Path(bundle) / "manifest.json").read_text()).get("interactive"):
        print("\n(no interactive predictor in this bundle: interactive parity not checked)")
        return
    prompts = {}
    if args.point or not args.box:
        h, w = load_image(args.target).shape[:2]
        clicks = args.point or [([w / 2, h / 2], 1)]
        prompts = {"point_coords": [xy for xy, _ in clicks],
                   "point_labels": [label for _, label in clicks]}
    if args.box:
        prompts["box"] = args.box
    print()
    print(interactive_parity(model, Path(bundle), args.target, prompts))


def require_convert_extra():
    """Converting needs torch and sam3 (the ``convert`` extra): say so in one line without them."""
    import importlib.util

    for name in ("torch", "sam3"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # sys.modules[name] is None: blocked
            found = False
        if not found:
            raise Npsam3Error(f"converting needs the convert extra ({name} is missing): pip "
                              "install 'npsam3[convert]' (torch, sam3), or from a clone: "
                              "pip install -e '.[convert]'")


def run(args):
    require_convert_extra()
    if args.parity:
        parity(args)
    elif args.prompt is not None:
        raise Npsam3Error(f"unexpected argument {args.prompt!r} (PROMPT goes with --parity)")
    else:
        convert(args)


def main(argv=None):
    return run_command("npsam3-convert", run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
