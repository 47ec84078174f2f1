"""Resize-longest-side geometry shared by the predictor, the models and the exporters.

SAM-family models see the image resized so that its longest side is ``target_length``
(1024) pixels, padded at the bottom/right to a square. Prompts given in original-image
pixels (XY, XYXY) are mapped into that frame with the same scale factors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """Size ``(h, w)`` after scaling so the longest side is ``long_side`` (rounded as SAM
    does, but never below 1 pixel: a 20000x1 strip keeps a 1-pixel side)."""
    scale = long_side / max(old_h, old_w)
    return max(1, int(old_h * scale + 0.5)), max(1, int(old_w * scale + 0.5))


class ResizeLongestSide:
    """Resize images and prompts so the longest image side equals ``target_length``."""

    def __init__(self, target_length: int = 1024) -> None:
        self.target_length = target_length

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a ``Bx3xHxW`` float tensor (0..255) with bilinear antialiasing."""
        h, w = preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an ``HxWx3`` uint8 array with PIL's bilinear filter (as SAM does)."""
        h, w = preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))

    def _scale(self, original_size: tuple[int, int]) -> tuple[float, float]:
        old_h, old_w = original_size
        new_h, new_w = preprocess_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Map ``...x2`` XY pixel coordinates of the original image into the resized frame."""
        sx, sy = self._scale(original_size)
        out = np.array(coords, dtype=np.float32, copy=True)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Map ``...x4`` XYXY pixel boxes of the original image into the resized frame."""
        corners = self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size)
        return corners.reshape(np.asarray(boxes).shape)

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Tensor version of :meth:`apply_coords` (``...x2`` XY pixels)."""
        sx, sy = self._scale(original_size)
        scale = torch.tensor([sx, sy], dtype=torch.float32, device=coords.device)
        return coords.to(torch.float32) * scale

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Tensor version of :meth:`apply_boxes` (``...x4`` XYXY pixels)."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(boxes.shape)
