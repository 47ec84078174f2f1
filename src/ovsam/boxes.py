"""Validation of user-given boxes (XYXY pixels) shared by the predictor and region classifiers."""

from __future__ import annotations

from numbers import Real

import numpy as np

from ovsam.errors import InputError


def finite_array(
    name: str,
    value: object,
    shape_hint: str,
    allow_bool: bool = False,
    dtype: type[np.floating] = np.float64,
    copy: bool = True,
) -> np.ndarray:
    """``value`` as a new ``dtype`` array (float64 by default; with ``copy=False`` an array
    already of ``dtype`` is returned as is); :class:`InputError` if not real numbers, NaN or
    infinite (also after the conversion).

    Complex values are refused (their imaginary part would be dropped silently), and so are
    booleans unless ``allow_bool`` (a boolean mask is not logits, nor a coordinate), text
    (even "12") and anything else that is not a number (such as None in an object array,
    which numpy would turn into NaN).
    """
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric ({shape_hint}): {exc}") from exc
    if raw.dtype.kind == "O":
        boolean = (bool, np.bool_) if not allow_bool else ()
        bad = [v for v in raw.flat if not isinstance(v, Real) or isinstance(v, boolean)]
        if bad:
            raise InputError(f"{name} must be numeric ({shape_hint}): {bad[0]!r} is not a number")
        raw = raw.astype(np.float64)
    elif raw.dtype.kind not in "biufc":
        kind = "text" if raw.dtype.kind in "US" else f"{raw.dtype} values"
        raise InputError(f"{name} must be numeric ({shape_hint}), got {kind}")
    if raw.dtype.kind == "c" or (raw.dtype.kind == "b" and not allow_bool):
        kinds = "complex" if raw.dtype.kind == "c" else "boolean"
        raise InputError(f"{name} must be real numbers ({shape_hint}), got {kinds} values")
    try:
        arr = raw.astype(dtype, copy=copy)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric ({shape_hint}): {exc}") from exc
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def clip_to_image(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``Nx4`` XYXY ``boxes`` (float) clipped to a ``height x width`` image (a copy), and which
    of them are then less than 1 pixel wide or high (bool ``N``): no prompt for the model."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    too_small = (clipped[:, 2] - clipped[:, 0] < 1) | (clipped[:, 3] - clipped[:, 1] < 1)
    return clipped, too_small


def clip_boxes_to_image(
    boxes: object, height: int, width: int, allow_empty: bool = False
) -> np.ndarray:
    """Validate ``Nx4`` (or ``4``) XYXY pixel boxes and clip them to a ``height x width`` image.

    Raises :class:`InputError` for NaN, inverted boxes (x1 < x0 or y1 < y0), boxes that lie
    entirely outside the image, and boxes less than 1 pixel wide or high after clipping. Returns ``Nx4`` float32.
    With ``allow_empty`` (a batch of boxes), N may be 0: ``0x4``, or ``[]`` (shape ``(0,)``).
    """
    arr = finite_array("box", boxes, "XYXY pixels")
    if arr.shape == (4,) or (allow_empty and arr.shape == (0,)):
        arr = arr.reshape(-1, 4)
    if arr.ndim != 2 or arr.shape[1] != 4 or (arr.shape[0] == 0 and not allow_empty):
        shapes = "(4,) or Nx4" + " (N >= 0)" * allow_empty
        raise InputError(f"box must be XYXY with shape {shapes}, got {np.shape(boxes)}")
    for x0, y0, x1, y1 in arr:
        name = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if x1 < x0 or y1 < y0:
            raise InputError(f"{name} is inverted: expected x0 <= x1 and y0 <= y1 (XYXY)")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise InputError(f"{name} lies entirely outside the {width}x{height} image")
    clipped, empty = clip_to_image(arr, height, width)
    if np.any(empty):
        x0, y0, x1, y1 = arr[np.argmax(empty)]
        raise InputError(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is less than 1 pixel wide or high inside "
            "the image"
        )
    return clipped.astype(np.float32)
