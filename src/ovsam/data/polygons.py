"""COCO polygon ground truth: checked, clipped near the image, rasterised.

A polygon is a flat list ``[x0, y0, x1, y1, ...]`` in pixels. One reaching farther than an image
size beyond the image is clipped to that frame first (:func:`clip_polygon`: no pixel whose
centre is inside changes; pycocotools, which rounds long edges at 5x resolution, may move a few
boundary pixels), as pycocotools' rasteriser walks every edge at 5x resolution and a coordinate
of 1e9 would exhaust memory or crash it. NaN and infinite coordinates are refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from numbers import Real

import numpy as np

from ovsam.errors import InputError


def check_polygons(polygons: Sequence[object]) -> list[list[float]]:
    """``polygons`` as lists of floats; :class:`InputError` for one that is not a flat list of
    an even number of finite numbers. Polygons of fewer than 3 points (no area) are left out."""
    out = []
    for index, polygon in enumerate(polygons):
        where = f"polygon {index}"
        if not isinstance(polygon, list) or len(polygon) % 2:
            raise InputError(f"{where} is not a flat list of x, y pairs")
        bad = [v for v in polygon if isinstance(v, bool) or not isinstance(v, Real)]
        if bad:
            raise InputError(f"{where} holds {bad[0]!r}, which is not a number")
        try:
            values = [float(v) for v in polygon]
        except OverflowError:  # an integer too large for a float
            values = [math.inf]
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"{where} holds NaN or infinite coordinates")
        if len(values) >= 6:
            out.append(values)
    return out


def clip_polygon(polygon: list[float], height: int, width: int) -> list[float]:
    """``polygon`` clipped to ``[-width, 2 width] x [-height, 2 height]`` (Sutherland-Hodgman
    against each side in turn); unchanged when it lies inside. May return fewer than 3 points.
    Crossings are computed exactly (float64 cancels to wrong ones, or overflows to NaN, when
    the edge's ends lie around 1e16 and beyond) and then rounded."""
    low_x, low_y, high_x, high_y = -float(width), -float(height), 2.0 * width, 2.0 * height
    xs, ys = polygon[0::2], polygon[1::2]
    if min(xs) >= low_x and min(ys) >= low_y and max(xs) <= high_x and max(ys) <= high_y:
        return polygon
    points = list(zip(xs, ys, strict=True))
    for axis, bound, keep_above in ((0, low_x, True), (0, high_x, False),
                                    (1, low_y, True), (1, high_y, False)):  # fmt: skip
        clipped: list[tuple[float, float]] = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            inside_now = (current[axis] >= bound) == keep_above
            inside_before = (previous[axis] >= bound) == keep_above
            if inside_now != inside_before:  # the edge crosses the side: add the crossing
                start, end = [Fraction(v) for v in previous], [Fraction(v) for v in current]
                t = (Fraction(bound) - start[axis]) / (end[axis] - start[axis])
                cross = [float(start[k] + t * (end[k] - start[k])) for k in (0, 1)]
                cross[axis] = bound
                clipped.append((cross[0], cross[1]))
            if inside_now:
                clipped.append(current)
        points = clipped
        if not points:
            break
    return [v for point in points for v in point]


def polygons_to_mask(polygons: Sequence[object], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (see :func:`check_polygons`) into an ``HxW`` bool mask.

    With pycocotools installed (the ``[coco]`` extra) its rasteriser is used, so ground truth is
    pixel-identical to what ``COCOeval`` draws for polygons within an image size of the image
    (:mod:`ovsam.evaluation.mask_ap` gives COCOeval these masks, so they agree for all);
    otherwise :func:`fill_polygons` (pixel centres inside; the same pixels for axis-aligned
    polygons with integer corners, a few edge pixels apart on slanted edges and where an edge
    runs through pixel centres, which the two assign to opposite sides).
    """
    clipped = (clip_polygon(p, height, width) for p in check_polygons(polygons))
    valid = [p for p in clipped if len(p) >= 6]
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        return fill_polygons(valid, height, width)
    if not valid:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(valid, height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def fill_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """``HxW`` bool mask of the pixels whose centre ``(x + 0.5, y + 0.5)`` lies inside any of
    ``polygons`` (``[x0, y0, x1, y1, ...]`` in pixels, even-odd rule per polygon).

    A box polygon ``x0 y0 x1 y0 x1 y1 x0 y1`` with integer corners fills exactly the
    ``(x1 - x0) x (y1 - y0)`` pixels of ``[x0, x1) x [y0, y1)``, as pycocotools does.
    """
    mask = np.zeros((height, width + 1), dtype=np.int32)
    centres = np.arange(height) + 0.5
    for polygon in polygons:
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        (x0, y0), (x1, y1) = xy.T, np.roll(xy, -1, axis=0).T
        low, high = np.minimum(y0, y1), np.maximum(y0, y1)
        crosses = (centres[:, None] >= low) & (centres[:, None] < high)  # rows x edges
        slope = np.divide(x1 - x0, y1 - y0, out=np.zeros_like(x0), where=y1 != y0)
        xs = np.where(crosses, x0 + (centres[:, None] - y0) * slope, np.inf)
        xs.sort(axis=1)  # per row: entering, leaving, entering, ... (inf = no crossing)
        count = crosses.sum(1)
        rows, index = np.nonzero(np.arange(xs.shape[1])[None, :] < count[:, None])
        # first pixel column whose centre is at or right of each crossing
        cols = np.clip(np.ceil(xs[rows, index] - 0.5), 0, width).astype(np.int64)
        np.add.at(mask, (rows, cols), np.where(index % 2 == 0, 1, -1))
    return np.cumsum(mask, axis=1)[:, :width] > 0
