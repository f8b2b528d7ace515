"""Shared fixtures: the PyTorch reference detector with seeded random weights and its npsam3 bundle.

Only the reference tests import torch (through these fixtures); npsam3 itself never does.
"""

from pathlib import Path

import numpy as np
import pytest

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="session")
def reference_detector():
    """sam3's Sam3Image detector (no backbone), seeded random weights, eval mode."""
    from npsam3_convert.reference import build_reference_detector, randomize_

    return randomize_(build_reference_detector(), seed=0)


@pytest.fixture(scope="session")
def detector_bundle(reference_detector, tmp_path_factory):
    from npsam3_convert import export_detector

    out = tmp_path_factory.mktemp("bundles") / "detector"
    export_detector(reference_detector.state_dict(), out)
    return out


KERNEL_SETS = ["onnxruntime", "numpy"]


@pytest.fixture(scope="session", params=KERNEL_SETS)
def kernels(request):
    """The primitives' implementation under test: the golden tests run on both (npsam3.kernels)."""
    return request.param


@pytest.fixture(scope="session")
def np_detector(detector_bundle, kernels):
    import npsam3

    return npsam3.load_detector(detector_bundle, kernels=kernels)


def random_inputs(seed, feat_size=(72, 72), n_valid=5, context=32, d=256):
    """FPN levels [1,d,4h,4w], [1,d,2h,2w], [1,d,h,w], text features [L,1,d] and padding mask [1,L]."""
    rng = np.random.default_rng(seed)
    h, w = feat_size
    fpn = [rng.standard_normal((1, d, s * h, s * w), dtype=np.float32) for s in (4, 2, 1)]
    feats = rng.standard_normal((context, 1, d), dtype=np.float32)
    mask = np.arange(context)[None] >= n_valid
    return fpn, feats, mask


@pytest.fixture(scope="session")
def torch_model():
    """A SAM3-family Sam3Image from sam3's classes: the real detector and necks, the interactive
    predictor, a reduced ViT trunk and text encoder, seeded random weights. The mask decoder's
    first hypernetwork output is scaled up (x7) so that its mask is sometimes stable enough for
    the single-mask choice to keep it: both stability branches then occur on real photos."""
    import torch

    from npsam3_convert.models import build_tiny_sam3_image_model

    model = build_tiny_sam3_image_model(seed=0)
    head = model.inst_interactive_predictor.model.sam_mask_decoder.output_hypernetworks_mlps[0]
    with torch.no_grad():
        head.layers[2].weight *= 7
        head.layers[2].bias *= 7
    return model


@pytest.fixture(scope="session")
def bundle(torch_model, tmp_path_factory):
    """torch_model exported with export_bundle (verified against PyTorch)."""
    from npsam3_convert.bundle import export_bundle
    from npsam3_convert.models import CONTEXT_LENGTH

    out = tmp_path_factory.mktemp("e2e") / "bundle"
    export_bundle(torch_model, out, context_length=CONTEXT_LENGTH, weights={"random": True, "seed": 0})
    return out


@pytest.fixture(scope="session")
def detection_only_bundle(torch_model, tmp_path_factory):
    """torch_model exported without its interactive predictor."""
    from npsam3_convert.bundle import export_bundle
    from npsam3_convert.models import CONTEXT_LENGTH

    out = tmp_path_factory.mktemp("e2e") / "detection-only"
    export_bundle(torch_model, out, context_length=CONTEXT_LENGTH, verify=False,
                  interactive=False)
    return out


@pytest.fixture(scope="session")
def np_model(bundle):
    import npsam3

    return npsam3.load_model(bundle)


@pytest.fixture(scope="session")
def np_model_on(bundle, kernels):
    """The bundle's model on each kernel set in turn (for the golden end-to-end tests)."""
    import npsam3

    return npsam3.load_model(bundle, kernels=kernels)
