"""Resize-longest-side geometry."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovsam.transforms import ResizeLongestSide, preprocess_shape


def test_preprocess_shape_rounds_like_sam() -> None:
    assert preprocess_shape(400, 600, 1024) == (683, 1024)
    assert preprocess_shape(300, 451, 1024) == (681, 1024)
    assert preprocess_shape(1024, 512, 1024) == (1024, 512)
    assert preprocess_shape(1, 20000, 1024) == (1, 1024)  # SAM's rounding would give 0
    assert preprocess_shape(20000, 3, 1024) == (1024, 1)


def test_coords_and_boxes_scale_per_axis() -> None:
    t = ResizeLongestSide(1024)
    coords = t.apply_coords(np.array([[600.0, 400.0], [0.0, 0.0]]), (400, 600))
    assert np.allclose(coords, [[1024.0, 400 * 683 / 400], [0.0, 0.0]])
    box = t.apply_boxes(np.array([30.0, 40.0, 60.0, 80.0]), (400, 600))
    assert np.allclose(box, [30 * 1024 / 600, 40 * 683 / 400, 60 * 1024 / 600, 80 * 683 / 400])
    box_t = t.apply_boxes_torch(torch.tensor([[30.0, 40.0, 60.0, 80.0]]), (400, 600))
    assert torch.allclose(box_t, torch.tensor(box[None], dtype=torch.float32))


def test_apply_image_is_bilinear() -> None:
    """Upscaled 400x600 → 683x1024, PIL's bilinear (SAM's filter) is torch's bilinear up to
    PIL's 8-bit rounding; a nearest resize is off by 18 grey levels on average."""
    image = (np.arange(400 * 600 * 3) % 251).astype(np.uint8).reshape(400, 600, 3)
    out = ResizeLongestSide(1024).apply_image(image)
    assert out.shape == (683, 1024, 3) and out.dtype == np.uint8
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    bilinear = F.interpolate(pixels, (683, 1024), mode="bilinear", align_corners=False)
    expected = bilinear[0].permute(1, 2, 0).round().numpy()
    assert np.abs(out - expected).max() <= 1
