"""export_bundle: a built SAM3-family model -> a complete bundle (detector weights, ONNX encoders,
vocabulary, manifest), verified against PyTorch."""

import shutil
from pathlib import Path

from safetensors.numpy import save_file

from npsam3.detector import DETECTOR_FILE
from npsam3.errors import Npsam3Error
from npsam3.tokenizer import SimpleTokenizer

from .detector import detector_arrays
from .models import RESOLUTION, default_bpe_path
from .onnx_export import (FPN_OUTPUTS, IMAGE_GRAPHS, TRACKER_NECK_OUTPUTS, TRUNK_OUTPUT,
                          export_image_graphs, export_text_encoder, verify_image_graphs,
                          verify_text_encoder)
from .staging import staged_bundle, write_manifest
from .tracker import tracker_arrays

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
TEXT_FILE, TRACKER_FILE = "text_encoder.onnx", "tracker.safetensors"
PREPROCESSING = ("RGB uint8 resized to resolution x resolution (bilinear, antialiased, as "
                 "torchvision v2.Resize on uint8), /255, (x - 0.5) / 0.5, NCHW float32")
ENCODER_TOL = 1e-4  # max relative error of the ONNX encoders against PyTorch at export


def export_bundle(model, out_dir, *, context_length, bpe_path=None, verify=True, force=False,
                  resolution=RESOLUTION, model_info=None, weights=None, verify_image=None,
                  interactive=None):
    """Write a complete bundle for a built SAM3-family ``Sam3Image`` (torch, eval mode):
    detector.safetensors, image_trunk.onnx, detector_neck.onnx, text_encoder.onnx, the BPE
    vocabulary, with the interactive predictor tracker_neck.onnx and tracker.safetensors, and
    manifest.json.

    ``interactive``: include the interactive predictor (default: when the model has one; only at
    1008 px, the one size sam3's predictor runs at). With ``verify``, onnxruntime is run against
    PyTorch on ``verify_image`` (a [1,3,R,R] preprocessed image; default: a shipped photo) and a
    few prompts, and the export fails if any graph's output differs by more than ENCODER_TOL
    (relative). ``weights`` says where the weights come from, for the manifest:
    ``{"checkpoint": name}`` or ``{"random": True, "seed": s}`` (then ``npsam3 info`` and
    ``segment`` warn that the masks are meaningless). Returns the manifest."""
    has_predictor = model.inst_interactive_predictor is not None
    interactive = has_predictor if interactive is None else interactive
    if interactive and not has_predictor:
        raise Npsam3Error("the model has no interactive predictor (tracker neck and SAM heads)")
    if interactive and resolution != RESOLUTION:
        print(f"note: the interactive predictor runs at {RESOLUTION} px only; the {resolution} px "
              "bundle is detection-only", flush=True)
        interactive = False
    bpe_path = Path(bpe_path or default_bpe_path())
    arrays, cfg = detector_arrays(model.state_dict(), "model")
    cfg["resolution"] = resolution
    sections = {}
    with staged_bundle(out_dir, force) as tmp:
        print(f"writing the detector ({sum(a.size for a in arrays.values()) / 1e6:.1f}M parameters)",
              flush=True)
        save_file(arrays, str(tmp / DETECTOR_FILE))
        export_image_graphs(model, tmp, resolution, interactive)
        export_text_encoder(model, tmp / TEXT_FILE, context_length)
        shutil.copyfile(bpe_path, tmp / BPE_FILE)
        if interactive:
            heads, tracker_cfg = tracker_arrays(model)
            print(f"writing the interactive SAM heads ({sum(a.size for a in heads.values()) / 1e6:.1f}M "
                  "parameters)", flush=True)
            save_file(heads, str(tmp / TRACKER_FILE))
            sections = {"tracker": {"file": TRACKER_FILE, **tracker_cfg},
                        "tracker_neck": {"file": IMAGE_GRAPHS["tracker_neck"], "input": TRUNK_OUTPUT,
                                         "outputs": list(TRACKER_NECK_OUTPUTS), "opset": 17}}
        verification = {}
        if verify:
            print("verifying the ONNX graphs against PyTorch ...", flush=True)
            image = verify_image if verify_image is not None else sample_image(resolution)
            ids = SimpleTokenizer(tmp / BPE_FILE)(VERIFY_PROMPTS, context_length)
            errors = {**verify_image_graphs(model, tmp, image, interactive),
                      **verify_text_encoder(model, tmp / TEXT_FILE, ids)}
            verification = {k: v["max_rel"] for k, v in errors.items()}
            for name, rel in verification.items():
                print(f"  {name}: max relative error {rel:.1e}", flush=True)
            bad = {k: v for k, v in verification.items() if not v <= ENCODER_TOL}  # NaN too
            if bad:
                raise Npsam3Error("the ONNX graphs differ from PyTorch beyond "
                                  f"{ENCODER_TOL:g}: " + ", ".join(f"{k} {v:.1e}" for k, v in bad.items()))
        return write_manifest(
            tmp, model=model_info or {"family": "sam3"}, weights=weights or {}, detector=cfg,
            image_trunk={"file": IMAGE_GRAPHS["image_trunk"], "resolution": resolution,
                         "input": "image", "output": TRUNK_OUTPUT, "preprocessing": PREPROCESSING,
                         "opset": 17},
            detector_neck={"file": IMAGE_GRAPHS["detector_neck"], "input": TRUNK_OUTPUT,
                           "outputs": list(FPN_OUTPUTS), "opset": 17},
            text_encoder={"file": TEXT_FILE, "context_length": context_length, "opset": 17},
            tokenizer={"file": BPE_FILE}, interactive=interactive, **sections,
            verification=verification)


VERIFY_PROMPTS = ["a dog", "visual", "red car on the left side of the street",
                  "the small white cup and saucer next to a spoon on a wooden table " * 3]


SAMPLE_PHOTO = Path(__file__).resolve().parent.parent / "assets" / "coffee.jpg"


def sample_image(resolution):
    """The shipped sample photo, preprocessed to [1, 3, R, R] (a smooth synthetic image when the
    converter runs outside a repository checkout)."""
    import numpy as np

    from npsam3.image import load_image, preprocess

    if SAMPLE_PHOTO.is_file():
        return preprocess(load_image(SAMPLE_PHOTO), resolution)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    img = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)])
    return img[None].astype(np.float32)
