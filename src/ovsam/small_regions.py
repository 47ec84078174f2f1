"""Small disconnected regions and holes removed from masks, as SAM's ``min_mask_region_area``.

segment-anything's automatic mask generator can post-process its masks: holes (regions of
background enclosed by the mask, or any background region) smaller than an area are filled,
then islands (connected parts of the mask) smaller than it are removed, keeping the largest
part when every part is smaller. Connectivity is 8 (diagonal neighbours touch) for both, as
SAM's ``cv2.connectedComponentsWithStats(..., 8)``. Masks a clean-up changed then rank below
the unchanged ones in a second duplicate removal.

Components are found without OpenCV or SciPy: a mask is cut into runs of True pixels per row,
runs of adjacent rows that touch (8-connected) are joined by a vectorised union-find, so the
cost grows with the number of runs, not with the image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ovsam.crop_layers import PlacedMasks
from ovsam.errors import InputError


@dataclass(frozen=True)
class Components:
    """The 8-connected components of an ``HxW`` bool mask, as runs of True pixels.

    ``rows``, ``starts``, ``ends`` (``R`` int64): each run's row and its columns
    ``[start, end)``, in raster order; ``component`` (``R``): the index of each run's
    component, components numbered in raster order of their first pixel; ``sizes``: each
    component's pixel count.
    """

    shape: tuple[int, int]
    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    component: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Components:
        """Components of ``mask`` (``HxW`` bool)."""
        height, width = mask.shape
        padded = np.zeros((height, width + 2), dtype=np.int8)
        padded[:, 1:-1] = mask
        steps = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past where it ends
        rows, starts = np.nonzero(steps == 1)
        starts, ends = starts.astype(np.int64), np.nonzero(steps == -1)[1].astype(np.int64)
        rows = rows.astype(np.int64)
        roots = _union_find(len(rows), *_touching_runs(rows, starts, ends, width))
        first_runs, component = np.unique(roots, return_inverse=True)  # roots: first runs
        sizes = np.bincount(component, weights=ends - starts, minlength=len(first_runs))
        return cls((height, width), rows, starts, ends, component, sizes.astype(np.int64))

    def paint(self, chosen: np.ndarray) -> np.ndarray:
        """``HxW`` bool: the pixels of the components where ``chosen`` (a bool per
        component) is True."""
        height, width = self.shape
        runs = chosen[self.component]
        base = self.rows[runs] * (width + 1)
        edges = np.zeros(height * (width + 1) + 1, dtype=np.int32)
        np.add.at(edges, base + self.starts[runs], 1)
        np.add.at(edges, base + self.ends[runs], -1)
        return (np.cumsum(edges[:-1]) > 0).reshape(height, width + 1)[:, :width]


def _touching_runs(
    rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)`` of run indices, ``a`` in the row above ``b``, that touch 8-connected:
    ``[s1, e1)`` and ``[s2, e2)`` touch when ``s1 <= e2`` and ``s2 <= e1``.

    Runs are keyed ``row * (width + 2) + column``, increasing in raster order, so the runs of
    the row above that touch a run are one slice found by binary search."""
    stride = width + 2
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    above = (rows - 1) * stride
    first = np.searchsorted(end_keys, above + starts, side="left")
    stop = np.searchsorted(start_keys, above + ends, side="right")
    counts = np.maximum(stop - first, 0)
    lower = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(first, counts) + offsets, lower


def _union_find(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The root of each of ``count`` items joined by the pairs ``(a[i], b[i])``: the lowest
    index of its group. Roots are hooked onto lower roots, then every pointer is jumped to
    its root, until each pair shares one."""
    parent = np.arange(count)
    while True:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            return parent
        low = np.minimum(root_a[apart], root_b[apart])
        high = np.maximum(root_a[apart], root_b[apart])
        np.minimum.at(parent, high, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[np.ndarray, bool]:
    """``mask`` (``HxW`` bool) without its holes (``mode="holes"``: background components,
    filled) or islands (``"islands"``: mask components, removed) of fewer than
    ``area_thresh`` pixels, and whether anything was small. When every island is small, the
    largest is kept (of equal ones, the first in raster order). SAM's function of this name.
    """
    if mode not in ("holes", "islands"):
        raise InputError(f"mode={mode!r}: expected 'holes' or 'islands'")
    mask = np.asarray(mask, dtype=bool)
    holes = mode == "holes"
    parts = Components.of(~mask if holes else mask)
    small = parts.sizes < area_thresh
    if not small.any():
        return mask, False
    if holes:
        return mask | parts.paint(small), True
    kept = ~small
    if not kept.any():
        kept[np.argmax(parts.sizes)] = True
    return parts.paint(kept), True


def clean_small_regions(
    masks: Sequence[np.ndarray], min_area: int, nms_thresh: float, stride: int
) -> tuple[list[int], dict[int, np.ndarray]]:
    """SAM's ``postprocess_small_regions`` on ``masks`` (``HxW`` bool each, best first).

    Each mask loses its holes, then its islands, of fewer than ``min_area`` pixels; duplicates
    are removed again by mask IoU > ``nms_thresh`` (:meth:`~ovsam.crop_layers.PlacedMasks.nms`
    on ``stride`` cells, the pixels counted exactly where undecided), the unchanged masks ranked
    first, then the given order. Returns the indices kept, in that rank, and the changed masks
    among them by index."""
    cleaned, unchanged = [], []
    for mask in masks:
        mask, filled = remove_small_regions(mask, min_area, "holes")
        mask, cut = remove_small_regions(mask, min_area, "islands")
        cleaned.append(mask)
        unchanged.append(not (filled or cut))
    if not cleaned:
        return [], {}
    height, width = cleaned[0].shape
    whole = PlacedMasks((height, width), cleaned, [(0, 0, width, height)] * len(cleaned))
    keep = whole.nms(torch.tensor(unchanged, dtype=torch.float32), nms_thresh, stride)
    return keep, {i: cleaned[i] for i in keep if not unchanged[i]}
