"""Segment-everything crop layers (SAM's ``crop_n_layers``): boxes, edge filter, merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.automatic import AutomaticMaskGenerator
from ovsam.cli.main import main
from ovsam.crop_layers import PlacedMasks, crop_boxes, merge_crops, near_crop_edge
from ovsam.errors import InputError
from ovsam.mask_nms import mask_nms
from ovsam.mask_statistics import cell_counts, mask_statistics
from ovsam.masks import mask_iou
from ovsam.predictor import SamPredictor
from upstream_mobilesam import INSTALL_HINT, import_mobile_sam


@pytest.fixture(scope="module")
def upstream_amg() -> object:
    """segment-anything's ``utils.amg`` as MobileSAM ships it."""
    try:
        import_mobile_sam()
    except ImportError:
        pytest.skip(INSTALL_HINT)
    from mobile_sam.utils import amg

    return amg


@pytest.mark.parametrize("size", [(360, 480), (1024, 683), (37, 500), (2, 3), (3024, 4032)])
@pytest.mark.parametrize("overlap", [0.0, 512 / 1500, 0.9])
def test_crop_boxes_are_sams(size: tuple[int, int], overlap: float, upstream_amg: object) -> None:
    for layers in range(4):
        boxes, layer_idxs = upstream_amg.generate_crop_boxes(size, layers, overlap)  # type: ignore[attr-defined]
        assert crop_boxes(size, layers, overlap) == [
            (tuple(box), layer) for box, layer in zip(boxes, layer_idxs, strict=True)
        ]


def test_near_crop_edge_is_sams(upstream_amg: object) -> None:
    rng = np.random.default_rng(0)
    size = (600, 800)
    for crop in [(0, 0, 473, 373), (327, 227, 800, 600), (100, 50, 500, 400), (0, 0, 800, 600)]:
        w, h = crop[2] - crop[0], crop[3] - crop[1]
        x0, y0 = rng.integers(0, w, 500), rng.integers(0, h, 500)
        x1, y1 = x0 + rng.integers(1, w + 1 - x0), y0 + rng.integers(1, h + 1 - y0)
        ours = near_crop_edge(torch.tensor(np.stack([y0, x0, y1, x1], 1)), crop, size)
        inclusive = torch.tensor(np.stack([x0, y0, x1 - 1, y1 - 1], 1))  # SAM's mask boxes
        theirs = upstream_amg.is_box_near_crop_edge(inclusive, list(crop), [0, 0, 800, 600])  # type: ignore[attr-defined]
        assert torch.equal(ours, theirs)
        whole = crop == (0, 0, 800, 600)
        assert int(ours.sum()) == 0 if whole else 0 < int(ours.sum()) < 500


def test_mask_statistics_boxes_are_the_masks_boxes() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 64, 96) * 4 - 2
    logits[3] = -10  # empty
    size = (150, 220)
    measured = mask_statistics(logits, size, 0.0, 1.0, 4, boxes=True)
    masks = torch.nn.functional.interpolate(logits[:, None], size, mode="bilinear")[:, 0] > 0
    for k, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        expected = (
            [0, 0, 0, 0] if len(ys) == 0 else [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        )
        assert measured.boxes[k].tolist() == [int(v) for v in expected]
    assert mask_statistics(logits, size, 0.0, 1.0, 4).boxes is None


def test_placed_masks_count_cells_and_shared_pixels_as_full_masks() -> None:
    rng = np.random.default_rng(1)
    size, stride = (90, 130), 8
    crops = [(0, 0, 130, 90), (0, 0, 77, 53), (53, 37, 130, 90), (13, 5, 71, 66)]
    placed = PlacedMasks(size)
    for crop in crops:
        for _ in range(3):
            array = np.zeros((crop[3] - crop[1], crop[2] - crop[0]), dtype=bool)
            y, x = rng.integers(0, array.shape[0]), rng.integers(0, array.shape[1])
            array[y : y + 30, x : x + 40] = True
            placed.arrays.append(array)
            placed.crops.append(crop)
    full = np.stack([placed.full(k) for k in range(len(placed.arrays))])
    assert full.shape == (12, *size)
    assert torch.equal(placed.cells(stride), cell_counts(torch.from_numpy(full), stride))
    rows = torch.arange(12)
    for i in range(12):
        expected = [int((full[i] & full[j])[8:80, 16:120].sum()) for j in range(12)]
        assert placed.shared(stride, i, rows, (1, 2, 10, 15)).tolist() == expected
    scores = 1.0 / torch.tensor([(c[2] - c[0]) * (c[3] - c[1]) for c in placed.crops]).double()
    expected_keep = mask_nms(torch.from_numpy(full), scores, 0.3).tolist()
    assert merge_crops(placed, 0.3, stride) == expected_keep
    assert expected_keep[0] == 9  # the smallest crop's first mask ranks first


def spot_scene() -> tuple[np.ndarray, np.ndarray]:
    """A 480x640 grey picture with one 40x40 dark square at a grid point of the first layer-1
    crop (2 points a side: crop (0, 0, 402, 322), click (100.5, 80.5)) and far from the
    whole image's (160/480, 120/360)."""
    image = np.full((480, 640, 3), 170, dtype=np.uint8)
    image += np.random.default_rng(0).integers(0, 12, image.shape, dtype=np.uint8)
    square = np.zeros((480, 640), dtype=bool)
    square[61:101, 81:121] = True
    image[square] = (30, 60, 140)
    return image, square


def test_a_crop_layer_finds_an_object_the_whole_image_grid_misses(
    mobilesam_model: torch.nn.Module,
) -> None:
    image, square = spot_scene()
    predictor = SamPredictor(mobilesam_model)
    plain = AutomaticMaskGenerator(predictor, points_per_side=2).generate(image)
    assert max((mask_iou(r["segmentation"], square) for r in plain), default=0) < 0.5
    before = predictor.predict(box=np.array([70, 50, 130, 110]), multimask_output=False)[0]
    cropped = AutomaticMaskGenerator(predictor, points_per_side=2, crop_n_layers=1)
    records = cropped.generate(image)
    found = [r for r in records if mask_iou(r["segmentation"], square) > 0.9]
    assert len(found) == 1 and found[0]["crop_box"] == [0, 0, 402, 322]
    assert found[0]["point_coords"] == [[100.5, 80.5]]
    assert {tuple(r["crop_box"]) for r in plain} == {(0, 0, 640, 480)}
    for record in records:  # nothing cut by an inner crop edge
        x0, y0, w, h = record["crop_box"]
        if (w, h) != (640, 480):
            x, y, bw, bh = record["bbox"]
            for edge, inner in ((x - x0, x0 > 0), (y - y0, y0 > 0)):
                assert not inner or edge > 20
            for gap, inner in (
                (x0 + w - (x + bw), x0 + w < 640),
                (y0 + h - (y + bh), y0 + h < 480),
            ):
                assert not inner or gap >= 20
    # the predictor is back on the whole image, its embedding not recomputed
    assert predictor.original_size == (480, 640)
    after = predictor.predict(box=np.array([70, 50, 130, 110]), multimask_output=False)[0]
    assert np.array_equal(before, after)


@pytest.mark.parametrize(("size", "layers"), [((1, 300), 1), ((5, 7), 2)])
def test_empty_crops_of_thin_images_are_skipped(
    mobilesam_model: torch.nn.Module, size: tuple[int, int], layers: int
) -> None:
    """SAM's crop boxes of a short side under ~135 px include empty ones: 'image is empty'."""
    boxes = [box for box, _ in crop_boxes(size, layers, 512 / 1500)]
    assert any(x0 >= x1 or y0 >= y1 for x0, y0, x1, y1 in boxes)  # as SAM's
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    generator = AutomaticMaskGenerator(
        SamPredictor(mobilesam_model), points_per_side=2, crop_n_layers=layers,
        pred_iou_thresh=-1.0, stability_score_thresh=0.0,
    )  # fmt: skip
    for record in generator.generate(image):
        x, y, w, h = record["crop_box"]
        assert w > 0 and h > 0 and [x, y, x + w, y + h] in [list(b) for b in boxes]


def test_crop_layers_need_the_image_and_sane_settings(mobilesam_model: torch.nn.Module) -> None:
    predictor = SamPredictor(mobilesam_model)
    with pytest.raises(InputError, match=r"crop_n_layers=1 crops the image: pass it"):
        AutomaticMaskGenerator(predictor, crop_n_layers=1).generate()
    for settings, message in [
        ({"crop_n_layers": -1}, "crop_n_layers=-1: expected an integer >= 0"),
        ({"crop_n_layers": 5}, "crop_n_layers=5: expected at most 4"),
        ({"crop_overlap_ratio": 1.5}, r"crop_overlap_ratio=1.5: .* in \[0.0, 1.0\]"),
        ({"crop_nms_thresh": float("nan")}, "crop_nms_thresh=nan"),
        ({"crop_n_points_downscale_factor": 0}, "expected an integer >= 1"),
        (
            {"points_per_side": 3, "crop_n_layers": 1, "crop_n_points_downscale_factor": 4},
            "points_per_side=3 / crop_n_points_downscale_factor=4 \\*\\* crop_n_layers=1 "
            "leaves no point per side in the last crop layer",
        ),
    ]:
        with pytest.raises(InputError, match=message):
            AutomaticMaskGenerator(predictor, **settings).generate(np.zeros((8, 8, 3), np.uint8))


def test_everything_cli_crop_flags_are_checked_and_recorded(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    image, square = spot_scene()
    Image.fromarray(image).save(tmp_path / "spot.png")
    argv = ["everything", str(tmp_path / "spot.png"), "--points-per-side", "2"]
    argv += ["--checkpoint", str(mobilesam_checkpoint), "--out"]
    bad = [*argv, str(tmp_path / "bad"), "--crop-layers", "1", "--crop-points-downscale", "4"]
    assert main(bad) == 2
    assert "--points-per-side=2 / --crop-points-downscale=4 ** --crop-layers=1" in (
        capsys.readouterr().err
    )
    assert main([*argv, str(tmp_path / "out"), "--crop-layers", "1"]) == 0
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["crop_layers"] == 1 and "crop_overlap" not in settings
    plain = [*argv, str(tmp_path / "plain")]
    assert main(plain) == 0  # without crop layers, crop-only flags change nothing: resumes
    assert main([*plain, "--crop-overlap", "0.5", "--crop-points-downscale", "2"]) == 0
    assert "already done" in capsys.readouterr().out
    masks = json.loads((tmp_path / "out" / "masks.json").read_text())["masks"]
    assert [0, 0, 402, 322] in [m["crop_box"] for m in masks]
