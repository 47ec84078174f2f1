"""Duplicate removal for "segment everything": greedy non-maximum suppression on mask IoU.

Mask IoU (not box IoU) is used so that a stray pixel far from an object cannot stop two copies
of the same mask from being recognised as duplicates. IoU is measured on ``stride x stride``
cells (:func:`~ovsam.mask_statistics.cell_masks`) and computed only for the pairs the greedy
pass needs (each kept mask against the later candidates whose cells' bounding box overlaps
its own), so memory grows with the number of candidates, not with its square.
"""

from __future__ import annotations

import torch

from ovsam.mask_statistics import cell_masks, mask_boxes

CHUNK_CELLS = 1 << 25
"""Cells of candidates compared with a kept mask at once (32 MiB of booleans per temporary)."""


def mask_nms(
    masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float, stride: int = 4
) -> torch.Tensor:
    """Indices of the ``KxHxW`` boolean ``masks`` kept by greedy NMS on mask IoU (highest
    ``scores`` first; a mask whose IoU with a kept one exceeds ``iou_threshold`` is dropped),
    in score order; of equal scores the lowest index goes first, as in torchvision's ``nms``.
    IoU is measured on ``stride x stride`` cells."""
    cells = cell_masks(masks, stride).cpu()  # not copied in score order: it can be large
    area = cells.flatten(1).sum(1)
    boxes = mask_boxes(cells)  # an empty mask's overlaps nothing: kept, suppressing nothing
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
        for rows in later.nonzero()[:, 0].split(step):  # bounded temporaries
            inter = torch.count_nonzero(cells[rows, y0:y1, x0:x1] & cells[i, y0:y1, x0:x1], (1, 2))
            iou = inter / (area[i] + area[rows] - inter).clamp(min=1)
            alive[rows[iou > iou_threshold]] = False
    return torch.tensor(keep, dtype=torch.long)
