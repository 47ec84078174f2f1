"""Mask AP on detections (``ovsam eval --detections``): COCOeval's numbers for known masks,
and detections whose box cannot prompt (sub-pixel, outside the image) kept as empty masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ovsam.data.instances import InstanceDataset
from tiny_coco import write_tiny_coco

pytest.importorskip("pycocotools")


def _ground_truth_detections(data: dict) -> list[dict]:
    """Each annotation of ``data`` as a detection of its box and class, score 0.9."""
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in data["annotations"]
    ]


def test_mask_ap_of_perfect_masks_is_100(tmp_path: Path) -> None:
    from ovsam.evaluation.mask_ap import format_stats, mask_ap, segment_detections

    path = write_tiny_coco(tmp_path / "coco", images=3)
    data = json.loads(path.read_text())
    dataset = InstanceDataset(data, tmp_path / "coco" / "images")
    items = {dataset[i].image_id: dataset[i] for i in range(len(dataset))}
    detections = _ground_truth_detections(data)

    def oracle(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        item = next(it for it in items.values() if np.array_equal(it.image, image))
        order = [int(np.argmin(np.abs(item.boxes - b).sum(1))) for b in boxes]
        return item.masks[order]

    results, unreadable = segment_detections(oracle, data, tmp_path / "coco" / "images", detections)
    assert unreadable == {}
    assert len(results) == len(detections)
    stats = mask_ap(path, results, tmp_path / "out")
    assert stats["AP"] == pytest.approx(100.0) and stats["AP50"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "out" / "mask_ap.json").read_text())
    assert saved["AP75"] == pytest.approx(100.0)
    assert stats["APl"] is None and saved["APl"] is None  # no large object: COCOeval's -1
    assert format_stats(stats).endswith("APm 100.0, APl n/a")
    shifted = [dict(r, category_id=1 if r["category_id"] != 1 else 3) for r in results]
    assert mask_ap(path, shifted, tmp_path / "out2")["AP"] < 50.0


def test_a_detection_box_that_is_no_prompt_counts_with_an_empty_mask(tmp_path: Path) -> None:
    """COCO's tooling scores every detection: a sub-pixel box, or one outside its image, keeps
    its score with an empty mask (so it is a false positive), and is never prompted."""
    from ovsam.evaluation.mask_ap import mask_ap, segment_detections
    from ovsam.masks import encode_rle

    path = write_tiny_coco(tmp_path / "coco", images=2)
    data = json.loads(path.read_text())
    dataset = InstanceDataset(data, tmp_path / "coco" / "images")
    items = [dataset[i] for i in range(len(dataset))]
    prompted: list[np.ndarray] = []

    def oracle(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        prompted.extend(boxes)
        item = next(it for it in items if np.array_equal(it.image, image))
        return item.masks[[int(np.argmin(np.abs(item.boxes - b).sum(1))) for b in boxes]]

    good = _ground_truth_detections(data)
    no_prompt = [  # above the good ones: they lower AP
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 0.4, 10], "score": 0.95},
        {"image_id": 2, "category_id": 3, "bbox": [500, 10, 20, 20], "score": 0.97},
        {"image_id": 2, "category_id": 17, "bbox": [40, 96, 10, 0], "score": 0.99},
    ]
    results, _ = segment_detections(oracle, data, tmp_path / "coco" / "images", good + no_prompt)
    assert len(results) == len(good) + len(no_prompt) and len(prompted) == len(good)
    empty = encode_rle(np.zeros((96, 128), dtype=bool))
    expected, _ = segment_detections(oracle, data, tmp_path / "coco" / "images", good)
    expected += [
        {"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"],
         "segmentation": empty}
        for d in no_prompt
    ]  # fmt: skip
    stats = mask_ap(path, results, tmp_path / "a")
    assert stats == mask_ap(path, expected, tmp_path / "b") and stats["AP"] < 99.0
    assert mask_ap(path, expected[: len(good)], tmp_path / "c")["AP"] == pytest.approx(100.0)
    only_no_prompts, _ = segment_detections(oracle, data, tmp_path / "coco" / "images", no_prompt)
    assert len(only_no_prompts) == 3 and len(prompted) == 2 * len(good)  # segment never called


def _ground_truth_results(data: dict) -> list[dict]:
    """Each annotation of ``data`` as a result of its own mask (ovsam's rasterisation)."""
    from ovsam.data.polygons import polygons_to_mask
    from ovsam.masks import encode_rle

    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    results = []
    for ann in data["annotations"]:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            segmentation = encode_rle(polygons_to_mask(segmentation, *sizes[ann["image_id"]]))
        results.append(
            {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
             "segmentation": segmentation}
        )  # fmt: skip
    return results


def test_ground_truth_polygons_far_outside_or_without_a_size_are_handled_up_front(
    tmp_path: Path,
) -> None:
    """COCOeval rasterises ground-truth polygons itself: a vertex at 1e9 crashed it (after the
    whole evaluation) and an image without height/width was a KeyError. The first is clipped as
    ovsam's ground truth is (its own mask scores 100), the second refused by read_detections
    before any work, as is an annotation on an image the file does not list."""
    from ovsam.errors import InputError
    from ovsam.evaluation.mask_ap import mask_ap, read_detections

    path = write_tiny_coco(tmp_path / "coco", images=1)
    data = json.loads(path.read_text())
    polygon = next(a for a in data["annotations"] if isinstance(a["segmentation"], list))
    x, y, w, h = polygon["bbox"]
    polygon["segmentation"] = [[x, y, 1e9, y, x + w, y + h, x, y + h]]
    path.write_text(json.dumps(data))
    (tmp_path / "d.json").write_text(json.dumps(_ground_truth_detections(data)))
    read_detections(tmp_path / "d.json", data)
    results = _ground_truth_results(data)
    assert mask_ap(path, results, tmp_path / "out")["AP"] == pytest.approx(100.0)
    assert mask_ap(path, results[1:], tmp_path / "out")["AP"] < 90.0
    for height in (None, True, 0, 96.0):  # None: no height at all; True is not a size
        if height is None:
            del data["images"][0]["height"]
        else:
            data["images"][0]["height"] = height
        with pytest.raises(InputError, match="image id 1 needs a positive integer height"):
            read_detections(tmp_path / "d.json", data)
    data["images"][0]["height"] = 96
    read_detections(tmp_path / "d.json", data)
    polygon["image_id"] = 7
    with pytest.raises(InputError, match="annotation id 1 is on image id 7, which the file"):
        read_detections(tmp_path / "d.json", data)


def test_images_that_are_not_evaluated_need_no_size(tmp_path: Path) -> None:
    """Only the evaluated images' ground truth is read: an image without height or width that
    has no annotation, or is left out (``--limit``), no longer crashes mask AP with a KeyError
    after the whole evaluation."""
    from ovsam.evaluation.mask_ap import mask_ap, read_detections

    path = write_tiny_coco(tmp_path / "coco", images=3, unannotated=(3,))
    data = json.loads(path.read_text())
    results = [r for r in _ground_truth_results(data) if r["image_id"] == 1]
    del data["images"][2]["height"], data["images"][1]["width"]
    path.write_text(json.dumps(data))
    (tmp_path / "d.json").write_text(json.dumps(_ground_truth_detections(data)))
    kept = read_detections(tmp_path / "d.json", data, [1, 3], [c["id"] for c in data["categories"]])
    assert {d["image_id"] for d in kept} == {1}
    assert mask_ap(path, results, tmp_path / "out", [1, 3])["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"size": [96, 128], "counts": [100, 20]},
            r"annotation id \d+: RLE counts sum to 120, expected 96x128",
        ),
        ({"size": [10, 10], "counts": [100]}, r"its RLE size \[10, 10\] is not its image's"),
        ({"area": None}, r"area None is not a number >= 0"),
        ({"area": "12"}, r"area '12' is not a number >= 0"),
    ],
)
def test_ground_truth_that_cocoeval_hangs_or_crashes_on_is_refused(
    tmp_path: Path, change: dict, message: str
) -> None:
    """A crowd RLE whose counts do not cover its image made pycocotools loop forever (the IoU
    protocol never decodes crowd regions); one of another size scored IoU -1; a null area
    crashed COCOeval. Each is now refused before any work."""
    from ovsam.errors import InputError
    from ovsam.evaluation.mask_ap import read_detections

    path = write_tiny_coco(tmp_path / "coco", images=2, crowd=(2,))
    data = json.loads(path.read_text())
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    if "area" in change:
        crowd.update(change)
    else:
        crowd["segmentation"] = change
    (tmp_path / "d.json").write_text(json.dumps(_ground_truth_detections(data)))
    with pytest.raises(InputError, match=message):
        read_detections(tmp_path / "d.json", data)
    read_detections(tmp_path / "d.json", data, [1])  # image 2 is not evaluated: not read


def test_a_detection_on_an_unannotated_image_without_a_size_is_refused_up_front(
    tmp_path: Path,
) -> None:
    """COCOeval draws every detection at its image's size: one on an evaluated image that has no
    annotation and no height was a KeyError after the whole evaluation."""
    from ovsam.errors import InputError
    from ovsam.evaluation.mask_ap import read_detections

    path = write_tiny_coco(tmp_path / "coco", images=2, unannotated=(2,))
    data = json.loads(path.read_text())
    del data["images"][1]["height"]
    detections = _ground_truth_detections(data)
    (tmp_path / "d.json").write_text(json.dumps(detections))
    assert len(read_detections(tmp_path / "d.json", data)) == len(detections)  # none on image 2
    detections.append({"image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9], "score": 0.5})
    (tmp_path / "d.json").write_text(json.dumps(detections))
    with pytest.raises(
        InputError,
        match=r"image id 2 needs a positive integer height and width \(mask AP reads detection"
        rf" {len(detections) - 1} of .*d\.json at that size\)",
    ):
        read_detections(tmp_path / "d.json", data)
    assert len(read_detections(tmp_path / "d.json", data, [1])) == len(detections) - 1


@pytest.mark.parametrize("ids", ["from 0", "one repeated", "none"])
def test_annotation_ids_do_not_change_mask_ap(tmp_path: Path, ids: str) -> None:
    """COCOeval takes ground-truth id 0 for "no match" and keeps one of two annotations sharing an
    id (AP 66 instead of 80 here), and crashed on annotations without ids, which ovsam's own
    reader accepts: the ground truth is renumbered before COCOeval sees it."""
    from ovsam.evaluation.mask_ap import mask_ap

    path = write_tiny_coco(tmp_path / "coco", images=3)
    data = json.loads(path.read_text())
    results = [dict(r, score=0.9 - 0.01 * i) for i, r in enumerate(_ground_truth_results(data))]
    del results[-1]  # one miss, so that AP is below 100 and a lost annotation shows
    expected = mask_ap(path, results, tmp_path / "reference")["AP"]
    for i, ann in enumerate(data["annotations"]):
        if ids == "from 0":
            ann["id"] = i
        elif ids == "none":
            del ann["id"]
    if ids == "one repeated":
        data["annotations"][2]["id"] = data["annotations"][1]["id"]
    path.write_text(json.dumps(data))
    assert mask_ap(path, results, tmp_path / "out")["AP"] == pytest.approx(expected)
