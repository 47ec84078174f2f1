"""Ground truth as the annotation file states it: polygons checked and clipped, the stored
pixel grid and its stated size, annotated boxes, category names, LVIS image folders, and the
metric's averaging (per instance, split by split)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovsam.data.instances import InstanceDataset, load_annotated_image, read_annotations
from ovsam.data.polygons import fill_polygons, polygons_to_mask
from ovsam.errors import InputError
from ovsam.evaluation.metrics import InstanceRecord, summarize
from tiny_coco import write_tiny_coco


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        ([1, 2, 3, float("nan"), 5, 6], "polygon 0 holds NaN or infinite coordinates"),
        ([1, 2, 3, float("inf"), 5, 6], "polygon 0 holds NaN or infinite coordinates"),
        ([[1, 2], [3, 4], [5, 6]], "polygon 0 is not a flat list of x, y pairs"),
        ([1, 2, 3, 4, 5], "polygon 0 is not a flat list of x, y pairs"),
        ([1, 2, "3", None, 5, 6], "polygon 0 holds '3', which is not a number"),
        ([1, 2, True, 4, 5, 6], "polygon 0 holds True, which is not a number"),
        ([1, 2, 10**400, 4, 5, 6], "polygon 0 holds NaN or infinite coordinates"),  # overflow
    ],
)
def test_a_polygon_that_is_not_finite_pairs_is_refused(polygon: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        polygons_to_mask([polygon], 10, 10)


def test_a_far_vertex_is_clipped_without_changing_the_pixels() -> None:
    """pycocotools walks every edge at 5x: a vertex at 1e12 would exhaust memory."""
    triangle = [10, 10, 1e4, 50, 10, 90]
    start = time.perf_counter()
    far = polygons_to_mask([[10, 10, 1e12, 50, 10, 90]], 100, 100)
    assert time.perf_counter() - start < 1.0
    assert far.sum() == 90 * 80  # the band x >= 10 between the two near vertices
    np.testing.assert_array_equal(
        polygons_to_mask([triangle], 100, 100), fill_polygons([triangle], 100, 100)
    )


@pytest.mark.parametrize("far", [1e9, 1e16, 1e17, 1e20, 1e300])
def test_clipping_a_far_edge_keeps_the_pixels_whatever_its_size(far: float) -> None:
    """A triangle on and below y = x: 55 pixels of 10x10 (float64 crossings gave 94 at 1e17,
    0 at 1e20 and NaN vertices at 1e300)."""
    mask = polygons_to_mask([[-far, -far, far, far, -far, far]], 10, 10)
    np.testing.assert_array_equal(mask, np.tri(10, dtype=bool))


def _dataset(tmp_path: Path, edit=None) -> InstanceDataset:  # noqa: ANN001 - a data callback
    path = write_tiny_coco(tmp_path, images=1)
    if edit is not None:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return InstanceDataset(read_annotations(path), tmp_path / "images")


def test_boxes_are_the_annotated_ones_else_the_masks(tmp_path: Path) -> None:
    def offset(data: dict) -> None:
        data["annotations"][0]["bbox"] = [10.25, 5.5, 20.0, 30.0]
        # past the right edge: under a pixel wide inside the 128-wide image (a box prompt
        # refused it and stopped the whole evaluation), and partly past the bottom: clipped
        data["annotations"][1]["bbox"] = [127.4, 10, 1.0, 20]
        data["annotations"][2]["bbox"] = [10, 10, 10**400, 20]  # too large for a float

    item = _dataset(tmp_path, offset)[0]
    np.testing.assert_allclose(item.boxes[0], [10.25, 5.5, 30.25, 35.5])
    for index in (1, 2):
        ys, xs = np.nonzero(item.masks[index])
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(item.boxes[index], box)

    def low(data: dict) -> None:
        data["annotations"][0]["bbox"] = [10, 80, 20, 40]

    clipped = _dataset(tmp_path / "low", low)[0]
    np.testing.assert_allclose(clipped.boxes[0], [10, 80, 30, 96])  # the image is 96 high


@pytest.mark.parametrize(
    ("change", "dropped"),
    [
        ({"bbox": [0, 0, 0.5, 9]}, True),  # under a pixel wide
        ({"bbox": [0, 0, 9, 0.99]}, True),  # under a pixel high
        ({"area": 0}, True),
        ({"bbox": [128, 10, 20, 20]}, True),  # right of the 128-wide image
        ({"bbox": [-30, 10, 30, 20]}, True),  # left of it, touching its edge
        ({"bbox": [-30, 10, 31, 20]}, False),  # a pixel inside
        ({"bbox": [0, 0, 1, 1]}, False),
        ({"bbox": None}, False),  # no box: its mask's box prompts it
    ],
)
def test_annotations_that_mmdet_drops_are_no_instances(
    tmp_path: Path, change: dict, dropped: bool
) -> None:
    """The official evaluation and training read COCO through mmdet's CocoDataset, which drops
    annotations whose box is under 1 pixel wide or high, lies outside the image (of the size
    the file states), or whose area is not positive; ovsam prompted them with their mask's box."""

    def edit(data: dict) -> None:
        data["annotations"][0].update(change)

    plain = _dataset(tmp_path / "plain")
    dataset = _dataset(tmp_path / "edited", edit)
    assert dataset.too_small_annotations == ({1: 1} if dropped else {})
    assert plain.too_small_annotations == {}
    assert len(dataset[0].category_ids) == len(plain[0].category_ids) - int(dropped)


def test_an_image_of_another_size_than_annotated_is_refused(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    path = dataset.image_path(0)
    Image.open(path).resize((64, 48)).save(path)
    with pytest.raises(InputError, match=r"is 48x64 \(HxW\) but the annotation file says 96x128"):
        dataset[0]


def test_annotations_refer_to_the_stored_pixel_grid_not_the_exif_turn(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    path = dataset.image_path(0)
    stored = np.asarray(Image.open(path).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": shown upright it would be 128x96
    Image.fromarray(stored).save(path, exif=exif)
    np.testing.assert_array_equal(dataset[0].image, stored)


def test_a_dataset_annotated_on_upright_images_gets_them_upright(tmp_path: Path) -> None:
    def upright_size(data: dict) -> None:
        data["images"][0]["height"], data["images"][0]["width"] = 128, 96

    dataset = _dataset(tmp_path, upright_size)
    path = dataset.image_path(0)
    stored = np.asarray(Image.open(path).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    Image.fromarray(stored).save(path, exif=exif)
    image = dataset.images[0]
    np.testing.assert_array_equal(
        load_annotated_image(tmp_path / "images", image), np.rot90(stored, -1)
    )


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["person", "car", "traffic light", "Person", "cup"],
            "categories 1 and 17 are both named 'Person'",
        ),
        (
            ["person", "car", "traffic_light", "cat", "traffic light"],
            "categories 10 and 47 are both",
        ),
        (["person", 5, "traffic light", "cat", "cup"], "category id 3 has the name 5, not a class"),
        (["person", " ", "traffic light", "cat", "cup"], "category id 3 has the name ' '"),
    ],
)
def test_category_names_are_distinct_class_names(tmp_path: Path, names: list, message: str) -> None:
    path = write_tiny_coco(tmp_path, images=1)
    data = json.loads(path.read_text())
    for category, name in zip(data["categories"], names, strict=True):
        category["name"] = name
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        read_annotations(path)


def test_lvis_images_are_found_in_their_coco_folder(tmp_path: Path) -> None:
    def lvis(data: dict) -> None:
        info = data["images"][0]
        info["coco_url"] = f"http://images.cocodataset.org/train2017/{info.pop('file_name')}"

    dataset = _dataset(tmp_path, lvis)
    (tmp_path / "images" / "train2017").mkdir()
    name = dataset.image_path(0).name
    (tmp_path / "images" / name).rename(tmp_path / "images" / "train2017" / name)
    assert dataset.image_path(0) == tmp_path / "images" / "train2017" / name
    assert dataset[0].image.shape == (96, 128, 3)


def test_metrics_average_over_instances_split_by_split() -> None:
    """IoU is a mean over instances, as the official metric (not over images or classes, which
    give other numbers here); Acc counts exact names; a split without instances has None."""
    records = [
        InstanceRecord(1, "person", "base", 0.9, "person"),
        InstanceRecord(1, "person", "base", 0.6, "car"),
        InstanceRecord(1, "car", "base", 0.3, "car"),
        InstanceRecord(2, "car", "base", 0.1, "person"),
        InstanceRecord(2, "car", "base", 0.2, "car"),
        InstanceRecord(3, "cat", "novel", 0.2, "cat"),
        InstanceRecord(4, "kite", "none", 1.0, "kite"),
    ]
    metrics = summarize(records)
    assert metrics["IoU_b"] == pytest.approx(42.0)  # per image 37.5, per class 47.5
    assert metrics["IoU_n"] == pytest.approx(20.0)
    assert metrics["IoU"] == pytest.approx(330 / 7)
    assert metrics["Acc_b"] == pytest.approx(60.0) and metrics["Acc_n"] == pytest.approx(100.0)
    assert metrics["Acc"] == pytest.approx(500 / 7)
    assert (metrics["instances"], metrics["instances_b"], metrics["instances_n"]) == (7, 5, 1)
    assert summarize(records[:5])["IoU_n"] is None
