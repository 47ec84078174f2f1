""" "Segment everything": prompt a grid of points and keep the good, distinct masks.

The procedure follows SAM's automatic mask generator on the whole image (no crop layers):
a ``points_per_side`` x ``points_per_side`` grid of foreground clicks is decoded in batches
(three candidates per click), candidates are filtered by predicted IoU and by stability
(IoU between the mask thresholded at ``+offset`` and at ``-offset`` logits), and duplicates
are removed with non-maximum suppression on mask IoU ranked by predicted IoU.

A decoder without an IoU head (OV-SAM's, :attr:`~ovsam.predictor.SamPredictor.score_name`)
scores its masks by the stability of their low-res logits: that score then takes the predicted
IoU's place (``pred_iou_thresh`` and the ranking), and the records hold it as
``low_res_stability_score`` with ``predicted_iou`` None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from ovsam.cropped_logits import CroppedLogits
from ovsam.errors import InputError
from ovsam.mask_nms import PixelIntersections, mask_nms
from ovsam.mask_statistics import cell_counts, mask_statistics, window_masks
from ovsam.masks import encode_rle, mask_to_bbox_xywh
from ovsam.predictor import SamPredictor
from ovsam.small_regions import clean_small_regions


def point_grid(points_per_side: int) -> np.ndarray:
    """``(n*n)x2`` XY points in [0, 1], centred in the cells of an n x n grid."""
    points_per_side = int(points_per_side)  # a numpy integer's arithmetic can wrap
    offset = 1.0 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def nms_stride(size: tuple[int, int]) -> int:
    """Cell size of duplicate removal for an ``(H, W)`` image: 4 pixels, or more so that a
    candidate's pixel counts take at most about 256 cells along the long side."""
    return max(4, -(-max(size) // 256))


@dataclass
class Candidates:
    """Masks that passed the confidence, stability and area filters, before duplicate removal.

    Kept small whatever the image size: ``low_res`` the ``256x256`` logits on the model's
    device, each cut to its mask (:class:`~ovsam.cropped_logits.CroppedLogits`; the full-size
    mask is upscaled again for the masks that survive); on the CPU
    ``cells`` ``KxH'xW'``, each mask's pixels in every ``stride x stride`` cell (for NMS; see
    :func:`~ovsam.mask_statistics.cell_counts`), ``iou`` and
    ``stability`` ``K``, ``clicks`` ``Kx2`` XY pixels.
    """

    low_res: CroppedLogits
    cells: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    clicks: torch.Tensor

    @staticmethod
    def cat(parts: list[Candidates]) -> Candidates:
        """All of ``parts`` (at least one) as one set."""
        return Candidates(
            CroppedLogits.cat([p.low_res for p in parts]),
            *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Candidates)[1:]),
        )


# Largest pred_iou_thresh: above every predicted IoU (MobileSAM's reach 1.01), below a slip
# such as 88 for 0.88.
PRED_IOU_THRESH_MAX = 2.0
# Largest grid: 256 x 256 = 65,536 clicks, minutes per image on a GPU and hours on a CPU.
MAX_POINTS_PER_SIDE = 256


def check_generator_settings(
    settings: dict[str, Any], labels: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`InputError` naming the first :class:`AutomaticMaskGenerator` setting (by
    field name, any subset) no run can use, before any model is built or image embedded.
    ``labels`` names settings in the message as their caller knows them (e.g. a CLI flag).

    Counts (``min_mask_area`` and ``min_mask_region_area`` are pixel counts) must be integers
    (``points_per_side`` at most :data:`MAX_POINTS_PER_SIDE`), thresholds real numbers (Python's or numpy's; booleans are
    refused)."""

    def label(name: str) -> str:
        return (labels or {}).get(name, name)

    counts = (("points_per_side", 1, MAX_POINTS_PER_SIDE), ("points_per_batch", 1, None))
    areas = (("min_mask_area", 0, None), ("min_mask_region_area", 0, None))
    for name, least, most in (*counts, *areas):
        if name not in settings:
            continue
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise InputError(f"{label(name)}={value!r}: expected an integer >= {least}")
        if most is not None and value > most:
            raise InputError(f"{label(name)}={value!r}: expected at most {most}")
    for name, low, high in (
        # predicted IoUs lie in about [0, 1], a little above 1 at times; 88 means 0.88
        ("pred_iou_thresh", -math.inf, PRED_IOU_THRESH_MAX),
        ("stability_score_thresh", 0.0, 1.0),
        ("stability_score_offset", 0.0, math.inf),
        ("nms_thresh", 0.0, 1.0),
    ):
        if name not in settings:
            continue
        value = settings[name]
        if isinstance(value, bool) or not (
            isinstance(value, Real) and math.isfinite(value) and low <= value <= high
        ):
            if high == math.inf:
                bounds = f" >= {low}" * (low > -math.inf)
            else:
                bounds = f" <= {high}" if low == -math.inf else f" in [{low}, {high}]"
            raise InputError(f"{label(name)}={value!r}: expected a finite number{bounds}")


@dataclass
class AutomaticMaskGenerator:
    """Generate masks for every object in an image with a :class:`SamPredictor`.

    Defaults are SAM's (``points_per_side=32``, ``pred_iou_thresh=0.88``,
    ``stability_score_thresh=0.95``); duplicates are removed by mask IoU > ``nms_thresh``
    (0.7): the IoU of their pixels, bounded from pixel counts on cells of :func:`nms_stride`
    pixels and counted exactly where that leaves it undecided. ``min_mask_area`` (an
    integer) drops masks smaller than that many pixels (empty masks are always dropped).
    ``min_mask_region_area`` (SAM's; 0: off) then fills the holes and removes the islands of
    fewer pixels from each kept mask and removes duplicates again, the changed masks ranked
    below the unchanged (:func:`~ovsam.small_regions.clean_small_regions`).
    Memory grows with the number of candidates, not with the image or that number's square:
    until duplicate removal (which compares overlapping candidates only,
    :mod:`ovsam.mask_nms`) a candidate is its low-res logits cut to its mask
    (:mod:`ovsam.cropped_logits`) and its pixel counts per cell. ``pred_iou_thresh`` is at
    most :data:`PRED_IOU_THRESH_MAX` (predicted IoUs lie in about [0, 1], slightly above 1
    at times; a negative one keeps every candidate); the other thresholds lie in [0, 1].
    """

    predictor: SamPredictor
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    nms_thresh: float = 0.7
    min_mask_area: int = 0
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        """A SAM model itself (what segment-anything's ``SamAutomaticMaskGenerator`` takes) is
        wrapped in a :class:`SamPredictor`; anything else but a predictor is refused."""
        if isinstance(self.predictor, torch.nn.Module):
            self.predictor = SamPredictor(self.predictor)
        elif not isinstance(self.predictor, SamPredictor):
            raise InputError(
                "AutomaticMaskGenerator takes a SamPredictor (or a SAM model), got "
                f"{type(self.predictor).__name__}"
            )

    @torch.inference_mode()  # the predictor's tensor tier then hands over no copies
    def generate(self, image: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Masks for the whole image (``HxWx3`` uint8 RGB, or the predictor's current image).

        Returns one dict per mask, sorted by area (largest first), with SAM's fields but
        ``crop_box`` (no crop layers): ``segmentation`` (HxW bool), ``rle`` (COCO RLE),
        ``area``, ``bbox`` (XYWH tight around the pixels, as pycocotools' ``toBbox``: SAM's
        width and height are 1 less),
        ``predicted_iou``, ``stability_score`` and ``point_coords`` (``[[x, y]]``: the click in
        XY pixels, nested as in SAM so that ``np.array(record["point_coords"])`` is a ``1x2``
        ``point_coords`` for :meth:`SamPredictor.predict`). For a decoder without an IoU head,
        ``predicted_iou`` is None and ``low_res_stability_score`` holds its score (see the
        module docstring).
        """
        self._check_settings()
        if image is not None:
            self.predictor.set_image(image)
        size = self.predictor.original_size
        batch = int(self.points_per_batch)  # a numpy integer's arithmetic can wrap
        points = point_grid(self.points_per_side) * np.array([size[1], size[0]])
        stride = nms_stride(size)
        parts = [
            self._candidates(points[start : start + batch], stride)
            for start in range(0, len(points), batch)
        ]
        found = Candidates.cat(parts)
        if len(found.iou) == 0:
            return []
        intersections = self._pixel_intersections(found, stride)
        keep = mask_nms(found.cells, found.iou, self.nms_thresh, stride, intersections)
        rows, arrays = keep.tolist(), self._full_masks(found.low_res, keep)
        order = list(range(len(rows)))
        if self.min_mask_region_area > 0:
            area, threshold = self.min_mask_region_area, self.nms_thresh
            order, changed = clean_small_regions(arrays, area, threshold, stride)
            arrays = [changed.get(k, array) for k, array in enumerate(arrays)]
        score_name = self.predictor.score_name
        records = [
            self._record(arrays[k], found.iou[i], found.stability[i], found.clicks[i], score_name)
            for k, i in ((k, rows[k]) for k in order)
        ]
        return sorted(records, key=lambda r: -r["area"])

    def _full_masks(self, low_res: CroppedLogits, rows: torch.Tensor) -> list[np.ndarray]:
        """The ``HxW`` bool masks of the candidates ``rows``, upscaled
        :meth:`SamPredictor.masks_per_upscale` at a time."""
        return [
            mask.cpu().numpy()
            for part in rows.split(self.predictor.masks_per_upscale())
            for mask in self.predictor.binary_masks(low_res.full(part.tolist())[:, None])[:, 0]
        ]

    def _check_settings(self) -> None:
        """:func:`check_generator_settings` of this generator's settings."""
        check_generator_settings(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name != "predictor"}
        )

    def _candidates(self, points: np.ndarray, stride: int) -> Candidates:
        """Decode ``Nx2`` XY pixel clicks (each gives the model's multimask candidates) and
        filter them.

        Candidates under ``pred_iou_thresh`` are dropped at low resolution, before the
        costly upscaling; the rest are measured at full size (:mod:`ovsam.mask_statistics`,
        without holding full-size logits) :meth:`SamPredictor.masks_per_upscale` at a time,
        so that memory stays bounded on large photos.
        """
        predictor = self.predictor
        coords = predictor.transform.apply_coords(points, predictor.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float32)[:, None, :]
        labels_t = torch.ones(len(points), 1, dtype=torch.int64)
        low_res, iou = predictor.decode_low_res(coords_t, labels_t, multimask_output=True)
        per_click = low_res.shape[1]  # 3 candidates (SAM), 1 (OV-SAM's single mask token)
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1).float().cpu()
        confident = iou > self.pred_iou_thresh
        low_res, iou = low_res[confident.to(low_res.device)], iou[confident]
        clicks = torch.as_tensor(points).repeat_interleave(per_click, 0)
        clicks = clicks[confident]
        height, width = predictor.original_size
        keep = torch.zeros(len(iou), dtype=torch.bool)
        stability = torch.zeros(len(iou))
        cells = [cell_counts(torch.zeros((0, height, width), dtype=torch.bool), stride)]
        step = predictor.masks_per_upscale()
        for start in range(0, len(iou), step):
            rows = slice(start, start + step)
            measured = mask_statistics(
                predictor.frame_logits(low_res[rows][:, None])[:, 0],
                predictor.original_size,
                predictor.model.mask_threshold,
                self.stability_score_offset,
                stride,
            )
            stability[rows] = measured.stability.cpu()
            kept = stability[rows] >= self.stability_score_thresh
            kept &= measured.area.cpu() >= min(max(self.min_mask_area, 1), height * width + 1)
            keep[rows] = kept
            cells.append(measured.cells[kept.to(measured.cells.device)].cpu())
        return Candidates(
            CroppedLogits.crop(low_res[keep.to(low_res.device)], predictor.model.mask_threshold),
            torch.cat(cells),
            iou[keep],
            stability[keep],
            clicks[keep],
        )

    def _pixel_intersections(self, found: Candidates, stride: int) -> PixelIntersections:
        """Exact shared pixels of candidate masks for :func:`~ovsam.mask_nms.mask_nms`:
        computed on the rows of the cells they are asked about only, at full width, from the
        same logits as :func:`~ovsam.mask_statistics.mask_statistics` counted."""
        predictor = self.predictor
        size = predictor.original_size

        def count(i: int, rows: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
            y0, x0, y1, x1 = (v * stride for v in box)
            window = slice(y0, min(y1, size[0]))
            indices, step = [i] + rows.tolist(), predictor.masks_per_upscale()
            masks = torch.cat(
                [
                    window_masks(
                        predictor.frame_logits(found.low_res.full(part)[:, None])[:, 0],
                        size,
                        predictor.model.mask_threshold,
                        window,
                    )[:, :, x0:x1]
                    for part in (indices[s : s + step] for s in range(0, len(indices), step))
                ]
            )
            return torch.count_nonzero(masks[1:] & masks[0], (1, 2))

        return count

    @staticmethod
    def _record(
        array: np.ndarray,
        score: torch.Tensor,
        stability: torch.Tensor,
        click: torch.Tensor,
        score_name: str,
    ) -> dict[str, Any]:
        """One mask's record (``array`` ``HxW`` bool); ``score`` is the decoder's, named
        ``score_name``."""
        scores: dict[str, float | None] = {"predicted_iou": None, score_name: float(score)}
        return {
            "segmentation": array,
            "rle": encode_rle(array),
            "area": int(array.sum()),
            "bbox": mask_to_bbox_xywh(array),
            **scores,
            "stability_score": float(stability),
            "point_coords": [[float(click[0]), float(click[1])]],
        }
