"""`make demo`: convert a checkpoint found in weights/ (with none: a random-weight SAM3-family
model), segment a shipped sample photo with the torch-free `npsam3 segment`, and print the
PyTorch-vs-npsam3 parity table for the same photo and prompt."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO, PROMPT = ROOT / "assets" / "coins.jpg", "a coin"
BANNER = """
=====================================================================================
 No checkpoint in weights/: this demo builds a RANDOM-WEIGHT SAM3-family model (the
 real SAM3 detector and neck, small image and text encoders) and converts it.
 ITS MASKS ARE MEANINGLESS. The run shows the pipeline (convert -> torch-free segment)
 and the numeric parity with PyTorch, not segmentation quality. Put a SAM3 or
 EfficientSAM3 checkpoint (.pt/.pth) in weights/ to segment for real.
=====================================================================================
"""


def main():
    from npsam3_convert.bundle import export_bundle
    from npsam3_convert.cli import build_parser, model_from_checkpoint
    from npsam3_convert.models import CONTEXT_LENGTH, build_tiny_sam3_image_model
    from npsam3_convert.parity import parity_report

    checkpoints = sorted(p for p in (ROOT / "weights").iterdir() if p.suffix in (".pt", ".pth"))
    if checkpoints:
        ckpt = checkpoints[0]
        bundle = ROOT / "weights" / f"{ckpt.stem}-bundle"
        args = build_parser().parse_args([str(ckpt), str(bundle)])
        model, variant = model_from_checkpoint(ckpt, args)
        if not bundle.exists():
            export_bundle(model, bundle, context_length=variant["context_length"],
                          model_info={k: variant[k] for k in ("family", "backbone", "variant",
                                                              "text_encoder")})
        threshold = 0.5
    else:
        print(BANNER, flush=True)
        model = build_tiny_sam3_image_model(seed=0)
        bundle = ROOT / "weights" / "demo-random-bundle"
        export_bundle(model, bundle, context_length=CONTEXT_LENGTH, force=True)
        threshold = 0.4  # random weights score around 0.3-0.47
    out = ROOT / "out" / "demo"
    print(f"\n$ npsam3 segment {PHOTO.relative_to(ROOT)} --bundle {bundle.relative_to(ROOT)} "
          f"--prompt {PROMPT!r} --threshold {threshold} --out {out.relative_to(ROOT)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "npsam3.cli", "segment", str(PHOTO), "--bundle",
                            str(bundle), "--prompt", PROMPT, "--threshold", str(threshold),
                            "--out", str(out)])
    if code:
        sys.exit(code)
    print(f"\noverlay: {out / PHOTO.stem}.png, results: {out / PHOTO.stem}.json\n", flush=True)
    print(parity_report(model, bundle, PHOTO, PROMPT, threshold))
    if not checkpoints:
        print("\n(random weights: the masks above are meaningless; the parity numbers are not)")


if __name__ == "__main__":
    main()
