"""Low-resolution mask logits kept only around each mask: the candidates of "segment everything".

A ``256x256`` float map is 256 KiB, and a dense grid yields tens of thousands of candidates
before duplicate removal. Upscaling to a binary mask (bilinear twice: to the model's input
frame, then to the image, each reading 2 neighbours per axis) makes an output pixel positive
only if one of the at most 3 consecutive low-res pixels it reads (per axis) is above the
threshold, and the output is a convex combination of them. So keeping each map within
:data:`MARGIN` pixels of its pixels above the threshold, and filling the rest with a value
below it, gives exactly the same binary masks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ovsam.mask_statistics import mask_boxes

MARGIN = 3
"""Low-res pixels kept around a map's pixels above the threshold (2 would do; see above)."""


@dataclass
class CroppedLogits:
    """K low-res logit maps of ``size x size`` (of ``dtype``, on ``device``): ``crops[k]``
    holds map k within ``boxes[k]`` (``(y0, x0, y1, x1)``, ends exclusive, on the CPU);
    elsewhere it lies at or below ``threshold``."""

    crops: list[torch.Tensor]
    boxes: torch.Tensor
    size: int
    threshold: float
    dtype: torch.dtype
    device: torch.device

    @staticmethod
    def crop(logits: torch.Tensor, threshold: float) -> CroppedLogits:
        """``Kxsizexsize`` logits, each cut to its pixels above ``threshold`` plus
        :data:`MARGIN` (an empty crop when none is)."""
        size = logits.shape[-1]
        boxes = mask_boxes(logits > threshold).cpu()
        found = boxes[:, 2:3] > 0
        margin = torch.tensor([-MARGIN, -MARGIN, MARGIN, MARGIN])
        boxes = (boxes + margin).clamp(0, size) * found
        crops = [
            logits[i, y0:y1, x0:x1].clone() for i, (y0, x0, y1, x1) in enumerate(boxes.tolist())
        ]
        return CroppedLogits(crops, boxes, size, float(threshold), logits.dtype, logits.device)

    @staticmethod
    def cat(parts: list[CroppedLogits]) -> CroppedLogits:
        """All maps of ``parts`` (at least one, all of one size and threshold) in order."""
        crops = [crop for part in parts for crop in part.crops]
        return replace(parts[0], crops=crops, boxes=torch.cat([part.boxes for part in parts]))

    def full(self, rows: list[int]) -> torch.Tensor:
        """Maps ``rows`` as ``len(rows) x size x size`` logits, filled outside their crops
        with ``threshold - 1``: thresholded after upscaling, they give the same masks as the
        maps they were cut from."""
        shape = (len(rows), self.size, self.size)
        out = torch.full(shape, self.threshold - 1.0, dtype=self.dtype, device=self.device)
        for n, i in enumerate(rows):
            y0, x0, y1, x1 = self.boxes[i].tolist()
            out[n, y0:y1, x0:x1] = self.crops[i]
        return out
