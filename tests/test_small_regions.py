"""SAM's ``min_mask_region_area``: holes filled, islands removed, duplicates removed again."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.automatic import AutomaticMaskGenerator
from ovsam.cli.main import main
from ovsam.errors import InputError
from ovsam.predictor import SamPredictor
from ovsam.small_regions import Components, clean_small_regions, remove_small_regions
from synthetic_scenes import make_scene


def flood_fill_labels(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Reference 8-connected labelling by breadth-first search, pixel by pixel: labels
    ``1..N`` in raster order of each component's first pixel (0: outside), and the sizes."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int64)
    sizes: list[int] = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        sizes.append(0)
        labels[y, x] = len(sizes)
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            sizes[-1] += 1
            for ny in range(max(cy - 1, 0), min(cy + 2, height)):
                for nx in range(max(cx - 1, 0), min(cx + 2, width)):
                    if mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = len(sizes)
                        queue.append((ny, nx))
    return labels, sizes


def reference_removal(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    """segment-anything's ``remove_small_regions``, with the reference labelling."""
    holes = mode == "holes"
    labels, sizes = flood_fill_labels(mask ^ holes)
    small = [i + 1 for i, size in enumerate(sizes) if size < area]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(len(sizes) + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(labels, fill), True


@pytest.mark.parametrize("seed", range(6))
def test_components_and_removal_equal_a_pixel_flood_fill(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        height, width = rng.integers(1, 24, 2)
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.95)
        labels, sizes = flood_fill_labels(mask)
        parts = Components.of(mask)
        assert parts.sizes.tolist() == sizes  # numbered in raster order of the first pixel
        for k in range(len(sizes)):
            assert np.array_equal(parts.paint(np.arange(len(sizes)) == k), labels == k + 1)
        for mode in ("holes", "islands"):
            for area in (1, 2, 4, 9, 1000):
                ours, changed = remove_small_regions(mask, area, mode)
                expected, expected_changed = reference_removal(mask, area, mode)
                assert changed == expected_changed and ours.dtype == bool
                assert np.array_equal(ours, expected), (mode, area)


def test_diagonal_neighbours_touch_for_islands_and_holes() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # one island of 2 pixels, not two of 1
    assert Components.of(mask).sizes.tolist() == [2]
    assert remove_small_regions(mask, 2, "islands") == (mask, False)
    ring = np.ones((4, 4), dtype=bool)
    ring[1, 1] = False
    ring[2, 2] = False  # a 2-pixel hole, its pixels diagonal neighbours
    filled, changed = remove_small_regions(ring, 3, "holes")
    assert changed and filled.all()
    corner = np.ones((3, 3), dtype=bool)
    corner[0, 0] = False  # background touching the edge is a region like any other
    assert remove_small_regions(corner, 2, "holes")[0].all()


def test_only_small_islands_keep_the_largest_and_the_first_of_equals() -> None:
    mask = np.zeros((6, 9), dtype=bool)
    mask[0, 0:2] = True  # 2 pixels, first in raster order
    mask[4, 5:7] = True  # 2 pixels
    mask[2:4, 3] = True  # 2 pixels, its first pixel between the others'
    kept, changed = remove_small_regions(mask, 10, "islands")
    assert changed and np.array_equal(kept, np.pad(np.ones((1, 2), bool), ((0, 5), (0, 7))))
    mask[4, 7] = True  # now the largest
    assert remove_small_regions(mask, 10, "islands")[0].sum() == 3


def test_a_large_mask_is_cleaned_in_runs_not_pixels() -> None:
    """A 12-megapixel disc pierced by single-pixel holes: every hole filled, no island cut."""
    yy, xx = np.mgrid[:3000, :4000]
    disc = (yy - 1500) ** 2 + (xx - 2000) ** 2 < 1000**2
    pierced = disc.copy()
    pierced[1000:2000:7, 1500:2500:5] = False
    filled, changed = remove_small_regions(pierced, 2, "holes")
    assert changed and np.array_equal(filled, disc)
    assert remove_small_regions(disc, 10**6, "islands") == (disc, False)


def test_a_mode_other_than_holes_or_islands_is_refused() -> None:
    with pytest.raises(InputError, match="mode='hole': expected 'holes' or 'islands'"):
        remove_small_regions(np.zeros((2, 2), bool), 4, "hole")  # type: ignore[arg-type]


def test_cleaning_ranks_unchanged_masks_first_and_returns_the_changed_ones() -> None:
    square = np.zeros((40, 40), dtype=bool)
    square[10:30, 10:30] = True
    speckled = square.copy()
    speckled[0, 0] = True  # an island of 1 pixel: cleaned, it duplicates the square
    holed = np.zeros((40, 40), dtype=bool)
    holed[32:40, 0:8] = True
    holed[35, 3] = False
    keep, changed = clean_small_regions([speckled, holed, square], 4, 0.7, 4)
    assert keep == [2, 1]  # the unchanged square outranks the cleaned copy ahead of it
    assert list(changed) == [1] and changed[1].sum() == 64  # its hole filled
    assert clean_small_regions([], 4, 0.7, 4) == ([], {})


def test_everything_with_min_region_area_leaves_no_small_holes_or_islands(
    mobilesam_model: torch.nn.Module,
) -> None:
    image, _ = make_scene(0)
    predictor = SamPredictor(mobilesam_model)
    plain = AutomaticMaskGenerator(predictor, points_per_side=8).generate(image)
    cleaned = AutomaticMaskGenerator(predictor, points_per_side=8, min_mask_region_area=100)
    records = cleaned.generate()

    def small_parts(mask: np.ndarray) -> int:
        return int(
            (Components.of(~mask).sizes < 100).sum() + (Components.of(mask).sizes < 100).sum()
        )

    assert sum(small_parts(r["segmentation"]) for r in plain) > 0  # the scene has some to clean
    assert [small_parts(r["segmentation"]) for r in records] == [0] * len(records)
    background = remove_small_regions(plain[0]["segmentation"], 100, "holes")[0]
    assert np.array_equal(records[0]["segmentation"], background)  # the largest, holes filled
    for record in records:
        mask = record["segmentation"]
        x, y, w, h = record["bbox"]
        assert record["area"] == mask.sum() and mask[y : y + h, x : x + w].sum() == mask.sum()
        assert not mask[:, :x].any() and not mask[:y].any()  # bbox of the cleaned mask


def test_everything_cli_records_min_region_area_only_when_set(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    image, _ = make_scene(1, 60, 80)
    Image.fromarray(image).save(tmp_path / "a.png")
    argv = ["everything", str(tmp_path / "a.png"), "--points-per-side", "2"]
    argv += ["--checkpoint", str(mobilesam_checkpoint), "--out"]
    assert main([*argv, str(tmp_path / "plain")]) == 0
    assert "min_region_area" not in json.loads((tmp_path / "plain" / "settings.json").read_text())
    assert main([*argv, str(tmp_path / "plain"), "--min-region-area", "50"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "clean"), "--min-region-area", "50"]) == 0
    settings = json.loads((tmp_path / "clean" / "settings.json").read_text())
    assert settings["min_region_area"] == 50
    assert main([*argv, str(tmp_path / "bad"), "--min-region-area", "-1"]) == 2
    assert "--min-region-area=-1: expected an integer >= 0" in capsys.readouterr().err
