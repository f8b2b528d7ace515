"""The parity reports users run on their own checkpoints (npsam3-convert --parity): every stage is
listed and within tolerance on the test model, for the detector and the interactive predictor."""

import re

import pytest

from npsam3_convert.cli import main as convert_main
from npsam3_convert.parity_interactive import interactive_parity

from .conftest import ASSETS

TOL = 1e-5
INTERACTIVE_STAGES = ["sparse embeddings", "dense embeddings", "dense PE",
                      "decoder tokens (transformer queries)", "decoder image side (transformer keys)",
                      "mask decoder low-res logits", "mask decoder IoU predictions",
                      "end to end low-res masks", "end to end IoU predictions"]
NECK = ["tracker neck high_res_feats_0", "tracker neck high_res_feats_1", "tracker neck image_embed"]


def stage_errors(report):
    """{stage: max relative error} of the tables in a report (columns: stage, max abs, max rel,
    optional noise floor)."""
    errors = {}
    for line in report.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 3 and re.fullmatch(r"[\d.]+e[+-]\d+", cells[1]):
            errors[cells[0]] = float(cells[2])
    return errors


def final_ious(report):
    return [float(v) for v in re.search(r"IoU with PyTorch's ([\d., ]+);", report).group(1).split(", ")]


@pytest.mark.parametrize("end_to_end", [True, False], ids=["checkpoint", "bundle"])
def test_interactive_parity_report(torch_model, bundle, end_to_end):
    prompts = {"point_coords": [[300, 200], [100, 350]], "point_labels": [1, 0],
               "box": [150, 100, 450, 300]}
    report = interactive_parity(torch_model if end_to_end else None, bundle,
                                ASSETS / "coffee.jpg", prompts)
    errors = stage_errors(report)
    assert sorted(errors) == sorted(INTERACTIVE_STAGES + (NECK if end_to_end else []))
    assert all(v <= TOL for v in errors.values()), errors
    ious = final_ious(report)
    assert len(ious) == 3 and min(ious) >= 0.999


def test_parity_command_on_a_bundle(bundle, capsys):
    assert convert_main(["--parity", str(bundle), str(ASSETS / "coins.jpg"), "a coin",
                         "--threshold", "0.4", "--point", "100,150"]) == 0
    report = capsys.readouterr().out
    errors = stage_errors(report)
    for stage in ("fusion encoder memory", "mask logits", *INTERACTIVE_STAGES):
        assert errors[stage] <= TOL, (stage, errors)
    assert "point_coords': [[100.0, 150.0]]" in report
    assert float(re.search(r"min mask IoU ([\d.]+)", report).group(1)) >= 0.999
    assert min(final_ious(report)) >= 0.999
