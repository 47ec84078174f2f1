"""Overlay pictures a person can look at: the image, tinted masks, outlines, prompts, labels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ovsam.boxes import finite_array
from ovsam.errors import InputError
from ovsam.image_io import check_image_array

PALETTE: tuple[tuple[int, int, int], ...] = (
    (30, 144, 255),
    (255, 99, 71),
    (50, 205, 50),
    (255, 215, 0),
    (186, 85, 211),
    (0, 206, 209),
    (255, 140, 0),
    (199, 21, 133),
)
POSITIVE = (0, 220, 0)
NEGATIVE = (230, 0, 0)
CAPTION_PAD = 3  # background pixels around a caption's text


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of ``mask`` (HxW bool) within ``width`` pixels of its boundary."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def caption_shift(
    box: tuple[float, float, float, float], size: tuple[int, int], pad: int = CAPTION_PAD
) -> tuple[int, int]:
    """How far ``(dx, dy)`` to move a caption so that its text box ``(left, top, right,
    bottom)`` plus ``pad`` pixels of background stays inside an image of ``size`` (width,
    height): left when it sticks out on the right, down when above the top (right or up at
    the other edges); ``(0, 0)`` for a caption that fits. A caption wider (taller) than the
    image keeps its left (top) end inside."""
    left, top, right, bottom = box
    width, height = size  # the last pixel inside is (width - 1, height - 1)
    dx = max(math.floor(min(0, width - 1 - pad - right)), math.ceil(pad - left))
    dy = max(math.floor(min(0, height - 1 - pad - bottom)), math.ceil(pad - top))
    return dx, dy


def overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    *,
    labels: Sequence[str | None] | None = None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw masks (tinted, outlined), prompt marks and label captions onto a copy of ``image``.

    ``image``: HxWx3 uint8 RGB, or HxW / HxWx1 greyscale or HxWx4 RGBA uint8, converted as
    :meth:`~ovsam.predictor.SamPredictor.set_image` does (:func:`check_image_array`; other
    arrays raise :class:`~ovsam.errors.InputError`). ``masks``: K masks of HxW bool (one HxW
    array is one mask). ``labels``: K captions (or None). ``points``: Nx2 XY pixels with
    ``point_labels`` N (1 green ring, 0 red cross). ``boxes``: Mx4 XYXY pixels. Marks that do
    not fit the image or each other raise :class:`~ovsam.errors.InputError`. Returns an HxWx3
    uint8 RGB picture.
    """
    image = check_image_array(image)
    masks = _checked_masks(masks, image.shape[:2], labels)
    if points is not None:
        points = finite_array("points", points, "Nx2 XY pixels").reshape(-1, 2)
        if point_labels is not None and np.shape(point_labels) != (len(points),):
            raise InputError(
                f"point_labels must hold one label per point ({len(points)}), got shape "
                f"{np.shape(point_labels)}"
            )
    if boxes is not None:
        boxes = finite_array("boxes", boxes, "Mx4 XYXY pixels")
        if boxes.size % 4:
            raise InputError(f"boxes must be Mx4 XYXY pixels, got shape {boxes.shape}")
    canvas = image.astype(np.float32)
    for index, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        color = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
        canvas[mask] = canvas[mask] * (1 - alpha) + color * alpha
        canvas[mask_outline(mask)] = color
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    size = max(image.shape[:2])
    radius = max(3, size // 120)
    line = max(2, size // 400)
    if boxes is not None:
        for x0, y0, x1, y1 in boxes.reshape(-1, 4):
            draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=line + 1)
            draw.rectangle((x0, y0, x1, y1), outline=(20, 20, 20), width=max(1, line - 1))
    if points is not None:
        kinds = np.ones(len(points)) if point_labels is None else np.asarray(point_labels)
        for (x, y), kind in zip(points, kinds, strict=True):
            ring = (x - radius, y - radius, x + radius, y + radius)
            if kind == 1:
                draw.ellipse(ring, fill=POSITIVE, outline=(255, 255, 255), width=line)
            else:
                draw.line(
                    (x - radius, y - radius, x + radius, y + radius), fill=NEGATIVE, width=line + 1
                )
                draw.line(
                    (x - radius, y + radius, x + radius, y - radius), fill=NEGATIVE, width=line + 1
                )
    if labels:
        font = ImageFont.load_default(size=max(12, size // 40))
        for index, (mask, text) in enumerate(zip(masks, labels, strict=True)):
            ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
            if not text or ys.size == 0:
                continue
            x, y = int(xs.min()), max(0, int(ys.min()) - font.size - 6)
            dx, dy = caption_shift(draw.textbbox((x, y), text, font=font), picture.size)
            anchor = (x + dx, y + dy)
            left, top, right, bottom = draw.textbbox(anchor, text, font=font)
            draw.rectangle(
                (left - CAPTION_PAD, top - CAPTION_PAD, right + CAPTION_PAD, bottom + CAPTION_PAD),
                fill=PALETTE[index % len(PALETTE)],
            )
            draw.text(anchor, text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def _checked_masks(
    masks: Sequence[np.ndarray] | np.ndarray,
    size: tuple[int, int],
    labels: Sequence[str | None] | None,
) -> list[np.ndarray]:
    """``masks`` as a list of HxW bool arrays of the image's ``size``, one per label when
    ``labels`` (:class:`InputError` naming the first that does not fit)."""
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    checked = [np.asarray(mask, dtype=bool) for mask in masks]
    for index, mask in enumerate(checked):
        if mask.shape != size:
            raise InputError(f"mask {index} is {mask.shape}, the image is {size} (HxW)")
    if labels is not None and len(labels) != len(checked):
        raise InputError(f"{len(labels)} labels for {len(checked)} masks: give one per mask")
    return checked
