"""RoIAlign and multi-level RoI pooling in plain torch (mmcv / mmdet semantics).

:func:`roi_align` reproduces mmcv's ``RoIAlign(aligned=True)``: boxes are shifted by half a
pixel, every output bin averages a ``g x g`` grid of bilinear samples (``g`` adaptive:
``ceil(roi_size / output_size)`` when ``sampling_ratio`` is 0, so a roi of zero width or
height takes no sample and pools to zeros), and samples falling more than one pixel outside
the map contribute zero. :func:`map_roi_levels` and
:func:`multi_level_roi_align` follow mmdet's ``SingleRoIExtractor`` (level =
``floor(log2(sqrt(area) / 56))`` clamped to the available levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import torch
from torch import Tensor

FINEST_SCALE = 56


def _bilinear(feature: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Sample ``CxHxW`` at the outer grid ``ys`` x ``xs`` with mmcv's border rules → ``Cxnyxnx``."""
    _, height, width = feature.shape

    def axis(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        valid = (coords >= -1.0) & (coords <= size)
        c = coords.clamp(min=0.0)
        low = c.floor().long().clamp(max=size - 1)
        high = (low + 1).clamp(max=size - 1)
        c = torch.where(low >= size - 1, low.to(c.dtype), c)
        frac = c - low.to(c.dtype)
        return low, high, frac, valid

    y0, y1, fy, vy = axis(ys, height)
    x0, x1, fx, vx = axis(xs, width)
    rows_low, rows_high = feature[:, y0], feature[:, y1]  # C x ny x W
    top = rows_low[:, :, x0] * (1 - fx) + rows_low[:, :, x1] * fx
    bottom = rows_high[:, :, x0] * (1 - fx) + rows_high[:, :, x1] * fx
    out = top * (1 - fy)[:, None] + bottom * fy[:, None]
    return out * (vy[:, None] & vx[None, :]).to(out.dtype)


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
) -> Tensor:
    """Pool ``rois`` (``Kx5``: batch index, x1, y1, x2, y2 in input pixels) from ``features``
    (``BxCxHxW``) into ``KxCxhxw`` (``output_size``), as mmcv's aligned RoIAlign.

    Geometry and sampling run in at least float32 (as torchvision's autocast rule for
    ``roi_align``), so bf16/fp16 features do not snap box corners to their coarse grid; the
    result comes back in ``features.dtype``.
    """
    size = (output_size, output_size) if isinstance(output_size, Integral) else output_size
    out_h, out_w = (int(side) for side in size)
    dtype = features.dtype
    features = features.to(torch.promote_types(dtype, torch.float32))
    pooled = []
    for roi in rois.to(features.dtype):
        feature = features[int(roi[0])]
        x1, y1, x2, y2 = (roi[1:] * spatial_scale - 0.5).tolist()
        roi_w, roi_h = x2 - x1, y2 - y1
        bin_w, bin_h = roi_w / out_w, roi_h / out_h
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        if grid_h <= 0 or grid_w <= 0:  # an empty (or inverted) roi takes no sample: zeros
            pooled.append(features.new_zeros((features.shape[1], out_h, out_w)))
            continue
        iy = torch.arange(out_h * grid_h, dtype=features.dtype, device=features.device)
        ix = torch.arange(out_w * grid_w, dtype=features.dtype, device=features.device)
        ys = y1 + (iy // grid_h) * bin_h + (iy % grid_h + 0.5) * bin_h / grid_h
        xs = x1 + (ix // grid_w) * bin_w + (ix % grid_w + 0.5) * bin_w / grid_w
        samples = _bilinear(feature, ys, xs)  # C x (out_h*grid_h) x (out_w*grid_w)
        channels = samples.shape[0]
        samples = samples.view(channels, out_h, grid_h, out_w, grid_w)
        pooled.append(samples.mean(dim=(2, 4)))
    if not pooled:
        return features.new_zeros((0, features.shape[1], out_h, out_w), dtype=dtype)
    return torch.stack(pooled).to(dtype)


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: int = FINEST_SCALE) -> Tensor:
    """FPN level of each roi: ``floor(log2(sqrt(w*h) / finest_scale + 1e-6))`` clamped."""
    rois = rois.to(torch.promote_types(rois.dtype, torch.float32))
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def multi_level_roi_align(
    features: Sequence[Tensor], rois: Tensor, output_size: int, strides: Sequence[int]
) -> Tensor:
    """mmdet ``SingleRoIExtractor``: pool each roi from the level its size selects → ``KxCxSxS``."""
    levels = map_roi_levels(rois, len(features))
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        index = torch.nonzero(levels == level).flatten()
        if index.numel():
            out[index] = roi_align(feature, rois[index], output_size, 1.0 / stride)
    return out


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight ``Nx4`` XYXY boxes of ``NxHxW`` boolean masks (``x_max + 1``; zeros if empty),
    as mmdet's ``mask2bbox``."""
    boxes = masks.new_zeros((masks.shape[0], 4), dtype=torch.float32)
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    for i in range(masks.shape[0]):
        xs, ys = torch.nonzero(cols[i]).flatten(), torch.nonzero(rows[i]).flatten()
        if xs.numel():
            boxes[i] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()
    return boxes
