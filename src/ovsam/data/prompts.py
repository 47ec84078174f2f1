"""Prompts derived from ground truth, as in the paper's protocol, and large-scale jitter.

- :func:`box_prompts`: the ground-truth boxes (XYXY pixels);
- :func:`center_points`: per mask the pixel farthest from the mask boundary (the official
  "point" configs use a distance transform; here the distance is the chessboard distance,
  computed by repeated 3x3 erosion);
- :func:`random_points`: points drawn uniformly inside each mask (training);
- :func:`large_scale_jitter`: resize by a random factor of the 1024 frame, then crop/pad to it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def box_prompts(boxes: np.ndarray) -> np.ndarray:
    """Ground-truth boxes as prompts (``Nx4`` XYXY pixels, float32)."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def center_points(masks: np.ndarray) -> np.ndarray:
    """``Nx2`` XY pixel centres of the deepest interior pixel of each ``NxHxW`` mask."""
    points = np.zeros((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):
        current = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
        last = current
        while current.any():
            last = current
            current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1)), 3, stride=1)
        ys, xs = np.nonzero(last[0, 0].numpy())
        if xs.size:
            k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
            points[i] = (xs[k] + 0.5, ys[k] + 0.5)
    return points


def random_points(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random XY pixel centre inside each mask (``Nx2``)."""
    points = np.zeros((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if xs.size:
            k = rng.integers(xs.size)
            points[i] = (xs[k] + 0.5, ys[k] + 0.5)
    return points


def large_scale_jitter(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    size: int = 1024,
    scale_range: tuple[float, float] = (0.1, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the long side is ``size * s`` (``s`` uniform in ``scale_range``), then take a
    random ``size x size`` crop (zero padding where smaller). Returns image and masks."""
    height, width = image.shape[:2]
    factor = size * rng.uniform(*scale_range) / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    img = F.interpolate(
        torch.tensor(image).permute(2, 0, 1)[None].float(),  # a copy: ``image`` may be read-only
        (new_h, new_w),
        mode="bilinear",
        align_corners=False,
    )
    msk = F.interpolate(torch.tensor(masks).float()[None], (new_h, new_w), mode="nearest")[0] > 0.5
    top = int(rng.integers(0, max(new_h - size, 0) + 1))
    left = int(rng.integers(0, max(new_w - size, 0) + 1))
    img, msk = (
        img[0, :, top : top + size, left : left + size],
        msk[:, top : top + size, left : left + size],
    )
    out_img = torch.zeros(3, size, size)
    out_msk = torch.zeros(len(masks), size, size, dtype=torch.bool)
    out_img[:, : img.shape[1], : img.shape[2]] = img
    out_msk[:, : msk.shape[1], : msk.shape[2]] = msk
    return out_img.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), out_msk.numpy()
