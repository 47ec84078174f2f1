"""Prompts derived from ground truth, as in the paper's protocol, and large-scale jitter.

- :func:`box_prompts`: the ground-truth boxes (XYXY pixels);
- :func:`center_points`: per mask the pixel farthest from the mask boundary by the official
  "point" configs' distance transform (kornia's); :func:`frame_center_points` picks it as the
  official evaluation does, on the mask resized to the model's 1024 input frame;
- :func:`random_points`: points drawn uniformly inside each mask (training);
- :func:`large_scale_jitter`: flip, resize by a random factor of the 1024 frame, then crop to
  it (the official ``coco_ov_instance_lsj`` pipeline).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovsam.transforms import preprocess_shape

# The official LSJ pipeline's RandomFlip prob and RandomResize ratio_range (of the 1024 frame).
LSJ_FLIP_PROB = 0.5
LSJ_SCALE_RANGE = (0.9, 2.0)


def box_prompts(boxes: np.ndarray) -> np.ndarray:
    """Ground-truth boxes as prompts (``Nx4`` XYXY pixels, float32)."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


# The official "point" prompts use kornia's ``distance_transform`` (0.7, the version of the
# OV-SAM era): a cascade of 3x3 soft-minimum steps with taps exp(-|offset| / h).
_DT_H = 0.35
_DT_TAPS = torch.exp(
    torch.hypot(*torch.meshgrid(torch.arange(-1.0, 2.0), torch.arange(-1.0, 2.0), indexing="ij"))
    / -_DT_H
)[None, None]


def center_points(masks: np.ndarray) -> np.ndarray:
    """``Nx2`` XY pixel indices of each ``NxHxW`` mask's centre point as the official
    ``get_center_coords`` picks it: the argmax of kornia's ``distance_transform`` of the mask
    (padded with background), the first in row-major order among equals; SAM's point
    convention: ``(21, 11)`` is column 21, row 11 (the prompt encoder adds 0.5). An empty mask
    gives ``(0, 0)``.

    The cascade reaches a pixel at chessboard depth d (1 beside the background) in step d - 1
    and gives it ``3 (d - 1) // 2`` (kornia 0.7's offset) plus ``-h log`` of the taps of its
    neighbours reached before. The deepest pixels always win (a pixel one step shallower gets
    at most sqrt(2) over its offset, the deepest at least 0.42 over theirs, one more), so the
    depth comes from erosion within the mask's box and the cascade's last step is computed for
    the deepest pixels alone: the same values, in time about the box's area times the log of
    its depth (:func:`_deepest`).
    """
    points = np.zeros((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)  # a 0/1 uint8 mask inverted bitwise is all True
        ys, xs = np.nonzero(mask)
        if not xs.size:
            continue
        top, left = ys.min(), xs.min()
        crop = np.ascontiguousarray(mask[top : ys.max() + 1, left : xs.max() + 1])
        deepest, depth = _deepest(torch.from_numpy(crop))
        deepest = deepest.float()[None, None]
        reached = F.pad(1.0 - deepest, (1, 1, 1, 1), value=1.0)  # beyond the box: background
        value = (3 * (depth - 1)) // 2 + -_DT_H * torch.log(F.conv2d(reached, _DT_TAPS))
        value = torch.where(deepest > 0, value, -torch.inf)[0, 0]
        row, col = divmod(int(value.flatten().argmax()), value.shape[1])  # first of equals
        points[i] = (left + col, top + row)
    return points


def frame_center_points(masks: np.ndarray, long_side: int = 1024) -> np.ndarray:
    """The official evaluation's centre points of ``NxHxW`` masks (``Nx2`` XY, original pixels).

    As ``get_center_coords(..., rescale_shape=img_shape)`` at test time: each mask is resized
    (nearest) to the model's input frame (long side ``long_side``, the size
    :class:`~ovsam.transforms.ResizeLongestSide` gives) and :func:`center_points` picks the
    pixel there. That pixel index is returned divided by the resize's scale of each axis, so
    that the predictor, which scales points into that frame, gives the model exactly the
    official point. The centre of the original-size mask, scaled, may be another pixel, even
    one outside the resized mask.
    """
    masks = np.asarray(masks)
    height, width = masks.shape[1:]
    new_h, new_w = preprocess_shape(height, width, long_side)
    rows, cols = nearest_indices(height, new_h), nearest_indices(width, new_w)
    points = np.zeros((len(masks), 2), dtype=np.float64)
    for i, mask in enumerate(masks):
        points[i] = center_points(mask[rows[:, None], cols[None, :]][None])[0]
    return points * (width / new_w, height / new_h)


def _deepest(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The pixels of a non-empty ``HxW`` bool ``mask`` at its greatest chessboard depth, and that
    depth (1: beside the background; beyond the array is background): a pixel is at depth r or
    more when the (2r-1)-square around it lies in the mask, i.e. when every row of that square
    reaches r pixels to either side. Found by bisection on r, with sliding minima by doubling."""
    height, width = mask.shape
    cols = torch.arange(width)
    last = torch.where(~mask, cols, -1).cummax(1).values  # background at or left of x (-1)
    ahead = (width - 1 - torch.where(~mask.flip(1), cols, -1).cummax(1).values).flip(1)
    row_depth = torch.minimum(cols - last, ahead - cols)  # along its row; 0 on background

    def at_least(r: int) -> torch.Tensor:
        return _sliding_min(F.pad(row_depth, (0, 0, r - 1, r - 1)), 2 * r - 1) >= r

    low, high = 1, min((min(height, width) + 1) // 2, int(row_depth.max()))
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if at_least(middle).any() else (low, middle - 1)
    return at_least(low), low


def _sliding_min(x: torch.Tensor, k: int) -> torch.Tensor:
    """Minima of ``x``'s rows over windows of ``k`` consecutive rows: ``(n-k+1) x ...``."""
    span = 1
    while 2 * span <= k:  # x[i] = min of rows i .. i+2*span-1
        x, span = torch.minimum(x[:-span], x[span:]), 2 * span
    return torch.minimum(x[: len(x) - (k - span)], x[k - span :]) if span < k else x


def random_points(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random pixel inside each mask, as ``Nx2`` XY pixel indices (SAM's point
    convention, as :func:`center_points` and the official ``get_random_points``)."""
    points = np.zeros((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if xs.size:
            k = rng.integers(xs.size)
            points[i] = (xs[k], ys[k])
    return points


def nearest_indices(size: int, new_size: int) -> np.ndarray:
    """For each of ``new_size`` positions, the position of ``size`` that a ``nearest`` resize
    (``F.interpolate``) copies: computed by that resize itself, so identical to it."""
    positions = torch.arange(size, dtype=torch.float32)[None, None, :, None]
    picked = F.interpolate(positions, (new_size, 1), mode="nearest")
    return picked[0, 0, :, 0].long().numpy()


def large_scale_jitter(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    size: int = 1024,
    scale_range: tuple[float, float] = LSJ_SCALE_RANGE,
    flip_prob: float = LSJ_FLIP_PROB,
) -> tuple[np.ndarray, np.ndarray]:
    """The official CLIP2SAM augmentation: flip left-right with probability ``flip_prob``,
    resize so the long side is ``size * s`` (``s`` uniform in ``scale_range``), then take a
    random crop of at most ``size x size``. Returns the image (``hxwx3`` uint8, h and w at most
    ``size``: padding is the caller's, after pixel normalisation, as SAM pads) and the masks
    (``Nxhxw`` bool) of the same crop. The masks are resized (nearest) within the crop only,
    as booleans: memory grows with the crop, not with the resized image."""
    if flip_prob > 0 and rng.uniform() < flip_prob:  # no draw without flips: older runs' draws
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    height, width = image.shape[:2]
    factor = size * rng.uniform(*scale_range) / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    img = F.interpolate(
        torch.tensor(image.copy()).permute(2, 0, 1)[None].float(),  # ``image`` may be read-only
        (new_h, new_w),
        mode="bilinear",
        align_corners=False,
    )
    top = int(rng.integers(0, max(new_h - size, 0) + 1))
    left = int(rng.integers(0, max(new_w - size, 0) + 1))
    img = img[0, :, top : top + size, left : left + size]
    rows = nearest_indices(height, new_h)[top : top + size]
    cols = nearest_indices(width, new_w)[left : left + size]
    msk = np.asarray(masks, dtype=bool)[:, rows[:, None], cols[None, :]]
    return img.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), msk
