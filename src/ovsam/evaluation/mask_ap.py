"""Mask AP from a detector's boxes: each detection box prompts a mask, scored with pycocotools.

``detections``: a COCO results file (``[{"image_id", "category_id", "bbox" XYWH, "score"}]``)
from any detector. Every box is segmented (the detector's class and score are kept) and the
masks are written as COCO ``segm`` results (``segm_results.json``) and evaluated with
``COCOeval(iouType="segm")`` against the annotation file. Needs the ``[coco]`` extra.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ovsam.errors import OVSamError
from ovsam.fileio import atomic_write_json
from ovsam.image_io import load_image
from ovsam.masks import encode_rle

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def segment_detections(
    segment: Callable[[np.ndarray, np.ndarray], np.ndarray],
    annotations: Mapping[str, Any],
    image_root: str | Path,
    detections: list[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """COCO ``segm`` results: ``segment(image, Nx4 XYXY boxes) -> NxHxW bool`` per image."""
    by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for det in detections:
        by_image[int(det["image_id"])].append(det)
    files = {
        int(img["id"]): img.get("file_name") or str(img["coco_url"]).rsplit("/", 1)[-1]
        for img in annotations["images"]
    }
    results = []
    for image_id, dets in by_image.items():
        image = load_image(Path(image_root) / files[image_id])
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=np.float32
        )
        masks = segment(image, boxes)
        for det, mask in zip(dets, masks, strict=True):
            rle = encode_rle(mask)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(det["category_id"]),
                    "score": float(det["score"]),
                    "segmentation": rle,
                }
            )
    return results


def mask_ap(
    annotations_path: str | Path, results: list[dict[str, Any]], out_dir: str | Path
) -> dict[str, float]:
    """Run ``COCOeval`` (segm) on ``results``; write them and the stats (in %) to ``out_dir``."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise OVSamError("mask AP needs pycocotools: pip install 'ovsam[coco]'") from exc
    out = Path(out_dir)
    atomic_write_json(out / "segm_results.json", results)
    gt = COCO(str(annotations_path))
    dt = gt.loadRes(json.loads((out / "segm_results.json").read_text())) if results else None
    if dt is None:
        raise OVSamError("no detections to evaluate")
    evaluator = COCOeval(gt, dt, iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = {name: float(v) * 100 for name, v in zip(STAT_NAMES, evaluator.stats[:6], strict=True)}
    atomic_write_json(out / "mask_ap.json", stats)
    return stats
