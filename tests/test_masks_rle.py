"""COCO RLE encoding/decoding, boxes and IoU."""

from __future__ import annotations

import numpy as np
import pytest

from ovsam.errors import InputError
from ovsam.masks import (
    decode_rle,
    encode_rle,
    mask_iou,
    mask_to_bbox_xywh,
    mask_to_box_xyxy,
    rle_counts,
)


def test_counts_are_column_major_starting_with_zeros() -> None:
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    # column-major: col0 = 0,0 ; col1 = 1,1 ; col2 = 1,0
    assert rle_counts(mask) == [2, 3, 1]
    assert rle_counts(np.ones((2, 2), dtype=bool)) == [0, 4]


def test_known_coco_strings() -> None:
    # values produced by pycocotools.mask.encode for the same masks
    assert encode_rle(np.zeros((4, 4), dtype=bool))["counts"] == "`0"
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:4, 2:5] = True
    assert encode_rle(mask) == {"size": [5, 6], "counts": ";320004"}


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((37, 53)) > rng.uniform(0.1, 0.9)
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)


def test_round_trip_large_runs() -> None:
    mask = np.zeros((300, 400), dtype=bool)
    mask[10:290, 5:395] = True
    rle = encode_rle(mask)
    assert np.array_equal(decode_rle(rle), mask)
    assert np.array_equal(decode_rle({"size": [300, 400], "counts": rle_counts(mask)}), mask)


def test_pycocotools_parity_when_available() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    mask = rng.random((64, 48)) > 0.7
    ref = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encode_rle(mask)["counts"] == ref["counts"].decode("ascii")


def test_bad_rle_is_rejected() -> None:
    with pytest.raises(InputError, match="sum to"):
        decode_rle({"size": [2, 2], "counts": [1, 1]})
    with pytest.raises(InputError, match="'size' and 'counts'"):
        decode_rle({"counts": "abc"})
    bad = [
        ({"size": [2, 2], "counts": None}, "counts must be a COCO compressed string or a list"),
        ({"size": [2, 2], "counts": 4}, "counts must be .* got 4"),
        ({"size": [2, 2], "counts": [1.5, 2.5]}, "counts must be"),
        ({"size": [2, 2], "counts": b"\xff\xfe"}, "not ASCII"),
        ({"size": [-2, -2], "counts": [4]}, r"size must be \[height, width\]"),
        ({"size": "22", "counts": [4]}, r"size must be .* got '22'"),  # not ['2', '2']
        ({"size": [2, 2, 1], "counts": [4]}, r"size must be \[height, width\]"),
        ({"size": [2.5, 2], "counts": [5]}, "size must be"),
        (["size", "counts"], "not a COCO RLE dict"),
        ({"size": [2, 2], "counts": "o" * 200_000 + "0"}, "a count of more than 64 bits"),
    ]
    for rle, message in bad:
        with pytest.raises(InputError, match=message):
            decode_rle(rle)
    whole = decode_rle({"size": [2.0, 2], "counts": np.array([1, 2, 1])})  # JSON floats, numpy
    assert whole.tolist() == [[False, True], [True, False]]


def test_boxes_and_iou() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_to_box_xyxy(mask) == (3, 2, 9, 5)
    assert mask_to_bbox_xywh(mask) == [3, 2, 6, 3]
    assert mask_to_bbox_xywh(np.zeros((3, 3), dtype=bool)) == [0, 0, 0, 0]
    other = np.zeros_like(mask)
    other[2:5, 6:12] = True
    assert mask_iou(mask, other) == pytest.approx(9 / 27)
