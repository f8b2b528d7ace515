"""Label rows -> a COCO instance-segmentation dataset (what ``pycocotools.coco.COCO`` loads).

images: one per row, sorted by path (ids from 1; ``file_name`` the real path, plus the file's
sha256); categories: the prompts, in order (ids from 1); annotations: every instance, with its
COCO RLE ``segmentation``, ``bbox`` [x, y, w, h] in pixels, ``area`` (mask pixels), ``score``
and ``iscrowd`` 0. The same rows always give the same file, whatever order they were written in.
"""


def coco_dataset(rows, settings):
    """The COCO dict of label rows (``labeler``) made with ``settings`` (``job.job_settings``)."""
    categories = [{"id": i, "name": prompt, "supercategory": ""}
                  for i, prompt in enumerate(settings["prompts"], 1)]
    category = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image_id, row in enumerate(sorted(rows, key=lambda r: r["path"]), 1):
        images.append({"id": image_id, "file_name": row["path"], "height": row["height"],
                       "width": row["width"], "sha256": row["sha256"]})
        for result in row["results"]:
            for inst in result["instances"]:
                x0, y0, x1, y1 = inst["box"]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": category[result["prompt"]],
                    "segmentation": inst["segmentation"], "area": inst["area"],
                    "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": inst["score"], "iscrowd": 0})
    return {"info": {"description": "npsam3 label", "prompts": settings["prompts"],
                     "threshold": settings["threshold"], "nms_iou": settings["nms_iou"],
                     "presence": settings["presence"], "bundle": settings["bundle"]},
            "images": images, "categories": categories, "annotations": annotations}
