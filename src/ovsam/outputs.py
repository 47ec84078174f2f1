"""Writing a segmentation result to disk: mask PNG, overlay PNG and a JSON record.

All three files are written atomically (``ovsam.fileio``): an interrupted run never leaves a
half-written result behind.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovsam.boxes import clip_to_image
from ovsam.fileio import atomic_write_set, json_bytes
from ovsam.masks import encode_rle, mask_to_bbox_xywh
from ovsam.visualize import overlay


@dataclass
class Prompt:
    """The prompt a mask answers, in original-image pixels (points XY, box XYXY): as given,
    a box possibly reaching past the image (:func:`write_result` records it clipped too)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def clipped_box(self, height: int, width: int) -> list[float] | None:
        """The box clipped to a ``height x width`` image, as the model takes it (None: no box)."""
        if self.box is None:
            return None
        clipped, _ = clip_to_image(np.asarray([self.box], dtype=np.float64), height, width)
        return [float(v) for v in clipped[0]]

    def to_json(self, height: int, width: int) -> dict[str, Any]:
        """JSON-ready dict of the prompt on a ``height x width`` image: the box as given
        (``box_xyxy``) and clipped to the image (``box_xyxy_clipped``)."""
        return {
            "points": [[float(x), float(y)] for x, y in self.points],
            "point_labels": [int(v) for v in self.point_labels],
            "box_xyxy": None if self.box is None else [float(v) for v in self.box],
            "box_xyxy_clipped": self.clipped_box(height, width),
        }


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an HxW (gray) or HxWx3 (RGB) uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_record(mask: np.ndarray, score: float) -> dict[str, Any]:
    """COCO-style description of one mask: RLE, XYWH bbox, area and predicted IoU."""
    return {
        "segmentation": encode_rle(mask),
        "bbox": mask_to_bbox_xywh(mask),
        "area": int(np.count_nonzero(mask)),
        "predicted_iou": float(score),
    }


#: The files :func:`write_result` writes into its folder, by role.
RESULT_FILES = {"mask": "mask.png", "overlay": "overlay.png", "json": "result.json"}


def write_result(
    out_dir: str | Path,
    image: np.ndarray,
    mask: np.ndarray,
    score: float,
    prompt: Prompt,
    *,
    extra: dict[str, Any] | None = None,
    caption: str | None = None,
) -> dict[str, Path]:
    """Write ``mask.png`` (0/255, image size), ``overlay.png`` and ``result.json`` to ``out_dir``.

    ``image`` HxWx3 uint8 RGB; ``mask`` HxW bool. ``extra`` entries (model name, labels...)
    are merged into the JSON; ``caption`` is drawn on the overlay. Returns the paths.

    The three files form one set (:func:`~ovsam.fileio.atomic_write_set`): all are written
    before any replaces an old one, so a run that fails (a full disk) leaves the previous
    set whole, and an interrupted one never leaves a ``result.json`` beside pictures of
    another run.
    """
    out = Path(out_dir)
    paths = {key: out / name for key, name in RESULT_FILES.items()}
    mask_png = png_bytes(np.where(mask, 255, 0).astype(np.uint8))
    box = prompt.clipped_box(*image.shape[:2])
    picture = overlay(
        image,
        [mask],
        labels=[caption] if caption else None,
        points=np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
        if prompt.points
        else None,
        point_labels=np.asarray(prompt.point_labels) if prompt.points else None,
        boxes=None if box is None else np.asarray(box)[None],
    )
    overlay_png = png_bytes(picture)
    record = {
        "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
        "prompt": prompt.to_json(*image.shape[:2]),
        **mask_record(mask, score),
        **(extra or {}),
    }
    files = {paths["mask"]: mask_png, paths["overlay"]: overlay_png}
    atomic_write_set(files | {paths["json"]: json_bytes(record)})  # result.json last
    return paths
