""" "Segment everything": prompt a grid of points and keep the good, distinct masks.

The procedure follows SAM's automatic mask generator: a ``points_per_side`` x
``points_per_side`` grid of foreground clicks is decoded in batches
(three candidates per click), candidates are filtered by predicted IoU and by stability
(IoU between the mask thresholded at ``+offset`` and at ``-offset`` logits), and duplicates
are removed with non-maximum suppression on mask IoU ranked by predicted IoU. With crop
layers (``crop_n_layers``, :mod:`ovsam.crop_layers`) the same is done on overlapping crops
too, and duplicates across crops removed; ``min_mask_region_area`` then cleans each mask
(:mod:`ovsam.small_regions`).

A decoder without an IoU head (OV-SAM's, :attr:`~ovsam.predictor.SamPredictor.score_name`)
scores its masks by the stability of their low-res logits: that score then takes the predicted
IoU's place (``pred_iou_thresh`` and the ranking), and the records hold it as
``low_res_stability_score`` with ``predicted_iou`` None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import numpy as np
import torch

from ovsam.crop_layers import Box, PlacedMasks, crop_boxes, merge_crops, near_crop_edge
from ovsam.cropped_logits import CroppedLogits
from ovsam.errors import InputError
from ovsam.generator_settings import check_generator_settings
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
    below the unchanged (:func:`~ovsam.small_regions.clean_small_regions`; duplicates by
    ``max(nms_thresh, crop_nms_thresh)``, as SAM). ``crop_n_layers`` (SAM's; 0: off) also
    segments ``4**i`` crops per layer ``i``, overlapping by ``crop_overlap_ratio`` of the
    short side, each with ``points_per_side / crop_n_points_downscale_factor**i`` points a
    side, and removes duplicates across crops by mask IoU > ``crop_nms_thresh``, smaller
    crops first (:mod:`ovsam.crop_layers`).
    Memory grows with the number of candidates, not with the image or that number's square:
    until duplicate removal (which compares overlapping candidates only,
    :mod:`ovsam.mask_nms`) a candidate is its low-res logits cut to its mask
    (:mod:`ovsam.cropped_logits`) and its pixel counts per cell (with crop layers, the masks
    each crop keeps are held at the crop's size until the merge). Settings are checked by
    :func:`~ovsam.generator_settings.check_generator_settings`.
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
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1

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
    def generate(
        self, image: np.ndarray | None = None, pause: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """Masks for the whole image (``HxWx3`` uint8 RGB, or the predictor's current image;
        crop layers need ``image``, and leave the predictor on it). ``pause()`` is called
        between batches of grid points (e.g. to let others use the model; it must leave the
        predictor on the image it found).

        Returns one dict per mask, sorted by area (largest first), with SAM's fields:
        ``segmentation`` (HxW bool), ``rle`` (COCO RLE),
        ``area``, ``bbox`` (XYWH tight around the pixels, as pycocotools' ``toBbox``: SAM's
        width and height are 1 less),
        ``predicted_iou``, ``stability_score``, ``point_coords`` (``[[x, y]]``: the click in
        XY pixels, nested as in SAM so that ``np.array(record["point_coords"])`` is a ``1x2``
        ``point_coords`` for :meth:`SamPredictor.predict`) and ``crop_box`` (XYWH: the crop
        it was found in). For a decoder without an IoU head,
        ``predicted_iou`` is None and ``low_res_stability_score`` holds its score (see the
        module docstring).
        """
        self._check_settings()
        if image is None and self.crop_n_layers:
            raise InputError(
                f"crop_n_layers={self.crop_n_layers} crops the image: pass it, generate(image)"
            )
        if image is not None:
            self.predictor.set_image(image)
        size = self.predictor.original_size
        # numpy integers' arithmetic can wrap
        factor, layers = int(self.crop_n_points_downscale_factor), int(self.crop_n_layers)
        crops = [  # SAM's boxes of a short side under ~135 px include empty ones: no pixels
            (box, layer)
            for box, layer in crop_boxes(size, layers, float(self.crop_overlap_ratio))
            if box[0] < box[2] and box[1] < box[3]
        ]
        found = [self._crop_masks(self.points_per_side, crops[0][0], size, pause)]  # the image
        if len(crops) > 1:
            state = self.predictor.export_state()
            try:
                for (x0, y0, x1, y1), layer in crops[1:]:
                    self.predictor.set_image(image[y0:y1, x0:x1])  # type: ignore[index]
                    side = int(int(self.points_per_side) / factor**layer)
                    found.append(self._crop_masks(side, (x0, y0, x1, y1), size, pause))
            finally:
                self.predictor.load_state(state)  # back on the whole image
        placed = PlacedMasks(size)
        for (crop, _), (arrays, *_) in zip(crops, found, strict=True):
            placed.arrays += arrays
            placed.crops += [crop] * len(arrays)
        iou, stability, clicks = (torch.cat([part[n] for part in found]) for n in (1, 2, 3))
        stride = nms_stride(size)
        keep = list(range(len(iou)))
        if len(crops) > 1:
            keep = merge_crops(placed, self.crop_nms_thresh, stride)
        arrays = [placed.full(i) for i in keep]
        order = list(range(len(keep)))
        if self.min_mask_region_area > 0:
            threshold = max(self.nms_thresh, self.crop_nms_thresh)  # as SAM
            order, changed = clean_small_regions(
                arrays, self.min_mask_region_area, threshold, stride
            )
            arrays = [changed.get(k, array) for k, array in enumerate(arrays)]
        score_name = self.predictor.score_name
        records = []
        for k in order:
            i = keep[k]
            records.append(
                self._record(
                    arrays[k], (iou[i], stability[i]), clicks[i], placed.crops[i], score_name
                )
            )
        return sorted(records, key=lambda r: -r["area"])

    def _crop_masks(
        self,
        points_per_side: int,
        crop: Box,
        size: tuple[int, int],
        pause: Callable[[], None] | None,
    ) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The distinct masks of the predictor's image, the crop ``crop`` of an ``(H, W)``
        image, prompted by a ``points_per_side`` grid: ``(masks, iou, stability, clicks)``,
        best first; masks ``hxw`` bool at the crop's size, clicks ``Kx2`` XY image pixels.
        Masks cut by an inner edge of the crop are dropped (:func:`near_crop_edge`)."""
        crop_size = self.predictor.original_size
        batch = int(self.points_per_batch)  # a numpy integer's arithmetic can wrap
        points = point_grid(points_per_side) * np.array([crop_size[1], crop_size[0]])
        stride = nms_stride(crop_size)
        cut = None if crop_size == size else partial(near_crop_edge, crop=crop, size=size)
        parts = []
        for start in range(0, len(points), batch):
            if start and pause is not None:
                pause()
            parts.append(self._candidates(points[start : start + batch], stride, cut))
        found = Candidates.cat(parts)
        if len(found.iou) == 0:
            return [], found.iou, found.stability, found.clicks
        intersections = self._pixel_intersections(found, stride)
        keep = mask_nms(found.cells, found.iou, self.nms_thresh, stride, intersections)
        clicks = found.clicks[keep] + torch.tensor(crop[:2], dtype=found.clicks.dtype)
        return self._full_masks(found.low_res, keep), found.iou[keep], found.stability[keep], clicks

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

    def _candidates(
        self,
        points: np.ndarray,
        stride: int,
        cut: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Candidates:
        """Decode ``Nx2`` XY pixel clicks (each gives the model's multimask candidates) and
        filter them; ``cut`` (mask boxes -> bool, see :func:`near_crop_edge`) drops more.

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
                boxes=cut is not None,
            )
            stability[rows] = measured.stability.cpu()
            kept = stability[rows] >= self.stability_score_thresh
            kept &= measured.area.cpu() >= min(max(self.min_mask_area, 1), height * width + 1)
            if cut is not None and measured.boxes is not None:
                kept &= ~cut(measured.boxes.cpu())
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
        scores: tuple[torch.Tensor, torch.Tensor],
        click: torch.Tensor,
        crop: Box,
        score_name: str,
    ) -> dict[str, Any]:
        """One mask's record (``array`` ``HxW`` bool, found in ``crop``, XYXY); ``scores``
        the decoder's, named ``score_name``, and the stability."""
        score, stability = scores
        scores: dict[str, float | None] = {"predicted_iou": None, score_name: float(score)}
        return {
            "segmentation": array,
            "rle": encode_rle(array),
            "area": int(array.sum()),
            "bbox": mask_to_bbox_xywh(array),
            **scores,
            "stability_score": float(stability),
            "point_coords": [[float(click[0]), float(click[1])]],
            "crop_box": [crop[0], crop[1], crop[2] - crop[0], crop[3] - crop[1]],
        }
