"""What the automatic mask generator measures on full-size masks, without holding them.

SAM's generator filters each candidate by its stability score and area, and removes
duplicates on a coarse copy of its mask, all measured on the logits upscaled (bilinear) to the
original image size. At 12 MP those are 48 MB of logits per candidate, and writing them out
and reading them back for every statistic made the filters memory-bound. Here the last
upscale (model input frame -> original size) is computed as two products with the
interpolation matrices of ``F.interpolate(..., mode="bilinear", align_corners=False)``
(horizontal for all rows, then vertical a band of rows at a time), and every statistic is
taken while its band is in cache. (Originals no larger than the frame are interpolated
whole.) The logits equal ``postprocess_masks``' up to fp32
rounding. The final masks of the kept candidates are upscaled the ordinary way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ovsam.modeling.common import cache_block

BAND_ELEMENTS = 1 << 19
"""Logits per band on the CPU (2 MB of float32, kept in cache); other devices take all rows
of a batch at once."""
COLUMN_BLOCK = 512
"""Output columns per product of the horizontal pass (each reads a narrow span of columns)."""


@dataclass
class MaskStatistics:
    """Per candidate of a batch of K: ``stability`` (float32: IoU of the masks at threshold
    + offset and threshold - offset, 0 where both are empty), ``area`` (int64: pixels above
    the threshold) and ``cells`` (``KxH'xW'``, H' = ceil(H / stride): pixels above the
    threshold in each ``stride x stride`` cell, see :func:`cell_counts`); ``boxes``, when
    asked for, ``Kx4`` ``(y0, x0, y1, x1)`` (ends exclusive) around those pixels, as
    :func:`mask_boxes`."""

    stability: Tensor
    area: Tensor
    cells: Tensor
    boxes: Tensor | None = None


def stability_from_counts(inter: Tensor, union: Tensor) -> Tensor:
    """Stability scores from pixel counts above threshold + offset (``inter``) and above
    threshold - offset (``union``): float32 ``inter / union``, 0 where both are empty (an
    empty mask is no stable object; SAM's own division gives NaN there, which no threshold
    keeps either)."""
    return inter.float() / union.float().clamp(min=1)


def stability_scores(logits: Tensor, threshold: float, offset: float) -> Tensor:
    """IoU of ``logits > threshold + offset`` with ``logits > threshold - offset``, per mask.

    ``logits`` ``Nx...``; returns ``N`` scores in [0, 1] (0 for masks empty at both levels).
    """
    flat = logits.flatten(1)
    inter = (flat > threshold + offset).sum(1, dtype=torch.int32)  # int32: 1.7x faster
    union = (flat > threshold - offset).sum(1, dtype=torch.int32)
    return stability_from_counts(inter, union)


def cell_dtype(stride: int) -> torch.dtype:
    """The smallest integer type that holds a ``stride x stride`` cell's pixel count."""
    pixels = stride * stride
    return torch.uint8 if pixels <= 255 else torch.int16 if pixels <= 32767 else torch.int32


def cell_counts(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """``KxHxW`` bool -> ``Kx ceil(H/stride) x ceil(W/stride)``: how many pixels of each
    ``stride x stride`` cell are True, in :func:`cell_dtype` (cells of 182 pixels or more a
    side, from images over 46,336 pixels long, need int32). Cells at the bottom and right
    edges may be partial; nothing is padded (a 1-pixel-high strip padded to a whole cell
    took ``stride`` times its memory)."""
    dtype = cell_dtype(stride)
    if stride == 1:
        return masks.to(dtype)
    return _block_sums(_block_sums(masks, stride, 1, dtype), stride, 2, dtype)


def _block_sums(x: Tensor, stride: int, dim: int, dtype: torch.dtype) -> Tensor:
    """Sums of ``x`` over consecutive blocks of ``stride`` along ``dim`` (the last block
    partial when ``stride`` does not divide its size), in ``dtype``."""
    size = x.shape[dim]
    whole = size // stride * stride
    parts = []
    if whole:
        blocks = x.narrow(dim, 0, whole).unflatten(dim, (whole // stride, stride))
        parts.append(blocks.sum(dim + 1, dtype=dtype))
    if size > whole:
        parts.append(x.narrow(dim, whole, size - whole).sum(dim, keepdim=True, dtype=dtype))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def mask_boxes(masks: Tensor) -> Tensor:
    """Bounding boxes of ``KxHxW`` boolean masks as ``Kx4`` ``(y0, x0, y1, x1)`` (ends
    exclusive), on the masks' device; an empty mask gets ``(0, 0, 0, 0)``."""
    return profile_boxes(masks.any(2), masks.any(1))


def profile_boxes(rows: Tensor, cols: Tensor) -> Tensor:
    """:func:`mask_boxes` from ``KxH`` ``rows`` and ``KxW`` ``cols``: whether each row and
    column of each mask holds a True pixel."""
    h, w = rows.shape[1], cols.shape[1]
    boxes = torch.stack(
        [
            rows.byte().argmax(1),  # the first True (argmax returns the first maximum)
            cols.byte().argmax(1),
            h - rows.flip(1).byte().argmax(1),
            w - cols.flip(1).byte().argmax(1),
        ],
        dim=1,
    )
    return boxes * rows.any(1, keepdim=True)


def interpolation_matrix(
    size_in: int, size_out: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``size_out x size_in`` (``dtype``): bilinear interpolation along one axis with the weights
    of ``F.interpolate(..., align_corners=False)``: source position ``(i + 0.5) * scale -
    0.5`` clamped at 0, ``scale = size_in / size_out``; two taps, weights summing to 1.
    Computed as PyTorch does for ``dtype``: in float64 for float64, else with a float32
    scale and the position rounded to float32 once (its fused multiply-add)."""
    centres = torch.arange(size_out, dtype=torch.float64) + 0.5
    if dtype == torch.float64:
        source = centres * (size_in / size_out) - 0.5
    else:
        scale = float(torch.tensor(size_in, dtype=torch.float32) / size_out)
        source = (centres * scale - 0.5).float()  # exact product, one rounding
    source = source.clamp(min=0)
    first = source.long()  # source >= 0: truncation is floor
    second = torch.where(first < size_in - 1, first + 1, first)
    weight = source - first
    matrix = torch.zeros((size_out, size_in), dtype=source.dtype)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, first), 1 - weight, accumulate=True)
    matrix.index_put_((rows, second), weight, accumulate=True)
    return matrix.to(device, dtype)


def _source_span(matrix: Tensor) -> slice:
    """The columns of ``matrix`` (an interpolation block) that hold nonzero weights."""
    used = matrix.ne(0).any(dim=0).nonzero()
    return slice(int(used[0]), int(used[-1]) + 1)


def _upscale_columns(frame_logits: Tensor, width: int) -> Tensor:
    """``Kxhxw`` -> ``Kxhxwidth``: the horizontal half of the bilinear upscale."""
    k, h, w = frame_logits.shape
    matrix = interpolation_matrix(w, width, frame_logits.device, frame_logits.dtype)
    out = frame_logits.new_empty((k, h, width))
    for start in range(0, width, COLUMN_BLOCK):
        block = matrix[start : start + COLUMN_BLOCK]
        span = _source_span(block)
        columns = slice(start, start + block.shape[0])
        torch.matmul(frame_logits[:, :, span], block[:, span].T, out=out[:, :, columns])
    return out


def _band_logits(frame_logits: Tensor, size: tuple[int, int], band: int) -> Callable[[int], Tensor]:
    """``start -> Kx(rows)xW`` logits of output rows ``start : start + band`` at ``size``.

    An upscale (the original is larger than the input frame) is done as products with
    interpolation matrices, band by band; a downscale, whose output is at most the frame's
    size, by ``F.interpolate`` at once (the products would read every source column).
    """
    k, h, w = frame_logits.shape
    height, width = size
    if height * width <= h * w:
        full = F.interpolate(frame_logits[:, None], size, mode="bilinear", align_corners=False)
        return lambda start: full[:, 0, start : start + band]
    across = _upscale_columns(frame_logits, width)
    down = interpolation_matrix(h, height, frame_logits.device, frame_logits.dtype)

    def rows_at(start: int) -> Tensor:
        rows = down[start : start + band]
        span = _source_span(rows)
        return torch.matmul(rows[:, span], across[:, span])

    return rows_at


def _at_least_float32(logits: Tensor) -> Tensor:
    """float32 at least (as ``F.interpolate`` computes half precision); float64 is kept."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def window_masks(
    frame_logits: Tensor, size: tuple[int, int], threshold: float, rows: slice
) -> Tensor:
    """Rows ``rows`` (a slice of ``range(H)`` with a step of 1) of the masks that ``Kxhxw``
    frame logits give at the original size ``(H, W)``, as in :func:`mask_statistics`:
    ``K x len(rows) x W`` bool. An upscale computes only the frame rows these rows read."""
    frame_logits = _at_least_float32(frame_logits)
    _, h, w = frame_logits.shape
    height, width = size
    if height * width <= h * w:
        return _band_logits(frame_logits, size, rows.stop - rows.start)(rows.start) > threshold
    down = interpolation_matrix(h, height, frame_logits.device, frame_logits.dtype)[rows]
    span = _source_span(down)
    across = _upscale_columns(frame_logits[:, span], width)
    return torch.matmul(down[:, span], across) > threshold


def mask_statistics(
    frame_logits: Tensor,
    size: tuple[int, int],
    threshold: float,
    offset: float,
    stride: int,
    boxes: bool = False,
) -> MaskStatistics:
    """Statistics of the masks that ``Kxhxw`` logits give at the original size ``(H, W)``.

    ``frame_logits`` are the low-res logits upscaled to the model's input frame and cropped
    to the resized image (``Sam.masks_in_input_frame``); the statistics are those of
    ``logits > threshold`` (and of ``threshold +/- offset`` for stability) after the last
    bilinear upscale to ``size``. Bands are ``stride``-row aligned, so each cell lies in one
    (off the CPU the whole image is one band). ``boxes``: measure the masks' boxes too.
    """
    k = frame_logits.shape[0]
    height, width = size
    device = frame_logits.device
    frame_logits = _at_least_float32(frame_logits)
    rows = max(1, cache_block(BAND_ELEMENTS, device) // max(1, k * width * stride)) * stride
    band = min(rows, height)  # off the CPU: one band
    band_logits = _band_logits(frame_logits, size, band)
    counts = torch.zeros((3, k), dtype=torch.int32, device=device)
    cells, rows_used = [], []
    cols_used = torch.zeros((k, width), dtype=torch.bool, device=device)
    for start in range(0, height, band):
        logits = band_logits(start)
        for i, level in enumerate((threshold + offset, threshold - offset)):
            counts[i] += (logits > level).sum((1, 2), dtype=torch.int32)
        above = logits > threshold
        counts[2] += above.sum((1, 2), dtype=torch.int32)
        cells.append(cell_counts(above, stride))
        if boxes:
            rows_used.append(above.any(2))
            cols_used |= above.any(1)
    inter, union, area = counts.long()
    measured = MaskStatistics(stability_from_counts(inter, union), area, torch.cat(cells, dim=1))
    if boxes:
        measured.boxes = profile_boxes(torch.cat(rows_used, dim=1), cols_used)
    return measured
