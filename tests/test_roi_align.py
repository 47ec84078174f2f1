"""RoIAlign / RoI level mapping against a literal transcription of mmcv's and mmdet's rules."""

from __future__ import annotations

import math

import torch

from ovsam.ov.roi_align import map_roi_levels, masks_to_boxes, multi_level_roi_align, roi_align


def _mmcv_bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    height, width = feature.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    f = feature
    return (
        hy * hx * f[:, y_low, x_low]
        + hy * lx * f[:, y_low, x_high]
        + ly * hx * f[:, y_high, x_low]
        + ly * lx * f[:, y_high, x_high]
    )


def _mmcv_roi_align(
    feature: torch.Tensor, roi: list[float], out: int, scale: float
) -> torch.Tensor:
    """mmcv ``roi_align_forward`` (aligned=True, sampling_ratio=0) for one roi, scalar loops."""
    x1, y1, x2, y2 = (v * scale - 0.5 for v in roi)
    roi_w, roi_h = x2 - x1, y2 - y1
    bin_w, bin_h = roi_w / out, roi_h / out
    grid_h, grid_w = math.ceil(roi_h / out), math.ceil(roi_w / out)
    result = torch.zeros(feature.shape[0], out, out)
    for ph in range(out):
        for pw in range(out):
            acc = torch.zeros(feature.shape[0])
            for iy in range(grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    acc += _mmcv_bilinear(feature, y, x)
            result[:, ph, pw] = acc / max(grid_h * grid_w, 1)
    return result


def test_roi_align_equals_mmcv_rules() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 3, 16, 20)
    rois = [
        [0, 8.0, 8.0, 120.0, 96.0],  # inside
        [1, -20.0, -10.0, 40.0, 30.0],  # sticks out top-left
        [0, 100.0, 90.0, 170.0, 140.0],  # sticks out bottom-right (map is 160x128 px at 1/8)
        [1, 33.3, 17.9, 35.1, 60.2],  # thin
        [0, 0.0, 0.0, 0.0, 0.0],  # empty (an empty mask's box): no sample, zeros
        [1, 40.0, 24.0, 40.0, 80.0],  # zero width
    ]
    ours = roi_align(features, torch.tensor(rois), 5, 1 / 8)
    for i, roi in enumerate(rois):
        expected = _mmcv_roi_align(features[int(roi[0])], roi[1:], 5, 1 / 8)
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=1e-5)
    assert not ours[4:].any()


def test_roi_levels_follow_mmdet() -> None:
    sides = [10.0, 56.0, 111.0, 112.0, 224.0, 448.0, 1000.0]
    rois = torch.tensor([[0, 0, 0, s, s] for s in sides])
    assert map_roi_levels(rois, 4).tolist() == [0, 0, 0, 1, 2, 3, 3]
    features = [torch.full((1, 2, 256 // 2**i, 256 // 2**i), float(i)) for i in range(4)]
    pooled = multi_level_roi_align(features, rois, 3, (4, 8, 16, 32))
    assert pooled[:, 0, 1, 1].tolist() == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0]


def test_masks_to_boxes() -> None:
    masks = torch.zeros(2, 8, 10, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    assert masks_to_boxes(masks).tolist() == [[3.0, 2.0, 7.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def test_low_precision_features_pool_at_float32_box_geometry() -> None:
    """bf16 maps are pooled at the exact box corners: the same as pooling their float32 values
    and rounding once (bf16 geometry snapped x=601 to 600 and broke ``arange`` above 256)."""
    torch.manual_seed(0)
    features = torch.randn(1, 4, 300, 300).bfloat16()
    rois = torch.tensor([[0.0, 601.0, 403.0, 1001.0, 811.0], [0.0, 3.0, 500.0, 1021.0, 520.0]])
    pooled = roi_align(features, rois, 12, 0.25)
    reference = roi_align(features.float(), rois, 12, 0.25).bfloat16()
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pooled, reference)
    levels = map_roi_levels(torch.tensor([[0.0, 0.0, 0.0, 223.0, 225.0]]).bfloat16(), 4)
    assert levels.tolist() == [1]  # sqrt(223*225)/56 = 3.99996; bf16 maths rounds it to 4
