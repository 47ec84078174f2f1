"""Crop layers of "segment everything": SAM's ``crop_n_layers``.

Layer 0 is the whole image; layer ``i`` cuts it into ``2**i x 2**i`` overlapping crops
(:func:`crop_boxes`, SAM's ``generate_crop_boxes``). Each crop is embedded anew, so its
objects get the model's whole input resolution, and prompted with its own point grid. A
crop's masks whose box lies within :data:`CROP_EDGE_TOLERANCE` pixels of an edge of the crop
that is not an edge of the image are cut objects and dropped (:func:`near_crop_edge`, SAM's
``is_box_near_crop_edge``). The masks of all crops are then deduplicated together, those of
smaller crops ranked first (:func:`merge_crops`): by mask IoU, as within a crop (SAM compares
boxes).

A crop's masks are held at the crop's size with its offset (:class:`PlacedMasks`): only the
masks kept by the merge are pasted into full-size ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from itertools import product

import numpy as np
import torch

from ovsam.mask_nms import mask_nms
from ovsam.mask_statistics import cell_counts, cell_dtype

CROP_EDGE_TOLERANCE = 20.0
"""Pixels: a mask box this close to an inner crop edge is cut by the crop (SAM's ``atol``)."""

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` pixels, ends exclusive (XYXY)."""


def crop_boxes(size: tuple[int, int], n_layers: int, overlap_ratio: float) -> list[tuple[Box, int]]:
    """The crops of an ``(H, W)`` image and their layers, as SAM's ``generate_crop_boxes``:
    the whole image (layer 0), then for each layer ``i`` (1..``n_layers``) ``2**i x 2**i``
    crops (x outer, y inner) that overlap by ``int(overlap_ratio * min(H, W) * 2 / 2**i)``
    pixels."""
    height, width = size
    boxes: list[tuple[Box, int]] = [((0, 0, width, height), 0)]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        xs = [int((crop_w - overlap) * i) for i in range(per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(per_side)]
        boxes += [
            ((x, y, min(x + crop_w, width), min(y + crop_h, height)), layer)
            for x, y in product(xs, ys)
        ]
    return boxes


def near_crop_edge(boxes: torch.Tensor, crop: Box, size: tuple[int, int]) -> torch.Tensor:
    """``K`` bool: the mask boxes ``boxes`` (``Kx4`` ``(y0, x0, y1, x1)`` in the crop's
    pixels, ends exclusive, as :func:`~ovsam.mask_statistics.mask_boxes`) within
    :data:`CROP_EDGE_TOLERANCE` of an edge of ``crop`` that is not near an edge of the
    ``(H, W)`` image. As SAM, a box is compared by its first and last pixel (ends inclusive)."""
    x0, y0 = crop[0], crop[1]
    y_first, x_first, y_end, x_end = boxes.double().unbind(1)
    xyxy = torch.stack([x_first + x0, y_first + y0, x_end - 1 + x0, y_end - 1 + y0], dim=1)
    crop_t = torch.tensor(crop, dtype=torch.float64)
    image_t = torch.tensor([0, 0, size[1], size[0]], dtype=torch.float64)
    near_crop = (xyxy - crop_t).abs() <= CROP_EDGE_TOLERANCE
    near_image = (xyxy - image_t).abs() <= CROP_EDGE_TOLERANCE
    return (near_crop & ~near_image).any(1)


@dataclass
class PlacedMasks:
    """Masks held at their crop's size: ``arrays[k]`` (``hxw`` bool) lies at ``crops[k]``
    (XYXY pixels of the ``size`` ``(H, W)`` image)."""

    size: tuple[int, int]
    arrays: list[np.ndarray] = field(default_factory=list)
    crops: list[Box] = field(default_factory=list)

    def full(self, k: int) -> np.ndarray:
        """Mask ``k`` at the image's size (the array itself when its crop is the image)."""
        array, (x0, y0, x1, y1) = self.arrays[k], self.crops[k]
        if array.shape == self.size:
            return array
        full = np.zeros(self.size, dtype=bool)
        full[y0:y1, x0:x1] = array
        return full

    def cells(self, stride: int) -> torch.Tensor:
        """``KxH'xW'``: each mask's pixels in every ``stride x stride`` cell of the image
        (:func:`~ovsam.mask_statistics.cell_counts`), counted on the cells its crop covers."""
        grid = (-(-self.size[0] // stride), -(-self.size[1] // stride))
        out = torch.zeros((len(self.arrays), *grid), dtype=cell_dtype(stride))
        for k, (array, (x0, y0, x1, y1)) in enumerate(zip(self.arrays, self.crops, strict=True)):
            cy0, cx0, cy1, cx1 = y0 // stride, x0 // stride, -(-y1 // stride), -(-x1 // stride)
            window = np.zeros(((cy1 - cy0) * stride, (cx1 - cx0) * stride), dtype=bool)
            window[y0 - cy0 * stride : y1 - cy0 * stride, x0 - cx0 * stride : x1 - cx0 * stride] = (
                array
            )
            out[k, cy0:cy1, cx0:cx1] = cell_counts(torch.from_numpy(window)[None], stride)[0]
        return out

    def shared(self, stride: int, i: int, rows: torch.Tensor, cells: Box) -> torch.Tensor:
        """Pixels mask ``i`` shares with each mask of ``rows`` inside the cells ``cells``
        ``(y0, x0, y1, x1)`` (see :data:`~ovsam.mask_nms.PixelIntersections`)."""
        top, left, bottom, right = (v * stride for v in cells)
        counts = []
        for j in rows.tolist():
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = self.crops[i], self.crops[j]
            x0, y0 = max(ax0, bx0, left), max(ay0, by0, top)
            x1, y1 = min(ax1, bx1, right), min(ay1, by1, bottom)
            if x0 >= x1 or y0 >= y1:
                counts.append(0)
                continue
            a = self.arrays[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
            b = self.arrays[j][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
            counts.append(int(np.count_nonzero(a & b)))
        return torch.tensor(counts, dtype=torch.int64)

    def nms(self, scores: torch.Tensor, iou_threshold: float, stride: int) -> list[int]:
        """:func:`~ovsam.mask_nms.mask_nms` of these masks ranked by ``scores`` (mask IoU >
        ``iou_threshold``, on ``stride`` cells, the pixels counted exactly where undecided):
        the indices kept, in rank."""
        if not self.arrays:
            return []
        shared = partial(self.shared, stride)
        return mask_nms(self.cells(stride), scores, iou_threshold, stride, shared).tolist()


def merge_crops(placed: PlacedMasks, nms_thresh: float, stride: int) -> list[int]:
    """Indices of the masks kept when duplicates across crops (mask IoU > ``nms_thresh``)
    are removed, the masks of smaller crops first (SAM's score ``1 / crop area``), then in
    the given order; in that rank."""
    areas = torch.tensor([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in placed.crops])
    return placed.nms(1.0 / areas.double(), nms_thresh, stride)
