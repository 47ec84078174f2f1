"""The paper's evaluation protocol: known answers, splits, resume (ground truth and prompt
sampling: ``test_eval_data``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ovsam.data.instances import InstanceDataset, read_annotations
from ovsam.data.prompts import frame_center_points
from ovsam.errors import InputError
from ovsam.evaluation.accounting import select_images, summary_line
from ovsam.evaluation.metrics import InstanceRecord, summarize
from ovsam.evaluation.runner import (
    check_settings,
    coco_ov_splits,
    evaluate_rank,
    write_report,
)
from tiny_coco import write_tiny_coco


class Oracle:
    """Predicts the ground truth (masks looked up by prompt), optionally one wrong label."""

    def __init__(self, dataset: InstanceDataset, wrong: tuple[int, str] | None = None) -> None:
        self.items = [dataset[i] for i in range(len(dataset))]
        self.wrong = wrong

    def _item(self, image: np.ndarray):  # noqa: ANN202
        return next(it for it in self.items if np.array_equal(it.image, image))

    def predict_instances(
        self, image: np.ndarray, boxes: np.ndarray | None, points: np.ndarray | None
    ) -> tuple[np.ndarray, list[str]]:
        item = self._item(image)
        names = list(item.names)
        if self.wrong is not None and self.wrong[0] == item.image_id:
            names[0] = self.wrong[1]
        if points is not None:  # the official (1024-frame) centre, inside its own mask
            np.testing.assert_array_equal(points, frame_center_points(item.masks))
            assert all(item.masks[i, int(y), int(x)] for i, (x, y) in enumerate(points))
        return item.masks, names


def ov_dataset(data: dict, images: Path) -> InstanceDataset:
    """The OV-COCO classes of ``data`` (as ``ovsam eval --split coco-ov``)."""
    splits = coco_ov_splits()
    return InstanceDataset(data, images, lambda c: splits[c["id"]] != "none")


@pytest.fixture()
def annotations(tmp_path: Path) -> dict:
    return read_annotations(write_tiny_coco(tmp_path / "coco", images=4))


@pytest.fixture()
def coco(annotations: dict, tmp_path: Path) -> InstanceDataset:
    return ov_dataset(annotations, tmp_path / "coco" / "images")


def test_dataset_reads_polygons_and_rle_and_filters_the_ov_split(coco: InstanceDataset) -> None:
    assert set(c["name"] for c in coco.categories.values()) == {"person", "car", "cat", "cup"}
    item = coco[0]
    assert item.image.shape == (96, 128, 3) and item.masks.shape[1:] == (96, 128)
    assert (
        len(item.names) == len(item.boxes) == len(item.masks) and "traffic light" not in item.names
    )
    for box, mask in zip(item.boxes, item.masks, strict=True):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_ground_truth_predictions_score_100(
    annotations: dict, coco: InstanceDataset, tmp_path: Path
) -> None:
    records = evaluate_rank(Oracle(coco), coco, coco_ov_splits(), tmp_path / "out")
    metrics = write_report(tmp_path / "out", "oracle", select_images(annotations, coco))
    assert metrics["IoU"] == pytest.approx(100.0) and metrics["Acc"] == 100.0
    assert metrics["IoU_b"] == pytest.approx(100.0) and metrics["IoU_n"] == pytest.approx(100.0)
    assert metrics["instances"] == len(records) == metrics["instances_b"] + metrics["instances_n"]
    names = {r.category: r.split for r in records}
    assert {n: s for n, s in names.items()} == {
        k: v
        for k, v in {"person": "base", "car": "base", "cat": "novel", "cup": "novel"}.items()
        if k in names
    }
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.splitlines()[2].startswith("| oracle | 100.0 | 100.0 | 100.0 |")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["method"] == "oracle"


def test_one_wrong_label_drops_accuracy_by_exactly_one_instance(
    coco: InstanceDataset, tmp_path: Path
) -> None:
    first = coco[0]
    records = evaluate_rank(
        Oracle(coco, wrong=(first.image_id, "zebra")), coco, coco_ov_splits(), tmp_path
    )
    metrics = summarize(records)
    n = metrics["instances"]
    assert metrics["Acc"] == pytest.approx(100.0 * (n - 1) / n)
    assert metrics["IoU"] == pytest.approx(100.0)
    split = coco_ov_splits()[first.category_ids[0]]
    key, count = (
        ("Acc_b", metrics["instances_b"]) if split == "base" else ("Acc_n", metrics["instances_n"])
    )
    assert metrics[key] == pytest.approx(100.0 * (count - 1) / count)


def test_labels_name_their_class_as_categories_are_told_apart() -> None:
    """A category named "person " (or "traffic_light") is shown by the text bank as "person"
    ("traffic light"): such labels scored 0 against the file's spelling."""
    pairs = [("person ", "person"), ("traffic_light", "traffic light"), ("Cup", "cup")]
    records = [InstanceRecord(1, gt, "base", 1.0, label) for gt, label in pairs]
    records.append(InstanceRecord(1, "cat", "novel", 1.0, "car"))
    metrics = summarize(records)
    assert (metrics["Acc_b"], metrics["Acc_n"]) == (100.0, 0.0)


def test_point_prompts_and_resume(coco: InstanceDataset, tmp_path: Path) -> None:
    oracle = Oracle(coco)
    evaluate_rank(oracle, coco, coco_ov_splits(), tmp_path, prompt="point", indices=range(2))
    lines = (tmp_path / "records.rank0.jsonl").read_text().splitlines()
    assert len(lines) == 2
    (tmp_path / "records.rank0.jsonl").write_text(
        "\n".join(lines) + '\n{"image_id": 9, "rec', encoding="utf-8"
    )
    calls: list[int] = []
    original = oracle.predict_instances

    def counting(image: np.ndarray, boxes: object, points: object) -> tuple[np.ndarray, list[str]]:
        calls.append(1)
        return original(image, boxes, points)

    oracle.predict_instances = counting  # type: ignore[method-assign]
    records = evaluate_rank(oracle, coco, coco_ov_splits(), tmp_path, prompt="point")
    assert (
        len(calls) == 2 and len({r.image_id for r in records}) == 4
    )  # only the 2 missing images ran


def test_an_image_its_prompts_fail_on_is_skipped_with_the_reason(
    annotations: dict, coco: InstanceDataset, tmp_path: Path
) -> None:
    """An InputError from prompting one image (a box the predictor refuses) stopped the whole
    run, and every resume stopped at the same image again."""
    oracle, refused = Oracle(coco), coco[1].image_id
    original = oracle.predict_instances

    def refusing(image: np.ndarray, boxes: object, points: object) -> tuple[np.ndarray, list[str]]:
        if oracle._item(image).image_id == refused:
            raise InputError("box (127.4, 10, 128.4, 30) is less than 1 pixel wide or high")
        return original(image, boxes, points)

    oracle.predict_instances = refusing  # type: ignore[method-assign]
    records = evaluate_rank(oracle, coco, coco_ov_splits(), tmp_path)
    assert refused not in {r.image_id for r in records} and len({r.image_id for r in records}) == 3
    metrics = write_report(tmp_path, "oracle", select_images(annotations, coco))
    assert "less than 1 pixel wide" in json.dumps(metrics)


def test_ranks_partition_the_images(
    annotations: dict, coco: InstanceDataset, tmp_path: Path
) -> None:
    ids = [
        {
            r.image_id
            for r in evaluate_rank(Oracle(coco), coco, coco_ov_splits(), tmp_path, rank=k, world=2)
        }
        for k in range(2)
    ]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 4
    every = select_images(annotations, coco)
    metrics = write_report(tmp_path, "oracle", every)
    assert metrics["Acc"] == 100.0 and metrics["images"] == 4
    # resumed on one rank: the images rank 1 finished are not evaluated again (they were; this
    # predictor cannot predict), and each image counts once
    unused = Oracle(coco)
    unused.predict_instances = None  # type: ignore[assignment,method-assign]
    resumed = evaluate_rank(unused, coco, coco_ov_splits(), tmp_path)
    assert {r.image_id for r in resumed} == ids[0] | ids[1]
    assert write_report(tmp_path, "oracle", every) == metrics


def test_a_cut_last_line_is_removed_before_appending(
    annotations: dict, coco: InstanceDataset, tmp_path: Path
) -> None:
    evaluate_rank(Oracle(coco), coco, coco_ov_splits(), tmp_path, indices=[0])
    path = tmp_path / "records.rank0.jsonl"
    path.write_text(path.read_text() + '{"image_id": 2, "records": [{"ima')
    records = evaluate_rank(Oracle(coco), coco, coco_ov_splits(), tmp_path, indices=range(3))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["image_id"] for line in lines] == [1, 2, 3]
    metrics = write_report(tmp_path, "oracle", select_images(annotations, coco, 3))
    assert metrics["images"] == 3 and metrics["instances"] == len(records)
    only_first = write_report(tmp_path, "oracle", select_images(annotations, coco, 1))
    assert only_first["images"] == only_first["images_evaluated"] == 1  # only the selected ones


def mixed_coco(root: Path) -> dict:
    """Seven images: 1 and 6 evaluated (one annotation of 6 has an empty mask, one of 1 a box
    under a pixel wide: no instance), 2 only crowds, 3 only empty masks, 4 no annotation, 5
    only traffic lights (outside OV-COCO), 7 only boxes under a pixel wide; and one annotation
    of an image the file does not list."""
    data = read_annotations(write_tiny_coco(root, images=7, crowd=(2,), unannotated=(4,)))
    for ann in data["annotations"]:
        if ann["image_id"] == 3:
            ann.update(category_id=1, segmentation=[[]])
        elif ann["image_id"] == 5:
            ann["category_id"] = 10
        elif ann["image_id"] == 7:
            ann["bbox"] = [0, 0, 0.5, 9]
    next(a for a in data["annotations"] if a["image_id"] == 1)["bbox"] = [0, 0, 0.5, 9]
    empty = next(ann for ann in data["annotations"] if ann["image_id"] == 6)
    empty.update(category_id=1, segmentation=[[]])
    data["annotations"].append({**empty, "id": 999, "image_id": 99})
    return data


MIXED_COUNTS = {
    "images": 7,
    "images_evaluated": 2,
    "images_skipped": 5,
    "images_skipped_no_annotations": 1,
    "images_skipped_only_crowd": 1,
    "images_skipped_only_other_classes": 1,
    "images_skipped_only_too_small": 1,
    "images_skipped_empty_masks": 1,
    "images_missing": 0,
    "instances": 3,
    "instances_skipped": 4,  # the empty masks only: boxes under a pixel are no instances
}


def test_every_image_is_evaluated_or_skipped_with_its_reason(tmp_path: Path) -> None:
    data = mixed_coco(tmp_path / "coco")
    dataset = ov_dataset(data, tmp_path / "coco" / "images")
    selection = select_images(data, dataset)
    assert selection.image_ids == (1, 2, 3, 4, 5, 6, 7) and selection.orphan_annotations == 1
    assert selection.skipped == {
        2: "only_crowd",
        4: "no_annotations",
        5: "only_other_classes",
        7: "only_too_small",
    }
    evaluate_rank(Oracle(dataset), dataset, coco_ov_splits(), tmp_path, indices=selection.indices)
    metrics = write_report(tmp_path, "oracle", selection)
    assert {key: metrics[key] for key in MIXED_COUNTS} == MIXED_COUNTS
    assert metrics["IoU"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"method": "oracle", **metrics}
    assert summary_line(metrics) == (
        "instances: 3 in 2 of 7 images; skipped images: 5 (1 without annotations, 1 with only"
        " crowd annotations, 1 with only classes outside the split, 1 with only boxes under a"
        " pixel or outside the image, 1 with only empty masks); skipped annotations with an"
        " empty mask: 4"
    )


def test_resumed_split_and_limited_runs_account_for_every_image(tmp_path: Path) -> None:
    data = mixed_coco(tmp_path / "coco")
    dataset = ov_dataset(data, tmp_path / "coco" / "images")
    selection = select_images(data, dataset)
    splits = coco_ov_splits()
    evaluate_rank(Oracle(dataset), dataset, splits, tmp_path, 0, world=2, indices=selection.indices)
    half = write_report(tmp_path, "oracle", selection)  # image 3 (rank 1) has no records yet
    assert (half["images_missing"], half["images_skipped"], half["images_evaluated"]) == (1, 4, 2)
    assert "images without records (not evaluated): 1" in summary_line(half)
    path = tmp_path / "records.rank0.jsonl"
    path.write_text(path.read_text()[:-20])  # image 6's line cut: redone on resume
    evaluate_rank(Oracle(dataset), dataset, splits, tmp_path, indices=selection.indices)
    metrics = write_report(tmp_path, "oracle", selection)
    assert {key: metrics[key] for key in MIXED_COUNTS} == MIXED_COUNTS
    first3 = write_report(tmp_path, "oracle", select_images(data, dataset, limit=3))
    assert (first3["images"], first3["images_evaluated"], first3["images_skipped"]) == (3, 1, 2)
    assert first3["images_skipped_only_crowd"] == first3["images_skipped_empty_masks"] == 1


def test_settings_are_recorded_then_enforced(
    annotations: dict, coco: InstanceDataset, tmp_path: Path
) -> None:
    settings = {"prompt": "box", "model": "mobilesam", "checkpoint": None}
    assert check_settings(tmp_path, settings, write=False) is False  # another torchrun rank's
    assert not (tmp_path / "settings.json").exists()
    assert check_settings(tmp_path, settings) is False
    assert json.loads((tmp_path / "settings.json").read_text()) == settings
    assert check_settings(tmp_path, settings) is False
    # no records yet (a run that failed before its first image): other settings replace them
    assert check_settings(tmp_path, {**settings, "prompt": "point"}) is False
    assert json.loads((tmp_path / "settings.json").read_text())["prompt"] == "point"
    check_settings(tmp_path, settings)
    (tmp_path / "records.rank0.jsonl").write_text("")  # opened, nothing recorded yet
    assert check_settings(tmp_path, {**settings, "model": "other"}) is False
    check_settings(tmp_path, settings)
    (tmp_path / "records.rank0.jsonl").write_text('{"image_id": 1, "records": []}\n')
    with pytest.raises(InputError, match=r"prompt 'box' -> 'point'\): use a new --out"):
        check_settings(tmp_path, {**settings, "prompt": "point"})
    with pytest.raises(InputError, match="limit must be at least 1"):
        select_images(annotations, coco, 0)


def test_eval_command_end_to_end(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("pycocotools")
    from ovsam.cli.main import main

    path = write_tiny_coco(tmp_path / "coco", images=2)
    data = json.loads(path.read_text())
    detections = tmp_path / "dets.json"
    detections.write_text(
        json.dumps(
            [
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox": a["bbox"],
                    "score": 1.0,
                }
                for a in data["annotations"]
            ]
        )
    )
    argv = ["eval", str(path), "--images", str(tmp_path / "coco" / "images"), "--out", str(tmp_path / "out"),
            "--checkpoint", str(mobilesam_checkpoint), "--random-recognition", "--clip", "RN50", "--templates", "none",
            "--detections", str(detections), "--method", "mobilesam+random-clip"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (
        metrics["method"] == "mobilesam+random-clip" and metrics["IoU"] > 85.0
    )  # real MobileSAM masks
    assert "| mobilesam+random-clip |" in out and "Average Precision" not in out
    assert "mask AP (2 images, 4 classes, 4 detections): AP " in out
    assert json.loads((tmp_path / "out" / "mask_ap.json").read_text())["AP50"] > 80.0


def test_an_rle_of_another_size_than_its_image_is_a_one_line_error(
    annotations: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found before the RLE is decoded: one of a huge size built that mask first."""
    from ovsam.data import instances
    from ovsam.masks import encode_rle

    monkeypatch.setattr(instances, "runs_to_mask", lambda h, w, _: pytest.fail(f"decoded {h}x{w}"))

    ann = annotations["annotations"][0]
    ann["segmentation"] = encode_rle(np.ones((10, 10), bool))
    dataset = InstanceDataset(annotations, tmp_path / "coco" / "images")
    index = next(i for i, img in enumerate(dataset.images) if img["id"] == ann["image_id"])
    with pytest.raises(InputError) as caught:
        dataset[index]
    message = str(caught.value)
    assert f"annotation id {ann['id']} (image id {ann['image_id']})" in message
    assert "mask is 10x10 but the image is 96x128" in message and "\n" not in message


def test_unreadable_images_are_skipped_with_their_reason_and_not_retried(
    annotations: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = tmp_path / "coco" / "images"
    oracle = Oracle(ov_dataset(annotations, images))  # reads every image while they are intact
    corrupt = images / "000002.png"
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated
    broken = next(a for a in annotations["annotations"] if a["image_id"] == 3)
    broken["segmentation"] = {"size": [96, 128], "counts": [100, 20]}  # sums to 120, not 96x128
    dataset = ov_dataset(annotations, images)
    selection = select_images(annotations, dataset)
    records = evaluate_rank(oracle, dataset, coco_ov_splits(), tmp_path / "out")
    warnings = capsys.readouterr().err
    assert f"warning: skipped image id 2: image file {corrupt} is corrupt or truncated" in warnings
    assert (
        f"warning: skipped image id 3: annotation id {broken['id']} (image id 3): cannot decode"
        " its segmentation: RLE counts sum to 120, expected 96x128=12288"
    ) in warnings
    metrics = write_report(tmp_path / "out", "oracle", selection)
    assert {r.image_id for r in records} == {1, 4} and metrics["instances"] == len(records)
    assert (metrics["images_evaluated"], metrics["images_skipped_unreadable"]) == (2, 2)
    assert metrics["images_skipped"] == 2 and metrics["images_missing"] == 0
    assert metrics["instances_unreadable"] == selection.usable[2] + selection.usable[3]
    assert metrics["instances"] + metrics["instances_unreadable"] == sum(selection.usable.values())
    assert [row["image_id"] for row in metrics["unreadable_images"]] == [2, 3]
    assert str(corrupt) in metrics["unreadable_images"][0]["reason"]
    assert "skipped images: 2 (2 unreadable); annotations of unreadable images" in summary_line(
        metrics
    )
    # resumed: the unreadable images are not retried, and the counts do not change
    log = (tmp_path / "out" / "records.rank0.jsonl").read_text()
    evaluate_rank(oracle, dataset, coco_ov_splits(), tmp_path / "out")
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "out" / "records.rank0.jsonl").read_text() == log
    assert write_report(tmp_path / "out", "oracle", selection) == metrics
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {
        "method": "oracle",
        **metrics,
    }
