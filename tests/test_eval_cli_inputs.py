"""``ovsam eval`` refuses bad annotations and detections in one line, before any model is
built, and skips (and reports) unreadable images; mask AP without large objects is n/a.

The model is replaced by a fast stand-in (:mod:`eval_stand_in`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval_stand_in import run_eval, strict_json
from ovsam.masks import encode_rle

pytest_plugins = ("eval_stand_in",)


def bad_annotations(tiny: Path, case: str) -> Path:
    """An annotation file broken in one way."""
    data = json.loads(tiny.read_text())
    path = tiny.parent / f"{case}.json"
    if case == "empty":
        path.write_text("")
    elif case == "corrupt":
        path.write_text(tiny.read_text()[:100])
    elif case == "list":
        path.write_text("[]")
    elif case in ("segmentation", "category_id"):
        del data["annotations"][2][case]
        path.write_text(json.dumps(data))
    elif case == "list_id":
        data["categories"][0]["id"] = [1]
        path.write_text(json.dumps(data))
    elif case == "duplicate":
        data["images"].append(dict(data["images"][1]))
        path.write_text(json.dumps(data))
    elif case == "copied_annotation":  # e.g. merged shards: it was scored twice, silently
        data["annotations"].append(dict(data["annotations"][0]))
        path.write_text(json.dumps(data))
    elif case == "no_file_name":
        del data["images"][0]["file_name"]
        path.write_text(json.dumps(data))
    elif case == "str_image_id":
        data["images"][0]["id"] = "abc"
        path.write_text(json.dumps(data))
    elif case == "str_iscrowd":  # as a truth value "0" dropped every instance, silently
        for ann in data["annotations"]:
            ann["iscrowd"] = "0"
        path.write_text(json.dumps(data))
    elif case in ("str_annotation_image_id", "float_annotation_category_id"):
        field, value = ("image_id", "1") if case.startswith("str") else ("category_id", 1.0)
        data["annotations"][2][field] = value
        path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("missing", (), "cannot read annotations {path}: No such file or directory"),
        ("empty", (), "annotation file {path} is empty"),
        ("corrupt", (), "annotation file {path} is not valid JSON"),
        ("list", (), "annotation file {path} holds a JSON list, not a COCO / LVIS object"),
        ("segmentation", (), "annotation file {path}: annotation id 3 has no 'segmentation'"),
        ("category_id", (), "annotation file {path}: annotation id 3 has no 'category_id'"),
        ("list_id", (), "annotation file {path}: category id [1] is not an integer"),
        ("duplicate", (), "annotation file {path}: image id 2 appears more than once"),
        (
            "copied_annotation",
            (),
            "annotation file {path}: annotation id 1 is listed twice with the same contents",
        ),
        ("str_image_id", (), "annotation file {path}: image id 'abc' is not an integer"),
        ("no_file_name", (), "image id 1 has no 'file_name' (nor an LVIS 'coco_url')"),
        (
            "str_annotation_image_id",
            (),
            "annotation file {path}: annotation id 3: image_id '1' is not an integer",
        ),
        (
            "float_annotation_category_id",
            (),
            "annotation file {path}: annotation id 3: category_id 1.0 is not an integer",
        ),
        ("str_iscrowd", (), "annotation file {path}: annotation id 1: iscrowd '0' is not 0 or 1"),
        ("good", ("--split", "lvis"), "no LVIS 'frequency' field"),
    ],
)
def test_bad_annotations_are_one_line_errors(
    tiny: Path, tmp_path: Path, built: list, case: str, extra: tuple, message: str
) -> None:
    path = tiny if case == "good" else bad_annotations(tiny, case)
    status, _, stderr = run_eval(path, tmp_path / "out", *extra, images=tiny.parent / "images")
    assert status == 2 and not built
    assert stderr.startswith("ovsam eval: error: ") and len(stderr.splitlines()) == 1
    assert message.format(path=path) in stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read detections {path}: No such file or directory"),
        ('[{"image_id": 1', "detections file {path} is not valid JSON"),
        ("{}", "must be a non-empty JSON list"),
        ('[{"image_id": 555, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}]',
         "detection 0: image_id 555 is not in the annotation file"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 1}]',
         "detection 0: bbox must be [x, y, width, height]"),
        ('[{"image_id": [1], "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}]',
         "detection 0: image_id must be an integer, got [1]"),
        ('[{"image_id": 1, "category_id": true, "bbox": [1, 2, 3, 4], "score": 1}]',
         "detection 0: category_id must be an integer, got True"),
        ('[{"image_id": 1, "category_id": 999, "bbox": [1, 2, 3, 4], "score": 1}]',
         "none of its 1 detections is on an evaluated image of an evaluated class (0 on other "
         "images, 1 of other classes)"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1},'
         ' {"image_id": 1, "category_id": 1, "bbox": [9, 9, 5, -1], "score": 1}]',
         "detection 1: bbox [9, 9, 5, -1] has a negative width or height (XYWH)"),
    ],
)  # fmt: skip
def test_bad_detections_are_refused_before_the_evaluation(
    tiny: Path, tmp_path: Path, built: list, content: str | None, message: str
) -> None:
    path = tmp_path / "dets.json"
    if content is not None:
        path.write_text(content)
    status, _, stderr = run_eval(tiny, tmp_path / "out", "--detections", str(path))
    assert status == 2 and not built and not (tmp_path / "out").exists()
    assert len(stderr.splitlines()) == 1 and message.format(path=path) in stderr


def test_mask_ap_without_large_objects_reports_n_a(tiny: Path, tmp_path: Path, built: list) -> None:
    data = json.loads(tiny.read_text())
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in data["annotations"]
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    status, stdout, _ = run_eval(
        tiny, tmp_path / "out", "--detections", str(tmp_path / "dets.json")
    )
    stats = strict_json(tmp_path / "out" / "mask_ap.json")
    assert status == 0 and stats["APl"] is None and stats["AP50"] > 50
    assert "APl n/a" in stdout and "-100.0" not in stdout
    status, stdout, stderr = run_eval(tiny, tmp_path / "out")  # no --detections: AP is stale
    assert status == 0 and "mask AP" not in stdout
    assert stderr.strip().endswith(
        "mask_ap.json is from an earlier run with --detections, not updated by this one (pass "
        "--detections again to update it)"
    )


def test_an_unreadable_image_is_skipped_reported_and_not_retried(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    pytest.importorskip("pycocotools")
    data = json.loads(tiny.read_text())
    dets = [  # every ground-truth box, plus degenerate ones: sub-pixel, outside the image
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in data["annotations"]
    ] + [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 0.4, 10], "score": 0.05},
        {"image_id": 4, "category_id": 3, "bbox": [300, 10, 5, 5], "score": 0.5},
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    corrupt = tiny.parent / "images" / "000003.png"
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    extra = ("--detections", str(tmp_path / "dets.json"))
    status, stdout, stderr = run_eval(tiny, tmp_path / "out", *extra)
    metrics = strict_json(tmp_path / "out" / "metrics.json")
    assert status == 0, stderr
    assert f"warning: skipped image id 3: image file {corrupt} is corrupt or truncated" in stderr
    assert metrics["images_skipped_unreadable"] == 1 and metrics["images_evaluated"] == 3
    assert metrics["unreadable_images"][0]["image_id"] == 3 and metrics["instances_unreadable"]
    assert "skipped images: 1 (1 unreadable)" in stdout
    assert "mask AP (3 images (1 unreadable left out), 4 classes, " in stdout
    results = json.loads((tmp_path / "out" / "segm_results.json").read_text())
    assert 3 not in {r["image_id"] for r in results}
    empty = encode_rle(np.zeros((96, 128), dtype=bool))
    assert [r["segmentation"] for r in results if r["score"] < 1] == [empty, empty]
    status, stdout, stderr = run_eval(tiny, tmp_path / "out", *extra)  # resumed: not retried
    assert status == 0 and "skipped image" not in stderr
    assert strict_json(tmp_path / "out" / "metrics.json") == metrics


def test_lvis_detections_and_ground_truth_without_iscrowd_are_refused(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    """COCOeval reads every annotation's iscrowd (LVIS files have none) and is not LVIS's
    federated AP: both are refused before the evaluation, not after it."""
    data = json.loads(tiny.read_text())
    dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    for ann in data["annotations"]:
        del ann["iscrowd"]
    tiny.write_text(json.dumps(data))
    extra = ("--detections", str(tmp_path / "dets.json"))
    status, _, stderr = run_eval(tiny, tmp_path / "out", *extra, "--split", "all")
    assert status == 2 and not built and "has no 'iscrowd' (needed for mask AP)" in stderr
    for category in data["categories"]:
        category["frequency"] = "f"
    tiny.write_text(json.dumps(data))
    status, _, stderr = run_eval(tiny, tmp_path / "out", *extra, "--split", "lvis")
    assert status == 2 and not built and "LVIS is scored with its federated AP" in stderr
