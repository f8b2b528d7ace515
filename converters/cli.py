"""npsam3-convert: turn a SAM3-family checkpoint into an npsam3 bundle."""

import argparse
import sys

from npsam3.errors import Npsam3Error


def build_parser():
    p = argparse.ArgumentParser(
        prog="npsam3-convert",
        description="Convert a SAM3 / SAM3-LiteText / EfficientSAM3 checkpoint into an npsam3 bundle.")
    p.add_argument("checkpoint", help="checkpoint file (.pt / .pth)")
    p.add_argument("out_dir", help="bundle folder to create")
    p.add_argument("--detector-only", action="store_true",
                   help="export only the detector (detector.safetensors + manifest.json)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")
    return p


def run(args):
    from .detector import export_detector

    if not args.detector_only:
        raise Npsam3Error("full bundle export is not available yet; use --detector-only")
    manifest = export_detector(args.checkpoint, args.out_dir, force=args.force)
    cfg = manifest["detector"]
    print(f"wrote {args.out_dir}: detector with {cfg['encoder_layers']} encoder / "
          f"{cfg['decoder_layers']} decoder layers, {cfg['num_queries']} queries")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except Npsam3Error as e:
        print(f"npsam3-convert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("npsam3-convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
