"""Binary-mask utilities: COCO run-length encoding, boxes, areas.

RLE follows the COCO convention exactly (pycocotools-compatible): runs are counted over the
mask in column-major (Fortran) order starting with a run of zeros, and the ``counts`` string
uses COCO's compressed ASCII form. Boxes are ``[x, y, w, h]`` (XYWH, pixels) as in COCO, or
XYXY where the name says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ovsam.errors import InputError


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO run lengths of an ``HxW`` boolean mask (column-major, zeros first)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def _counts_to_string(counts: list[int]) -> str:
    out: list[str] = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _string_to_counts(text: str) -> list[int]:
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        x, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise InputError("RLE counts string is truncated")
            c = ord(text[pos]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if shift > 65:  # a count beyond 64 bits: each longer one took quadratic time
                raise InputError("RLE counts string holds a count of more than 64 bits")
            if not more and c & 0x10:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def check_mask_dtype(name: str, mask: np.ndarray) -> None:
    """:class:`InputError` unless ``mask`` (called ``name``) holds booleans or integers
    (nonzero: inside): float logits are inside above the model's ``mask_threshold``, not
    wherever they are nonzero."""
    if mask.dtype.kind not in "biu":
        raise InputError(
            f"{name} must be boolean (or integers, nonzero inside), got {mask.dtype} values: "
            "threshold mask logits first (logits > model.mask_threshold)"
        )


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of an ``HxW`` boolean mask
    (integers: nonzero is inside; float logits are refused, which pycocotools' ``encode`` (uint8
    or bool only) refuses too)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be HxW, got shape {tuple(mask.shape)}")
    check_mask_dtype("mask", mask)
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": _counts_to_string(rle_counts(mask)),
    }


def _whole_numbers(values: object, name: str, what: str) -> list[int]:
    """``values`` (a list or tuple of non-negative whole numbers) as ints, else InputError."""
    if isinstance(values, (list, tuple, np.ndarray)):
        arr = np.asarray(values)
        if arr.ndim == 1 and arr.dtype.kind in "iuf" and np.all(np.isfinite(arr)):
            if np.all(arr >= 0) and np.all(arr == np.round(arr)):
                return [int(v) for v in arr]
    raise InputError(f"RLE {name} must be {what}, got {_shown(values)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def rle_runs(rle: Mapping[str, object]) -> tuple[int, int, list[int]]:
    """``(H, W, run lengths)`` of a COCO RLE (compressed string or uncompressed list
    ``counts``), checked as :func:`decode_rle` checks it, without building the mask."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise InputError(f"not a COCO RLE dict with 'size' and 'counts': {_shown(rle)}")
    size = _whole_numbers(rle["size"], "size", "[height, width]: two non-negative integers")
    if len(size) != 2:
        raise InputError(f"RLE size must be [height, width], got {_shown(rle['size'])}")
    height, width = size
    raw = rle["counts"]
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(
                "RLE counts bytes are not a COCO compressed string (not ASCII)"
            ) from None
    if isinstance(raw, str):
        counts = _string_to_counts(raw)
    else:
        what = "a COCO compressed string or a list of non-negative integers"
        counts = _whole_numbers(raw, "counts", what)
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise InputError(
            f"RLE counts sum to {sum(counts)}, expected {height}x{width}={height * width}"
        )
    return height, width, counts


def decode_rle(rle: Mapping[str, object]) -> np.ndarray:
    """Decode COCO RLE (compressed string or uncompressed list ``counts``) to ``HxW`` bool.

    ``rle["size"]`` is ``[H, W]``; anything else (a missing field, text where numbers belong,
    negative or fractional numbers, counts that do not cover ``H*W``) raises InputError.
    """
    return runs_to_mask(*rle_runs(rle))


def runs_to_mask(height: int, width: int, counts: Sequence[int]) -> np.ndarray:
    """The ``HxW`` bool mask of checked column-major run lengths (:func:`rle_runs`)."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T.copy()


def mask_to_box_xyxy(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` with exclusive ``x1, y1`` of a mask; None if empty."""
    ys = np.flatnonzero(np.any(mask, axis=1))
    xs = np.flatnonzero(np.any(mask, axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def mask_to_bbox_xywh(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` box of a mask (``[0, 0, 0, 0]`` for an empty mask)."""
    box = mask_to_box_xyxy(mask)
    if box is None:
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
