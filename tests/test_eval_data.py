"""Evaluation ground truth and prompts: LVIS novel classes, prompt sampling, polygons."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ovsam.data.polygons import fill_polygons, polygons_to_mask
from ovsam.data.prompts import (
    center_points,
    frame_center_points,
    large_scale_jitter,
    random_points,
)
from ovsam.errors import InputError
from ovsam.evaluation.runner import lvis_splits
from ovsam.transforms import ResizeLongestSide


def test_lvis_novel_classes_are_the_rare_ones() -> None:
    cats = [{"id": 1, "frequency": "r"}, {"id": 2, "frequency": "c"}, {"id": 3, "frequency": "f"}]
    assert lvis_splits(cats) == {1: "novel", 2: "base", 3: "base"}
    with pytest.raises(InputError, match=r"no LVIS 'frequency' field \(category id 4\)"):
        lvis_splits([*cats, {"id": 4, "name": "cat"}])


def test_prompt_helpers() -> None:
    mask = np.zeros((1, 20, 30), dtype=bool)
    mask[0, 2:18, 3:13] = True
    rng = np.random.default_rng(0)
    px, py = random_points(mask, rng)[0]
    assert mask[0, int(py), int(px)] and px == int(px) and py == int(py)
    square = np.zeros((1, 1024, 1024), dtype=bool)
    square[0, 10:13, 20:23] = True  # SAM's convention, as the official get_center_coords: the
    assert center_points(square).tolist() == [[21, 11]]  # centre pixel's index (encoder adds 0.5)
    for dtype in (np.uint8, np.int64, np.float32):  # pycocotools' 0/1 uint8 gave a corner
        assert center_points(square.astype(dtype)).tolist() == [[21, 11]]
    image = np.full((20, 30, 3), 200, dtype=np.uint8)
    out_img, out_mask = large_scale_jitter(image, mask, rng, size=64, scale_range=(1.0, 1.0))
    assert out_img.shape == (43, 64, 3) and out_mask.shape == (1, 43, 64)  # unpadded
    assert out_mask.sum() == pytest.approx(mask.sum() * (64 / 30) ** 2, rel=0.1)
    assert polygons_to_mask([[1, 1, 5, 1, 5, 4, 1, 4]], 6, 8).sum() == 12


def _shape(kind: str) -> np.ndarray:
    """A mask drawn for :func:`test_centre_points_are_the_official_ones`."""
    from PIL import Image, ImageDraw

    if kind in ("rectangle", "L", "whole image"):
        mask = np.zeros({"rectangle": (20, 30), "L": (40, 60), "whole image": (12, 16)}[kind], bool)
        if kind == "rectangle":
            mask[2:18, 3:13] = True
        elif kind == "L":
            mask[5:30, 10:50] = mask[5:12, 10:58] = True
        else:
            mask[:] = True
        return mask
    picture = Image.new("L", (64, 48))
    if kind == "ellipse":
        ImageDraw.Draw(picture).ellipse([4, 6, 50, 40], fill=1)
    else:
        ImageDraw.Draw(picture).polygon([(2, 40), (30, 3), (60, 44), (33, 30)], fill=1)
    return np.asarray(picture, dtype=bool)


@pytest.mark.parametrize(
    ("kind", "point"),
    [("rectangle", (7, 7)), ("L", (23, 17)), ("ellipse", (27, 23)), ("arrowhead", (30, 22)),
     ("whole image", (6, 5))],
)  # fmt: skip
def test_centre_points_are_the_official_ones(kind: str, point: tuple[int, int]) -> None:
    """The points the official ``get_center_coords`` gives (the argmax of kornia 0.7.0's
    ``distance_transform`` of the padded mask, the first in row-major order), computed once
    with kornia: the deepest pixel by its soft distance, not the middle of the deepest ones
    (the rectangle's centre row was 9 or 10; the official point sits on the first row of the
    plateau). 296 random rectangles, ellipses, polygons and noise masks matched likewise."""
    mask = _shape(kind)
    assert center_points(mask[None]).tolist() == [list(point)]
    assert mask[point[1], point[0]]
    assert center_points(np.zeros((2, 5, 5), bool)).tolist() == [[0, 0], [0, 0]]  # empty


def test_evaluation_centre_points_are_picked_in_the_1024_frame() -> None:
    """The official evaluation resizes each mask (nearest) to the model's input frame and picks
    its centre there (``get_center_coords(..., rescale_shape=img_shape)``); the predictor must
    receive exactly that frame pixel. The original-size centre, scaled, was 25 frame pixels
    off for this L."""
    height, width = 30, 40  # frame 768 x 1024
    masks = np.zeros((2, height, width), bool)
    masks[0, 5:25, 3:9] = masks[0, 19:25, 3:35] = True  # an L
    masks[1, 4:10, 5:37] = True  # a bar
    rows = np.arange(768) * height // 768  # mmcv's (cv2's) nearest: floor(i * old / new)
    cols = np.arange(1024) * width // 1024
    official = center_points(masks[:, rows][:, :, cols])
    assert official.tolist() == [[154, 562], [205, 179]]
    frame = ResizeLongestSide(1024)
    given = frame.apply_coords(frame_center_points(masks), (height, width))
    np.testing.assert_allclose(given, official, rtol=0, atol=1e-9)
    scaled = frame.apply_coords(center_points(masks).astype(np.float64), (height, width))
    assert np.abs(scaled - official).max() > 20


def test_deepest_pixels_match_repeated_erosion() -> None:
    """The chessboard depth found by bisection equals the number of 3x3 erosions a pixel
    survives (the straightforward way, ~20x slower on a 1000x1000 mask)."""
    import torch
    import torch.nn.functional as F

    from ovsam.data.prompts import _deepest

    rng = np.random.default_rng(5)
    for h, w, fill in [(1, 9, 1.0), (7, 1, 1.0), (40, 60, 0.9), (33, 20, 0.6), (64, 64, 1.0)]:
        mask = torch.from_numpy(rng.random((h, w)) < fill)
        current, expected, depth = mask.float()[None, None], None, 0
        while current.any():
            expected, depth = current[0, 0] > 0, depth + 1
            current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1)), 3, stride=1)
        found, found_depth = _deepest(mask)
        assert found_depth == depth and torch.equal(found, expected), (h, w, fill)


@pytest.mark.parametrize("pycocotools", [True, False])
def test_polygon_ground_truth_does_not_depend_on_the_coco_extra(
    pycocotools: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pycocotools, polygons fill the pixels whose centres they contain: a box polygon
    gives exactly pycocotools' pixels (not one more row and column, as PIL's fill did)."""
    if pycocotools:
        pytest.importorskip("pycocotools")
    else:
        monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails
    mask = polygons_to_mask([[4, 10, 34, 10, 34, 50, 4, 50], [40, 0, 45, 0, 45, 2, 40, 2]], 60, 50)
    expected = np.zeros((60, 50), dtype=bool)
    expected[10:50, 4:34] = expected[0:2, 40:45] = True
    assert np.array_equal(mask, expected)
    clipped = polygons_to_mask([[-5, -5, 20, -5, 20, 20, -5, 20]], 10, 30)  # off the image
    assert clipped[:, :20].all() and not clipped[:, 20:].any()


def test_filled_polygons_agree_with_pycocotools() -> None:
    """On slanted edges the two rasterisers differ by a few pixels, evenly both ways."""
    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    extra = missing = area = 0
    for _ in range(100):
        n = int(rng.integers(3, 12))
        angle, radius = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(10, 60, n)
        polygon = np.stack([75 + radius * np.cos(angle), 75 + radius * np.sin(angle)], 1)
        polygon = polygon.ravel().tolist()
        ref = coco_mask.decode(coco_mask.frPyObjects([polygon], 150, 150))[..., 0].astype(bool)
        got = fill_polygons([polygon], 150, 150)
        extra, missing, area = (
            extra + (got & ~ref).sum(),
            missing + (ref & ~got).sum(),
            area + ref.sum(),
        )
    assert extra < 0.005 * area and missing < 0.005 * area  # about 0.3% each way
    assert abs(int(extra) - int(missing)) < 0.1 * (extra + missing)  # unbiased
