"""Dataset-scale labelling (``npsam3 label``): every image encoded once and every prompt run on
its embedding; one JSONL row per image, resumable after a crash; a COCO file built from the rows.

    from npsam3.label import label
    summary = label(["photos/"], ["a dog", "a cat"], "weights/sam3-bundle", "out/labels",
                    coco="out/coco.json", workers=2)

inputs (folders, globs, manifests -> paths), labeler (one image -> one row), job (OUT, resume,
the writing loop), coco (rows -> COCO), parallel (worker processes), ray_job (Ray Data).
"""

from .job import Summary, label

__all__ = ["Summary", "label"]
