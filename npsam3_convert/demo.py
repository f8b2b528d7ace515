"""`make demo`: convert a checkpoint found in weights/ (with none: a random-weight SAM3-family
model), segment a shipped photo with the torch-free `npsam3 segment` exactly as a user would type
it, print the PyTorch-vs-npsam3 parity table for the same photo and prompt, draw PyTorch's
masks beside npsam3's (out/demo/coins.parity.png), then segment one object from a click with
`npsam3 object` and compare it with PyTorch's predict_inst."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO, PROMPT = ROOT / "assets" / "coins.jpg", "a coin"
CLICK = (205, 150)  # a coin in the middle of the photo
DEMO_BUNDLE = ROOT / "weights" / "demo-random-bundle"
THRESHOLD = 0.5  # segment's default; the random-weight model keeps 12 coins at it
BANNER = """
=====================================================================================
 No checkpoint in weights/: this demo builds a RANDOM-WEIGHT SAM3-family model (the
 real SAM3 detector and neck, small image and text encoders) and converts it to
 weights/demo-random-bundle. ITS MASKS ARE MEANINGLESS. The run shows the pipeline
 (convert -> torch-free segment) and the numeric parity with PyTorch, not segmentation
 quality.
 Put a SAM3 or EfficientSAM3 checkpoint (.pt/.pth) in weights/ to segment for real.
=====================================================================================
"""


def step(text):
    print(f"\n[demo] {text}", flush=True)


def parity_picture(result, prompt):
    """PyTorch's kept masks (left) beside npsam3's (right), one colour per query on both sides,
    labelled with the mask IoU; the header says how many instances match."""
    from PIL import Image, ImageDraw

    from npsam3.overlay import Overlay, label_font

    rgb, instances = result["rgb"], sorted(result["instances"], key=lambda r: r["ref_score"])
    panels = []
    for side in ("ref_", ""):
        canvas = Overlay(rgb)
        for i, r in enumerate(instances):
            canvas.add(len(instances) - 1 - i, r[side + "mask"], r[side + "box"],
                       r["iou"] if side == "" else r["ref_score"], "IoU" if side == "" else "")
        panels.append(canvas.image())
    h, w = rgb.shape[:2]
    font = label_font(max(12, w // 40))
    header = max(28, w // 14)
    picture = Image.new("RGB", (2 * w + 10, h + 2 * header), (255, 255, 255))
    picture.paste(panels[0], (0, 2 * header))
    picture.paste(panels[1], (w + 10, 2 * header))
    draw = ImageDraw.Draw(picture)
    ious = [r["iou"] for r in instances]
    summary = (f"{len(instances)} instances in both, min mask IoU {min(ious):.6f}" if ious
               else "no instance kept")
    draw.text((4, 2), f"prompt {prompt!r}: {summary}", fill=(0, 0, 0), font=font)
    draw.text((4, header + 2), "PyTorch sam3 (score)", fill=(0, 0, 0), font=font)
    draw.text((w + 14, header + 2), "npsam3 (mask IoU with PyTorch)", fill=(0, 0, 0), font=font)
    return picture


def main():
    from npsam3.results import save_png

    from .bundle import export_bundle
    from .cli import build_parser, model_from_checkpoint
    from .models import CONTEXT_LENGTH, build_tiny_sam3_image_model
    from .parity import concept_parity, format_concept_report
    from .parity_interactive import interactive_parity

    checkpoints = sorted(p for p in (ROOT / "weights").iterdir() if p.suffix in (".pt", ".pth"))
    if checkpoints:
        ckpt = checkpoints[0]
        bundle = ROOT / "weights" / f"{ckpt.stem}-bundle"
        step(f"reading {ckpt.relative_to(ROOT)}")
        args = build_parser().parse_args([str(ckpt), str(bundle)])
        model, variant = model_from_checkpoint(ckpt, args)
        if bundle.exists():
            step(f"{bundle.relative_to(ROOT)} exists: using it")
        else:
            step(f"converting it to {bundle.relative_to(ROOT)}")
            export_bundle(model, bundle, context_length=variant["context_length"],
                          weights={"checkpoint": ckpt.name},
                          model_info={k: variant[k] for k in ("family", "backbone", "variant",
                                                              "text_encoder")})
    else:
        print(BANNER, flush=True)
        step(f"building the random-weight model and converting it to "
             f"{DEMO_BUNDLE.relative_to(ROOT)}")
        model = build_tiny_sam3_image_model(seed=0)
        bundle = DEMO_BUNDLE
        export_bundle(model, bundle, context_length=CONTEXT_LENGTH, force=True,
                      weights={"random": True, "seed": 0})
    out = ROOT / "out" / "demo"
    npsam3 = Path(sys.executable).parent / "npsam3"  # the venv's command: not on PATH
    command = [os.path.relpath(npsam3), "segment", os.path.relpath(PHOTO), "--bundle",
               os.path.relpath(bundle), "--prompt", PROMPT, "--out", os.path.relpath(out),
               "--force"]
    step("segmenting a photo with the torch-free CLI (paste the line to run it again):")
    print("$ " + shlex.join(command), flush=True)
    code = subprocess.call(command)
    if code:
        sys.exit(code)
    step("comparing PyTorch and npsam3 on the same photo and prompt:")
    result = concept_parity(model, bundle, PHOTO, PROMPT, THRESHOLD)
    print(format_concept_report(result), flush=True)
    picture = out / f"{PHOTO.stem}.parity.png"
    save_png(picture, parity_picture(result, PROMPT))
    step(f"wrote {os.path.relpath(picture)}: PyTorch's masks beside npsam3's, with the IoU of each")
    if json.loads((bundle / "manifest.json").read_text()).get("interactive"):
        click = [CLICK[0], CLICK[1]]
        command = [os.path.relpath(npsam3), "object", os.path.relpath(PHOTO), "--bundle",
                   os.path.relpath(bundle), "--point", ",".join(map(str, click)), "--out",
                   os.path.relpath(out), "--force"]
        step("one object from a click, with the interactive predictor:")
        print("$ " + shlex.join(command), flush=True)
        if subprocess.call(command):
            sys.exit(1)
        step("comparing PyTorch's predict_inst and npsam3's for that click:")
        print(interactive_parity(model, bundle, PHOTO, {"point_coords": [click],
                                                        "point_labels": [1]}), flush=True)
    if not checkpoints:
        print("(random weights: the masks are meaningless; their agreement with PyTorch is not)")


if __name__ == "__main__":
    main()
