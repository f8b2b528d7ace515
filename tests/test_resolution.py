"""Bundles at another input size (npsam3-convert --resolution): a model with a convolutional
student-like trunk (the shape of the EfficientSAM3 fork's ListWrapper(ImageStudentEncoder(...)):
a CNN, a 1x1-BN-GELU-3x3 head to 1024 channels, a bilinear resize to ``embed_size``) and sam3's
own neck and detector, exported at 672 px and checked against PyTorch run at 672 px."""

import re

import pytest
import torch
import torch.nn.functional as F

import npsam3
from npsam3.errors import Npsam3Error
from npsam3_convert.models import CONTEXT_LENGTH, _assemble, default_bpe_path, set_resolution
from npsam3_convert.parity import concept_parity
from npsam3_convert.reference import patch_sam3_for_cpu, randomize_

from .conftest import ASSETS

R = 672
STAGE_TOL = 1e-5


class StudentEncoder(torch.nn.Module):
    """backbone (stride 16) -> head -> bilinear resize to embed_size x embed_size, 1024 channels."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(*[torch.nn.Conv2d(c, 48, 3, 2, 1) for c in (3, 48, 48, 48)])
        self.head = torch.nn.Sequential(torch.nn.Conv2d(48, 1024, 1, bias=False),
                                        torch.nn.BatchNorm2d(1024), torch.nn.GELU(),
                                        torch.nn.Conv2d(1024, 1024, 3, padding=1))
        self.embed_size = 72

    def forward(self, x):
        feats = self.head(self.backbone(x))
        return F.interpolate(feats, size=(self.embed_size, self.embed_size), mode="bilinear",
                             align_corners=False)


class StudentTrunk(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = StudentEncoder()
        self.channel_list = [1024]

    def forward(self, x):
        return [self.model(x)]


@pytest.fixture(scope="module")
def student_model():
    patch_sam3_for_cpu()
    from sam3 import model_builder as mb
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer

    neck = mb._create_vit_neck(mb._create_position_encoding(precompute_resolution=1008),
                               StudentTrunk())
    text = VETextEncoder(d_model=256, tokenizer=SimpleTokenizer(bpe_path=default_bpe_path()),
                         width=256, heads=4, layers=2, context_length=CONTEXT_LENGTH)
    model = randomize_(_assemble(neck, text), seed=3)
    set_resolution(model, {"backbone": "repvit"}, R)
    return model


def test_a_student_bundle_at_672_matches_pytorch_at_672(student_model, tmp_path):
    from npsam3_convert.bundle import export_bundle

    manifest = export_bundle(student_model, tmp_path / "b", context_length=CONTEXT_LENGTH,
                             resolution=R)  # verified against PyTorch at 672 on export
    assert manifest["image_trunk"]["resolution"] == R and manifest["interactive"] is False
    model = npsam3.load_model(tmp_path / "b")
    state = npsam3.Sam3Processor(model).set_image(ASSETS / "coins.jpg")
    assert [f.shape[-1] for f in state["backbone_out"]["backbone_fpn"]] == [192, 96, 48]
    result = concept_parity(student_model, tmp_path / "b", ASSETS / "coins.jpg", "a coin",
                            threshold=0.45)
    errors = {row[0]: row[2] for row in result["rows"]}
    detector = [s for s in errors if not re.match(r"preprocessed|image encoder|text", s)]
    assert len(detector) == 9 and all(errors[s] <= STAGE_TOL for s in detector), errors
    assert all(errors[s] <= 1e-4 for s in errors)
    assert errors["preprocessed image"] == 0  # resized to 672 exactly as torchvision does
    assert len(result["kept"]) > 3 and list(result["kept"]) == list(result["ref_kept"])
    assert min(r["iou"] for r in result["instances"]) >= 0.999


@pytest.mark.parametrize("variant, resolution, message", [
    ({"backbone": "vit-h", "family": "sam3", "variant": None, "text_encoder": "ve-text",
      "context_length": 32}, 672, "RoPE tables and attention windows are laid out for 1008 px"),
    ({"backbone": "tinyvit", "family": "efficientsam3", "variant": "11m",
      "text_encoder": "MobileCLIP-S0", "context_length": 16}, 672, "fixed 1008 px input"),
    ({"backbone": "repvit"}, 701, "must be a multiple of 14"),
    ({"backbone": "repvit"}, 140, "between 224 and 2016"),
])
def test_resolution_refusals(variant, resolution, message):
    with pytest.raises(Npsam3Error, match=message):
        set_resolution(torch.nn.Module(), variant, resolution)
