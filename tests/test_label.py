"""`npsam3 label`: rows vs `npsam3 segment`, the COCO file vs pycocotools, resume after SIGTERM,
SIGKILL and a torn last line, bad manifest entries, refusals; the worker-process and Ray Data
paths against the single-process one, row for row.

Every run here holds itself to one compute thread (the detector's float sums depend on how many
threads split them, so rows are bit-identical between runs of equal threads per worker, which is
what the parallel paths are compared at). The photos are small; the model input is 1008 px
whatever their size, so the cost is one encoder run per image and one detector run per prompt.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from npsam3.label.parallel import thread_environment
from npsam3.rle import rle_decode

from .conftest import ASSETS
from .test_cli import NO_TORCH, snapshot

PROMPT = "a coin"
ONE_THREAD = {**os.environ, **thread_environment(1)}


def label_command(*args):
    return [sys.executable, "-c", NO_TORCH.format(module="npsam3.cli"), "label", *map(str, args)]


def run(*args, **kwargs):
    return subprocess.run(label_command(*args), capture_output=True, text=True, timeout=600,
                          env=ONE_THREAD, **kwargs)


def label_cli(bundle, out, *args):
    return run(*args, "--bundle", bundle, "--out", out, "--threads", "1")


def rows(out):
    """{path: row} of OUT/labels.jsonl; a path twice is an error."""
    lines = (out / "labels.jsonl").read_text().splitlines()
    by_path = {json.loads(line)["path"]: json.loads(line) for line in lines}
    assert len(by_path) == len(lines), "a path has more than one row"
    return by_path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three small photos (downscaled copies of the shipped ones), one in a subfolder."""
    d = tmp_path_factory.mktemp("photos")
    (d / "more").mkdir()
    for name, where in (("coins", "."), ("chelsea", "."), ("astronaut", "more")):
        im = Image.open(ASSETS / f"{name}.jpg")
        im.thumbnail((160, 160))
        im.save(d / where / f"{name}.jpg", quality=90)
    return d


@pytest.fixture(scope="module")
def reference(bundle, photos, tmp_path_factory):
    """An uninterrupted single-process run over the photo folder: OUT."""
    out = tmp_path_factory.mktemp("reference") / "out"
    r = label_cli(bundle, out, photos, "--prompt", PROMPT)
    assert r.returncode == 0, r.stderr
    assert "3 image(s) labelled" in r.stdout and "Traceback" not in r.stderr
    return out


def test_a_folder_is_labelled_recursively_once_per_image(reference, photos):
    labelled = rows(reference)
    assert sorted(labelled) == sorted(str(p.resolve()) for p in photos.rglob("*.jpg"))
    job = json.loads((reference / "job.json").read_text())
    assert job["settings"]["prompts"] == [PROMPT] and job["settings"]["threshold"] == 0.5
    assert (reference / "failures.jsonl").read_text() == ""
    for path, row in labelled.items():
        (result,) = row["results"]
        assert (result["prompt"], result["image"]) == (PROMPT, os.path.basename(path))
        assert (row["height"], row["width"]) == Image.open(path).size[::-1]


@pytest.fixture(scope="module")
def two_prompts(bundle, photos, tmp_path_factory):
    """coins.jpg labelled with two prompts (+ a COCO file), and `npsam3 segment` run on it with
    each prompt alone (both at once): (label OUT, COCO path, [segment JSON per prompt])."""
    tmp = tmp_path_factory.mktemp("two-prompts")
    coins, prompts = photos / "coins.jpg", [PROMPT, "a cat"]
    segments = [subprocess.Popen(
        [sys.executable, "-c", NO_TORCH.format(module="npsam3.cli"), "segment", str(coins),
         "--bundle", str(bundle), "--prompt", prompt, "--out", str(tmp / f"segment{i}")],
        env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i, prompt in enumerate(prompts)]
    (tmp / "prompts.txt").write_text(f"{prompts[1]}\n\n")
    r = label_cli(bundle, tmp / "out", coins, "--prompt", prompts[0], "--prompts",
                  tmp / "prompts.txt", "--coco", tmp / "coco.json")
    assert r.returncode == 0, r.stderr
    for p in segments:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    return tmp / "out", tmp / "coco.json", [
        json.loads((tmp / f"segment{i}" / "coins.segment.json").read_text()) for i in range(2)]


def test_two_prompts_on_one_image_equal_two_segment_runs(two_prompts):
    out, _, segmented = two_prompts
    (row,) = rows(out).values()
    assert [r["prompt"] for r in row["results"]] == [s["prompt"] for s in segmented]
    for result, segment in zip(row["results"], segmented):
        assert result["instances"] == segment["instances"]
        assert {k: result[k] for k in ("height", "width", "image", "threshold")} == \
            {k: segment[k] for k in ("height", "width", "image", "threshold")}
    assert any(s["instances"] for s in segmented), "the test needs instances to compare"


def test_coco_file_loads_in_pycocotools_with_the_masks_of_segment(two_prompts):
    from pycocotools.coco import COCO

    _, coco_file, segmented = two_prompts
    coco = COCO(str(coco_file))
    (image,) = coco.loadImgs(coco.getImgIds())
    assert image["file_name"].endswith("coins.jpg")
    for segment in segmented:
        (category,) = coco.getCatIds(catNms=[segment["prompt"]])
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=category)),
                      key=lambda a: -a["score"])
        assert len(anns) == len(segment["instances"])
        for ann, inst in zip(anns, segment["instances"]):
            mask = coco.annToMask(ann)
            assert (mask == rle_decode(inst["segmentation"])).all()
            assert ann["area"] == mask.sum() == inst["area"] and ann["iscrowd"] == 0
            x0, y0, x1, y1 = inst["box"]
            assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.011)
            assert ann["score"] == inst["score"]


def _wait_for_rows(proc, out, n):
    """Wait until OUT/labels.jsonl holds ``n`` whole rows while ``proc`` runs."""
    labels = out / "labels.jsonl"
    while not (labels.exists() and labels.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)


def test_killed_jobs_resume_with_exactly_the_rows_of_an_uninterrupted_run(bundle, photos,
                                                                         reference, tmp_path):
    out = tmp_path / "out"
    args = label_command(photos, "--prompt", PROMPT, "--bundle", bundle, "--out", out,
                         "--threads", "1")
    for n, sig in ((1, signal.SIGTERM), (2, signal.SIGKILL)):
        proc = subprocess.Popen(args, env=ONE_THREAD, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        _wait_for_rows(proc, out, n)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if sig == signal.SIGTERM:
            assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        assert (out / "labels.jsonl").read_bytes().count(b"\n") < 3, "killed before the end"
    done = (out / "labels.jsonl").read_bytes().count(b"\n")
    r = run(*args[4:])
    assert r.returncode == 0, r.stderr
    assert f"{3 - done} image(s) labelled" in r.stdout and f"{done} done before" in r.stdout
    assert rows(out) == rows(reference)


def test_a_torn_last_line_and_a_changed_file_are_labelled_again(bundle, photos, reference,
                                                               tmp_path):
    """The last row cut mid-way (a crash mid-write) and another row's sha256 not the file's
    (the image changed since): both images are labelled again, the third is skipped."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    lines = (out / "labels.jsonl").read_bytes().splitlines(keepends=True)
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "sha256": "0" * 64}).encode() + b"\n"
    lines[-1] = lines[-1][:len(lines[-1]) // 2]
    (out / "labels.jsonl").write_bytes(b"".join(lines))
    r = label_cli(bundle, out, photos, "--prompt", PROMPT)
    assert r.returncode == 0, r.stderr
    assert "last line is incomplete" in r.stderr and "1 labelled image(s) changed" in r.stderr
    assert "2 image(s) labelled" in r.stdout and "1 done before" in r.stdout
    assert rows(out) == rows(reference)


def test_two_workers_on_a_manifest_with_missing_unreadable_and_duplicate_paths(
        bundle, photos, reference, tmp_path):
    """Duplicates are labelled once, bad entries go to failures.jsonl (exit 1), and the rows of
    two worker processes are those of one process."""
    (tmp_path / "notes.jpg").write_text("not a picture")
    (tmp_path / "cut.jpg").write_bytes((photos / "coins.jpg").read_bytes()[:600])
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# photos\n{photos / 'chelsea.jpg'}\nnotes.jpg\ngone.jpg\n"
                        f"{os.path.relpath(photos / 'chelsea.jpg', tmp_path)}\ncut.jpg\n"
                        f"{photos / 'more' / '..' / 'coins.jpg'}\n")
    out = tmp_path / "out"
    r = label_cli(bundle, out, manifest, "--prompt", PROMPT, "--workers", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "3 of 5 image(s) failed" in r.stderr
    assert "holds RANDOM weights" in r.stderr  # said by the parent, which loads no model
    labelled = rows(out)
    assert sorted(labelled) == sorted(str((photos / n).resolve()) for n in ("chelsea.jpg", "coins.jpg"))
    assert labelled == {p: rows(reference)[p] for p in labelled}
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(f["path"]) for f in failures) == ["cut.jpg", "gone.jpg",
                                                                    "notes.jpg"]
    for f in failures:
        assert f["error"] and "\n" not in f["error"] and os.path.basename(f["path"]) in f["error"]


def test_ray_data_gives_the_rows_of_one_process(bundle, photos, reference, tmp_path):
    import ray

    from npsam3.label import label

    csv = tmp_path / "images.csv"
    csv.write_text(f"id,path\n1,{photos / 'coins.jpg'}\n2,{photos / 'more' / 'astronaut.jpg'}\n")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = label([csv], [PROMPT], bundle, tmp_path / "out", ray="", threads=1)
    finally:
        ray.shutdown()
    assert (summary.labelled, summary.failed) == (2, 0)
    labelled = rows(tmp_path / "out")
    assert len(labelled) == 2 and labelled == {p: rows(reference)[p] for p in labelled}


def test_other_settings_on_an_existing_job_are_refused(bundle, photos, reference):
    before = snapshot(reference)
    for args in (["--prompt", "a cat"], ["--prompt", PROMPT, "--threshold", "0.4"]):
        r = label_cli(bundle, reference, photos, *args)
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
        assert "other settings" in r.stderr and "--force" in r.stderr
    assert snapshot(reference) == before


@pytest.mark.parametrize("args, message", [
    (["--prompt", "  "], "prompt 1 is empty"),
    (["--prompt", "a dog", "--prompt", "a dog"], "given twice"),
    ([], "give --prompt or --prompts FILE"),
])
def test_bad_prompts_are_refused(bundle, photos, tmp_path, args, message):
    r = label_cli(bundle, tmp_path / "out", photos, *args)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_coco_over_an_existing_file_is_refused_without_force(bundle, photos, tmp_path):
    coco = tmp_path / "coco.json"
    coco.write_text("{}")
    r = label_cli(bundle, tmp_path / "out", photos, "--prompt", PROMPT, "--coco", coco)
    assert r.returncode == 1 and "coco.json exists" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and coco.read_text() == "{}"
    assert not (tmp_path / "out").exists()


def test_the_label_command_does_not_import_ray(bundle, photos, tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys\nfrom npsam3.cli import main\n"
                        "code = main(sys.argv[1:])\nsys.exit(code if 'ray' not in sys.modules else 9)",
                        "label", photos, "--bundle", bundle, "--out", tmp_path, "--prompt", " "],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "prompt 1 is empty" in r.stderr, r.stderr
