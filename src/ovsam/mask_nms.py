"""Duplicate removal for "segment everything": greedy non-maximum suppression on mask IoU.

Mask IoU (not box IoU) is used so that a stray pixel far from an object cannot stop two copies
of the same mask from being recognised as duplicates. It is the IoU of the masks' pixels,
decided from coarse copies: each mask as the count of its pixels in every ``cell x cell``
cell (:func:`~ovsam.mask_statistics.cell_counts`). Two masks with ``a`` and ``b`` pixels in a
cell of ``c`` share at least ``max(0, a + b - c)`` and at most ``min(a, b)`` of them, which
bounds their IoU; only a pair whose bounds straddle the threshold (distinct small objects
sharing cells, near-duplicates right at the threshold) has its shared pixels counted exactly,
by a callback. IoU is computed only for the pairs the greedy pass needs (each kept mask against
the later candidates whose cells' bounding box overlaps its own), so memory grows with the
number of candidates, not with its square.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ovsam.mask_statistics import mask_boxes

CHUNK_CELLS = 1 << 23
"""Cells of candidates compared with a kept mask at once (bounds the temporaries)."""

PixelIntersections = Callable[[int, torch.Tensor, tuple[int, int, int, int]], torch.Tensor]
"""``(i, rows, box) -> counts``: pixels that mask ``i`` shares with each mask of ``rows``
(``R`` int64 indices; returns ``R`` integers), all of them inside the cells ``box``
``(y0, x0, y1, x1)`` (ends exclusive), which cover mask ``i``."""


def _iou(inter: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """IoU from shared pixels and the sum of both areas (0 for two empty masks), in float64:
    float32 rounds counts over 2**24 and so misjudges multi-megapixel masks at the threshold."""
    return inter.double() / (total - inter).clamp(min=1).double()


def mask_nms(
    cells: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    cell_size: int = 1,
    pixel_intersections: PixelIntersections | None = None,
) -> torch.Tensor:
    """Indices of the masks kept by greedy NMS on pixel IoU, in score order.

    ``cells`` ``KxH'xW'`` (bool or integer): each mask's pixels in every ``cell_size x
    cell_size`` cell; full-size ``KxHxW`` bool masks with ``cell_size`` 1. Highest ``scores``
    first, a mask whose IoU with a kept one exceeds ``iou_threshold`` is dropped; of equal
    scores the lowest index goes first, as in torchvision's ``nms``. An empty mask overlaps
    nothing: kept, suppressing nothing. ``pixel_intersections`` counts the shared pixels of
    the pairs the cells leave undecided (see the module doc); needed when ``cell_size`` > 1.
    """
    cells = cells.cpu()  # not copied in score order: it can be large
    area = cells.flatten(1).sum(1, dtype=torch.int64)
    boxes = mask_boxes(cells != 0)
    order = torch.argsort(scores.cpu(), descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    alive = torch.ones(len(order), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not alive[i]:
            continue
        keep.append(i)
        y0, x0, y1, x1 = boxes[i].tolist()
        later = alive & (rank > rank[i]) & (boxes[:, 0] < y1) & (boxes[:, 2] > y0)
        later &= (boxes[:, 1] < x1) & (boxes[:, 3] > x0)
        step = max(1, CHUNK_CELLS // max(1, (y1 - y0) * (x1 - x0)))
        own = cells[i, y0:y1, x0:x1]
        for rows in later.nonzero()[:, 0].split(step):  # bounded temporaries
            region = cells[rows, y0:y1, x0:x1]
            total = area[i] + area[rows]
            most = torch.minimum(region, own).sum((1, 2), dtype=torch.int64)
            close = _iou(most, total) > iou_threshold  # the others stay for sure
            if cell_size > 1 and close.any():
                rows, total = rows[close], total[close]
                both = region[close].to(torch.int64) + own.to(torch.int64)  # cell_size**2
                least = (both - cell_size**2).clamp_(min=0).sum((1, 2))  # overflows int32
                drop = _iou(least, total) > iou_threshold
                unsure = ~drop
                if unsure.any():
                    if pixel_intersections is None:
                        raise ValueError(
                            f"masks on {cell_size}x{cell_size} cells need pixel_intersections"
                        )
                    shared = pixel_intersections(i, rows[unsure], (y0, x0, y1, x1))
                    drop[unsure] = _iou(shared.cpu().long(), total[unsure]) > iou_threshold
                close = drop
            alive[rows[close]] = False
    return torch.tensor(keep, dtype=torch.long)
