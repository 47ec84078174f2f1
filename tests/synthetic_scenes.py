"""Synthetic test images with known ground truth: solid shapes on textured backgrounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Shape:
    """One object in a scene: its ground-truth mask and a name."""

    name: str
    mask: np.ndarray

    @property
    def box(self) -> np.ndarray:
        """Tight XYXY box (exclusive max) around the mask."""
        ys, xs = np.nonzero(self.mask)
        return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)

    @property
    def inner_point(self) -> np.ndarray:
        """The mask pixel farthest from the mask's border (XY), a safe click."""
        inside = self.mask.copy()
        depth = np.zeros(self.mask.shape, dtype=np.int32)
        while inside.any():
            depth += inside
            shrunk = inside.copy()
            shrunk[1:] &= inside[:-1]
            shrunk[:-1] &= inside[1:]
            shrunk[:, 1:] &= inside[:, :-1]
            shrunk[:, :-1] &= inside[:, 1:]
            inside = shrunk
        y, x = np.unravel_index(np.argmax(depth), depth.shape)
        return np.array([x, y], dtype=np.float64)


def textured_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour noise plus fine grain: a background with texture but no objects."""
    coarse = rng.uniform(60, 190, size=(height // 32 + 2, width // 32 + 2, 3))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    smooth = (
        coarse[y0][:, x0] * (1 - fy) * (1 - fx)
        + coarse[y0 + 1][:, x0] * fy * (1 - fx)
        + coarse[y0][:, x0 + 1] * (1 - fy) * fx
        + coarse[y0 + 1][:, x0 + 1] * fy * fx
    )
    grain = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(smooth + grain, 0, 255)


def make_scene(seed: int, height: int = 360, width: int = 480) -> tuple[np.ndarray, list[Shape]]:
    """An HxWx3 uint8 image with a disc, a rectangle and a triangle, and their masks."""
    rng = np.random.default_rng(seed)
    image = textured_background(height, width, rng)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (xx - 0.22 * width) ** 2 + (yy - 0.35 * height) ** 2 < (0.14 * height) ** 2
    rect = (xx > 0.55 * width) & (xx < 0.9 * width) & (yy > 0.12 * height) & (yy < 0.45 * height)
    ax, ay, bx, by, cx, cy = (
        0.3 * width,
        0.9 * height,
        0.7 * width,
        0.9 * height,
        0.5 * width,
        0.55 * height,
    )
    s1 = (bx - ax) * (yy - ay) - (by - ay) * (xx - ax)
    s2 = (cx - bx) * (yy - by) - (cy - by) * (xx - bx)
    s3 = (ax - cx) * (yy - cy) - (ay - cy) * (xx - cx)
    tri = ((s1 <= 0) & (s2 <= 0) & (s3 <= 0)) | ((s1 >= 0) & (s2 >= 0) & (s3 >= 0))
    shapes = [Shape("disc", disc), Shape("rectangle", rect), Shape("triangle", tri)]
    colors = rng.permutation(
        np.array([[220, 40, 40], [40, 60, 220], [250, 230, 40]], dtype=np.float64)
    )
    for shape, color in zip(shapes, colors, strict=True):
        shade = rng.normal(0, 6, size=(int(shape.mask.sum()), 3))
        image[shape.mask] = np.clip(color + shade, 0, 255)
    return image.astype(np.uint8), shapes
