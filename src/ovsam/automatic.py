""" "Segment everything": prompt a grid of points and keep the good, distinct masks.

The procedure follows SAM's automatic mask generator on the whole image (no crop layers):
a ``points_per_side`` x ``points_per_side`` grid of foreground clicks is decoded in batches
(three candidates per click), candidates are filtered by predicted IoU and by stability
(IoU between the mask thresholded at ``+offset`` and at ``-offset`` logits), and duplicates
are removed with non-maximum suppression on mask IoU ranked by predicted IoU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovsam.errors import InputError
from ovsam.masks import encode_rle, mask_to_bbox_xywh
from ovsam.predictor import SamPredictor


def point_grid(points_per_side: int) -> np.ndarray:
    """``(n*n)x2`` XY points in [0, 1], centred in the cells of an n x n grid."""
    offset = 1.0 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of ``logits > threshold + offset`` with ``logits > threshold - offset``, per mask.

    ``logits`` ``Nx...``; returns ``N`` scores in [0, 1] (1 for masks empty at both levels).
    """
    flat = logits.flatten(1)
    inter = (flat > threshold + offset).sum(1).float()
    union = (flat > threshold - offset).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_iou_matrix(masks: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """Pairwise IoU (``KxK``) of ``KxHxW`` boolean masks, measured on every ``stride``-th pixel.

    Mask IoU (not box IoU) is used so that a stray pixel far from an object cannot stop two
    copies of the same mask from being recognised as duplicates.
    """
    flat = masks[:, ::stride, ::stride].flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of masks kept by greedy NMS on mask IoU (highest score first), in score order."""
    order = torch.argsort(scores, descending=True)
    ious = mask_iou_matrix(masks[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= ious[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


@dataclass
class AutomaticMaskGenerator:
    """Generate masks for every object in an image with a :class:`SamPredictor`.

    Defaults are SAM's (``points_per_side=32``, ``pred_iou_thresh=0.88``,
    ``stability_score_thresh=0.95``; duplicates are removed by mask IoU > ``nms_thresh``, 0.7). ``min_mask_area`` drops
    masks smaller than that many pixels.
    """

    predictor: SamPredictor
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    nms_thresh: float = 0.7
    min_mask_area: int = 0

    def generate(self, image: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Masks for the whole image (``HxWx3`` uint8 RGB, or the predictor's current image).

        Returns one dict per mask, sorted by area (largest first), with SAM's fields:
        ``segmentation`` (HxW bool), ``rle`` (COCO RLE), ``area``, ``bbox`` (XYWH),
        ``predicted_iou``, ``stability_score`` and ``point_coords`` (the click, XY pixels).
        """
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise InputError("points_per_side and points_per_batch must be at least 1")
        if image is not None:
            self.predictor.set_image(image)
        height, width = self.predictor.original_size
        points = point_grid(self.points_per_side) * np.array([width, height])
        kept_masks, kept_iou, kept_stability, kept_points = [], [], [], []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            masks, iou, stability, clicks = self._decode(batch)
            keep = stability >= self.stability_score_thresh
            keep &= masks.flatten(1).sum(1) > max(self.min_mask_area, 0)
            kept_masks.append(masks[keep])
            kept_iou.append(iou[keep])
            kept_stability.append(stability[keep])
            kept_points.append(torch.as_tensor(batch)[clicks[keep]])
        masks = torch.cat(kept_masks)
        if len(masks) == 0:
            return []
        iou, stability, clicks = (
            torch.cat(kept_iou),
            torch.cat(kept_stability),
            torch.cat(kept_points),
        )
        keep = mask_nms(masks, iou, self.nms_thresh)
        records = [self._record(masks[i], iou[i], stability[i], clicks[i]) for i in keep.tolist()]
        return sorted(records, key=lambda r: -r["area"])

    def _decode(
        self, points: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks (``KxHxW`` bool), predicted IoU, stability and click index of the candidates.

        Candidates under ``pred_iou_thresh`` are dropped at low resolution, before the
        costly upscaling to the image size.
        """
        coords = self.predictor.transform.apply_coords(points, self.predictor.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float32)[:, None, :]
        labels_t = torch.ones(len(points), 1, dtype=torch.int64)
        low_res, iou = self.predictor.decode_low_res(coords_t, labels_t, multimask_output=True)
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1).float()
        confident = iou > self.pred_iou_thresh
        logits = self.predictor.upscale_masks(low_res[confident][:, None])[:, 0]
        threshold = self.predictor.model.mask_threshold
        stability = stability_scores(logits, threshold, self.stability_score_offset)
        clicks = torch.arange(len(points)).repeat_interleave(3)[confident]
        return logits > threshold, iou[confident], stability, clicks

    @staticmethod
    def _record(
        mask: torch.Tensor, iou: torch.Tensor, stability: torch.Tensor, click: torch.Tensor
    ) -> dict[str, Any]:
        array = mask.cpu().numpy()
        return {
            "segmentation": array,
            "rle": encode_rle(array),
            "area": int(array.sum()),
            "bbox": mask_to_bbox_xywh(array),
            "predicted_iou": float(iou),
            "stability_score": float(stability),
            "point_coords": [float(click[0]), float(click[1])],
        }
