"""Mask AP from a detector's boxes: each detection box prompts a mask, scored with pycocotools.

``detections``: a COCO results file (``[{"image_id", "category_id", "bbox" XYWH, "score"}]``)
from any detector. Every box is segmented (the detector's class and score are kept) and the
masks are written as COCO ``segm`` results (``segm_results.json``) and evaluated with
``COCOeval(iouType="segm")`` against the annotation file, restricted to the evaluated images and
classes. Needs the ``[coco]`` extra.
:func:`read_detections` checks the file before any work (a negative width or height is refused
there: no XYWH box has one); a statistic without ground truth (e.g. ``APl`` when no object is
large, COCOeval's -1) is reported as None.

A box that is no prompt (less than 1 pixel wide or high once clipped to its image, e.g. a
detector's sub-pixel box or one outside the image) still counts, as in COCO's tooling: the
detection keeps its class and score and gets an empty mask (nothing is decoded for it).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ovsam.boxes import clip_to_image
from ovsam.data.instances import is_int, load_annotated_image, read_annotations
from ovsam.data.polygons import check_polygons, polygons_to_mask
from ovsam.errors import InputError, OVSamError
from ovsam.fileio import atomic_write_json
from ovsam.masks import encode_rle, rle_runs

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DETECTION_FIELDS = frozenset({"image_id", "category_id", "bbox", "score"})


def _coco_tools() -> tuple[Any, Any]:
    """pycocotools' ``COCO`` and ``COCOeval`` (an :class:`OVSamError` without the extra)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise OVSamError("mask AP needs pycocotools: pip install 'ovsam[coco]'") from exc
    return COCO, COCOeval


def read_detections(
    path: str | Path,
    annotations: Mapping[str, Any],
    image_ids: Collection[int] | None = None,
    category_ids: Collection[int] | None = None,
) -> list[dict[str, Any]]:
    """The detections of the COCO results file ``path`` on the evaluated images ``image_ids`` of
    the evaluated classes ``category_ids`` (all when None: ``--limit`` and ``--split`` apply to
    mask AP too), checked against ``annotations`` before any work: integer ``image_id`` of the
    file and ``category_id``, a 4-number ``bbox`` without a negative width or height, a numeric
    ``score``, a positive integer height and width of the image of each selected detection
    (COCOeval draws it at that size) and at least one detection left once selected. The ground
    truth of the evaluated images is checked as COCOeval reads it (:func:`_check_ground_truth`).
    Also checks that
    pycocotools is installed. Any problem is an :class:`InputError` naming the file and the
    detection or annotation."""
    _coco_tools()
    try:
        detections = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read detections {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InputError(f"detections file {path} is not valid JSON ({exc})") from exc
    if not isinstance(detections, list) or not detections:
        raise InputError(f"detections file {path} must be a non-empty JSON list of detections")
    sizes = _image_sizes(annotations)
    wanted = set(sizes) if image_ids is None else set(image_ids)
    classes = None if category_ids is None else set(category_ids)
    for index, det in enumerate(detections):
        where = f"detections file {path}: detection {index}"
        if not isinstance(det, dict) or not DETECTION_FIELDS <= set(det):
            raise InputError(f"{where} needs image_id, category_id, bbox and score")
        for field in ("image_id", "category_id"):
            if not is_int(det[field]):
                raise InputError(f"{where}: {field} must be an integer, got {det[field]!r}")
        if det["image_id"] not in sizes:
            raise InputError(f"{where}: image_id {det['image_id']!r} is not in the annotation file")
        bbox, score = det["bbox"], det["score"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise InputError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise InputError(f"{where}: bbox {bbox!r} has a negative width or height (XYWH)")
        if not _is_number(score):
            raise InputError(f"{where}: score must be a number, got {score!r}")
        if det["image_id"] in wanted and (classes is None or det["category_id"] in classes):
            _check_size(sizes, det["image_id"], f"detection {index} of {path}")  # drawn there
    _check_ground_truth(annotations, sizes, wanted)
    on_images = [d for d in detections if d["image_id"] in wanted]
    selected = [d for d in on_images if classes is None or d["category_id"] in classes]
    if not selected:
        raise InputError(
            f"detections file {path}: none of its {len(detections)} detections is on an "
            f"evaluated image of an evaluated class ({len(detections) - len(on_images)} on "
            f"other images, {len(on_images)} of other classes)"
        )
    return selected


def _image_sizes(annotations: Mapping[str, Any]) -> dict[int, tuple[object, object]]:
    """``image id -> (height, width)`` as the file gives them (None where missing)."""
    return {img["id"]: (img.get("height"), img.get("width")) for img in annotations["images"]}


def _check_size(sizes: Mapping[int, tuple[object, object]], image_id: int, what: str) -> None:
    """Refuse an image without a positive integer height and width: COCOeval reads them for
    every annotation and detection on it (``what`` says which one)."""
    if not all(is_int(v) and v > 0 for v in sizes[image_id]):
        raise InputError(
            f"image id {image_id} needs a positive integer height and width "
            f"(mask AP reads {what} at that size)"
        )


def _check_ground_truth(
    annotations: Mapping[str, Any],
    sizes: Mapping[int, tuple[object, object]],
    image_ids: Collection[int],
) -> None:
    """Refuse what COCOeval would crash or hang on, or score wrongly, after the whole
    evaluation: an annotation on an image the file does not list (``sizes``:
    :func:`_image_sizes`); on the images ``image_ids``, an annotation without a numeric
    ``area`` or an ``iscrowd``, an image without a positive integer height and width
    (:func:`_check_size`), a polygon that :func:`~ovsam.data.polygons.check_polygons` refuses,
    or an RLE (crowd regions included) that does not decode to its image's size (pycocotools
    loops forever on short counts). Annotation ids need no check: :func:`_rasterised`
    renumbers them."""
    for ann in annotations["annotations"]:
        where = f"annotation id {ann.get('id')}"
        if ann["image_id"] not in sizes:
            raise InputError(
                f"{where} is on image id {ann['image_id']}, which the file does not list "
                "(needed for mask AP)"
            )
        if ann["image_id"] not in image_ids:
            continue
        for field in ("area", "iscrowd"):  # COCOeval reads both
            if field not in ann:
                raise InputError(f"{where} has no {field!r} (needed for mask AP)")
        if not _is_number(ann["area"]) or ann["area"] < 0:
            raise InputError(f"{where}: area {ann['area']!r} is not a number >= 0 (mask AP)")
        _check_size(sizes, ann["image_id"], f"the ground truth of {where}")
        size = sizes[ann["image_id"]]
        try:
            if isinstance(ann["segmentation"], list):
                check_polygons(ann["segmentation"])
            elif tuple(rle_runs(ann["segmentation"])[:2]) != size:
                raise InputError(
                    f"its RLE size {ann['segmentation']['size']} is not its image's "
                    f"[{size[0]}, {size[1]}]"
                )
        except InputError as exc:
            raise InputError(f"{where}: {exc} (needed for mask AP)") from exc


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def format_stats(stats: Mapping[str, float | None]) -> str:
    """``AP 41.2, ..., APl n/a`` for the terminal."""
    return ", ".join(f"{k} {'n/a' if v is None else f'{v:.1f}'}" for k, v in stats.items())


def promptable_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Which ``Nx4`` XYXY ``boxes`` can prompt a ``height x width`` image: at least 1 pixel
    wide and high once clipped to it (what :func:`~ovsam.boxes.clip_boxes_to_image` requires of
    a box with ``x0 <= x1`` and ``y0 <= y1``: :func:`~ovsam.boxes.clip_to_image`). Bool ``N``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ~clip_to_image(boxes, height, width)[1]


def segment_detections(
    segment: Callable[[np.ndarray, np.ndarray], np.ndarray],
    annotations: Mapping[str, Any],
    image_root: str | Path,
    detections: list[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """COCO ``segm`` results: ``segment(image, Nx4 XYXY boxes) -> NxHxW bool`` per image, called
    with the :func:`promptable_boxes` only (a detection of another box gets an empty mask;
    ``segment`` is not called for an image without any). Also returns the reason per image whose
    file cannot be read (an :class:`InputError`): its detections are left out."""
    by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for det in detections:
        by_image[int(det["image_id"])].append(det)
    infos = {int(img["id"]): img for img in annotations["images"]}
    results, unreadable = [], {}
    for image_id, dets in by_image.items():
        try:
            image = load_annotated_image(Path(image_root), infos[image_id])
        except InputError as exc:
            unreadable[image_id] = str(exc)
            continue
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=np.float32
        )
        keep = promptable_boxes(boxes, *image.shape[:2])
        kept = segment(image, boxes[keep]) if keep.any() else []
        if len(kept) != int(keep.sum()):
            raise ValueError(f"segment gave {len(kept)} masks for {int(keep.sum())} boxes")
        empty, segmented = np.zeros(image.shape[:2], dtype=bool), iter(kept)
        masks = [next(segmented) if k else empty for k in keep]
        results += [
            {
                "image_id": image_id,
                "category_id": int(det["category_id"]),
                "score": float(det["score"]),
                "segmentation": encode_rle(mask),
            }
            for det, mask in zip(dets, masks, strict=True)
        ]
    return results, unreadable


def _rasterised(annotations: dict[str, Any], image_ids: Collection[int] | None) -> dict[str, Any]:
    """``annotations`` with the polygons of the images ``image_ids`` (all when None) as the RLE
    of :func:`~ovsam.data.polygons.polygons_to_mask`: the same pixels COCOeval would draw for
    ordinary polygons, and one reaching far outside its image cannot exhaust memory. The kept
    annotations are numbered 1..N: COCOeval takes id 0 for "unmatched" and keeps one of
    several annotations with one id (a wrong AP either way), and needs an id on each."""
    wanted = None if image_ids is None else set(image_ids)
    infos = {img["id"]: img for img in annotations["images"]}
    kept = []
    for ann in annotations["annotations"]:
        if wanted is not None and ann["image_id"] not in wanted:
            continue
        if isinstance(ann["segmentation"], list):
            info = infos[ann["image_id"]]
            mask = polygons_to_mask(ann["segmentation"], info["height"], info["width"])
            ann = {**ann, "segmentation": encode_rle(mask)}
        kept.append({**ann, "id": len(kept) + 1})
    return {**annotations, "annotations": kept}


def mask_ap(
    annotations_path: str | Path,
    results: list[dict[str, Any]],
    out_dir: str | Path,
    image_ids: Collection[int] | None = None,
    category_ids: Collection[int] | None = None,
) -> dict[str, float | None]:
    """Run ``COCOeval`` (segm) on ``results``, over ``image_ids`` and ``category_ids`` only when
    given (else every image and class of the file); write the results and the stats (in %, None
    where COCOeval has no data) to ``out_dir``. pycocotools' own printing is swallowed: the
    caller reports the stats (:func:`format_stats`)."""
    COCO, COCOeval = _coco_tools()  # noqa: N806 - pycocotools' class names
    out = Path(out_dir)
    atomic_write_json(out / "segm_results.json", results)
    if not results:
        raise OVSamError("no detections to evaluate (on the selected images and classes)")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()  # polygons as ovsam rasterises them (clipped near the image: see polygons)
        gt.dataset = _rasterised(read_annotations(annotations_path), image_ids)
        gt.createIndex()
        dt = gt.loadRes(json.loads((out / "segm_results.json").read_text()))
        evaluator = COCOeval(gt, dt, iouType="segm")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        if category_ids is not None:
            evaluator.params.catIds = sorted(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {
        name: None if v < 0 else float(v) * 100
        for name, v in zip(STAT_NAMES, evaluator.stats[:6], strict=True)
    }
    atomic_write_json(out / "mask_ap.json", stats)
    return stats
