"""Large-scale jitter resizes the instance masks within the crop only, as booleans, and gives
exactly what resizing every full mask in float32 and cropping after gave (:func:`reference`)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ovsam.data.prompts import large_scale_jitter


def reference(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale_range: tuple[float, float],
    flip_prob: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The former implementation: every mask resized at full size in float32, then cropped."""
    if flip_prob > 0 and rng.uniform() < flip_prob:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    height, width = image.shape[:2]
    factor = size * rng.uniform(*scale_range) / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    img = F.interpolate(
        torch.tensor(image.copy()).permute(2, 0, 1)[None].float(),
        (new_h, new_w),
        mode="bilinear",
        align_corners=False,
    )
    msk = F.interpolate(torch.tensor(masks.copy()).float()[None], (new_h, new_w), mode="nearest")
    top = int(rng.integers(0, max(new_h - size, 0) + 1))
    left = int(rng.integers(0, max(new_w - size, 0) + 1))
    img = img[0, :, top : top + size, left : left + size]
    msk = msk[0, :, top : top + size, left : left + size] > 0.5
    return img.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), msk.numpy()


@pytest.mark.parametrize(
    ("shape", "size", "scale_range", "flip_prob"),
    [
        ((48, 64), 32, (0.1, 2.0), 0.5),  # down and up, cropped or not
        ((37, 23), 40, (0.9, 2.0), 1.0),  # odd sizes, always flipped
        ((50, 50), 16, (2.0, 2.0), 0.0),  # twice the size: its own path in torch's kernel
        ((7, 90), 64, (0.3, 1.7), 0.5),  # thin
    ],
)
def test_jitter_gives_the_former_masks_and_image(
    shape: tuple[int, int], size: int, scale_range: tuple[float, float], flip_prob: float
) -> None:
    data = np.random.default_rng(0)
    for seed in range(12):
        image = data.integers(0, 256, (*shape, 3), dtype=np.uint8)
        masks = data.random((3, *shape)) < 0.4
        args = (size, scale_range, flip_prob)
        got = large_scale_jitter(image, masks, np.random.default_rng(seed), *args)
        want = reference(image, masks, np.random.default_rng(seed), *args)
        assert got[1].dtype == bool and got[1].shape == want[1].shape
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


class LargestTensor(TorchDispatchMode):
    """Records the size in bytes of the largest tensor a torch op makes while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel() * value.element_size())
        return out


def test_masks_are_never_resized_whole_in_float() -> None:
    """32 masks of a 60x80 image jittered x1.5 into a 64² crop: no torch tensor is as large as
    the 32 cropped boolean masks (the former float32 resize made one 7x larger), and numpy's
    peak (``tracemalloc`` sees its arrays, not torch's; the second, warm call) stays near those
    masks' bytes."""
    image = np.zeros((60, 80, 3), np.uint8)
    masks = np.ones((32, 60, 80), bool)
    args = (64, (1.5, 1.5), 0.0)
    with LargestTensor() as mode:
        _, out = large_scale_jitter(image, masks, np.random.default_rng(0), *args)
    assert out.shape == (32, 64, 64) and out.all()
    assert mode.largest < out.nbytes
    tracemalloc.start()
    try:
        large_scale_jitter(image, masks, np.random.default_rng(0), *args)
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the masks and numpy's broadcast int64 indices (1.5x); a float32 resized copy: 6.75x
    assert numpy_peak < 3 * out.nbytes
