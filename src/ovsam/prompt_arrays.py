"""Checks of the numpy tier's inputs (``SamPredictor.set_image`` / ``predict``), in pixels.

Each check returns its input in the form the model takes, or raises
:class:`~ovsam.errors.InputError` naming the problem. Boxes are checked by :mod:`ovsam.boxes`,
the tensor tier's batched prompts by :mod:`ovsam.prompt_tensors`.
"""

from __future__ import annotations

import numpy as np

from ovsam.boxes import finite_array
from ovsam.errors import InputError
from ovsam.image_io import check_image_array
from ovsam.input_values import check_mask_logits
from ovsam.masks import check_mask_dtype


def rgb_image(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """``image`` as the contiguous ``HxWx3`` uint8 RGB array the predictors embed.

    Takes ``HxWx3``, ``HxWx4`` (composited on white) or ``HxW`` greyscale uint8 arrays (see
    :func:`~ovsam.image_io.check_image_array`) with channels in ``image_format`` order,
    "RGB" or "BGR" (OpenCV's order, also for its BGRA).
    """
    if image_format not in ("RGB", "BGR"):
        raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    rgb = check_image_array(image)
    return np.ascontiguousarray(rgb[:, :, ::-1]) if image_format == "BGR" else rgb


def check_points(
    point_coords: object, point_labels: object, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``Nx2`` XY pixel clicks inside an ``(H, W)`` image and their ``N`` labels (1 = object,
    0 = background; booleans allowed), as float64 arrays. N may be 0 (``0x2``): a UI's
    empty click list."""
    coords = finite_array("point_coords", point_coords, "Nx2 XY pixels")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"point_coords must have shape Nx2 (XY pixels), got {coords.shape}")
    if point_labels is None:
        raise InputError("point_labels are required with point_coords (1 = object, 0 = background)")
    labels = finite_array("point_labels", point_labels, "N values of 0 or 1", allow_bool=True)
    if labels.shape != (coords.shape[0],):
        raise InputError(f"point_labels must have shape ({coords.shape[0]},), got {labels.shape}")
    if not np.all(np.isin(labels, (0, 1))):
        raise InputError("point_labels must be 1 (object) or 0 (background)")
    height, width = size
    outside = (
        (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
    )
    if np.any(outside):
        x, y = coords[np.argmax(outside)]
        raise InputError(f"point ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return coords, labels


def check_mask_input(mask_input: object, low_res: int) -> np.ndarray:
    """``1 x low_res x low_res`` logits (a previous prediction's) as float32."""
    arr = finite_array("mask_input", mask_input, f"1x{low_res}x{low_res} logits")
    raw_dtype = np.asarray(mask_input).dtype  # read as numbers: a valid array
    if arr.shape != (1, low_res, low_res):
        raise InputError(
            f"mask_input must be 1x{low_res}x{low_res} low-res logits (from a previous "
            f"predict), got shape {arr.shape}"
        )
    check_mask_logits(
        "mask_input", str(raw_dtype), raw_dtype.kind in "iu", float(np.abs(arr).max())
    )
    return arr.astype(np.float32)


def check_masks(masks: object, size: tuple[int, int]) -> np.ndarray:
    """``NxHxW`` masks of an ``(H, W)`` image as booleans: bool, or integers where nonzero is
    inside (0/1, 0/255); N may be 0. Float masks are refused: logits (``return_logits``) are
    inside above the model's ``mask_threshold``, not wherever they are nonzero."""
    raw = np.asarray(masks)
    check_mask_dtype("masks", raw)
    arr = raw.astype(bool, copy=False)
    if arr.ndim != 3 or arr.shape[1:] != tuple(size):
        raise InputError(f"masks must be NxHxW with HxW = {tuple(size)}, got {arr.shape}")
    return arr
