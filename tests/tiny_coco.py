"""A tiny COCO-format instance dataset drawn on the fly: shapes with COCO class names.

Rectangles are annotated as polygons, discs as compressed RLE, so both readers are exercised.
Classes: person (id 1, OV-COCO base), car (3, base), cat (17, novel), cup (47, novel) and
traffic light (10, outside the OV split). Images listed in ``crowd`` have only crowd
annotations (``iscrowd`` 1), those in ``unannotated`` none (their shapes are still drawn).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ovsam.masks import encode_rle

CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
    {"id": 10, "name": "traffic light"},
    {"id": 17, "name": "cat"},
    {"id": 47, "name": "cup"},
]


def write_tiny_coco(
    root: Path,
    images: int = 4,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    crowd: tuple[int, ...] = (),
    unannotated: tuple[int, ...] = (),
) -> Path:
    """Write ``root/images/*.png`` and ``root/instances.json``; returns the annotation path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    height, width = size
    data: dict = {"images": [], "annotations": [], "categories": CATEGORIES}
    ann_id = 1
    for image_id in range(1, images + 1):
        noise = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
        canvas = Image.fromarray(noise)
        draw = ImageDraw.Draw(canvas)
        for k, category in enumerate(rng.permutation(CATEGORIES)[:3]):
            color = tuple(int(c) for c in rng.integers(150, 255, 3))
            x0, y0 = 4 + 40 * k, int(rng.integers(4, height // 2))
            x1, y1 = x0 + 30, y0 + int(rng.integers(20, height // 2 - 4))
            mask_img = Image.new("L", (width, height), 0)
            if k % 2 == 0:
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
                segmentation: object = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                ImageDraw.Draw(mask_img).rectangle([x0, y0, x1 - 1, y1 - 1], fill=1)
            else:
                draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=color)
                ImageDraw.Draw(mask_img).ellipse([x0, y0, x1 - 1, y1 - 1], fill=1)
                segmentation = encode_rle(np.asarray(mask_img, dtype=bool))
            area = int(np.asarray(mask_img).sum())
            if image_id in unannotated:
                continue
            data["annotations"].append(
                {"id": ann_id, "image_id": image_id, "category_id": int(category["id"]), "segmentation": segmentation,
                 "area": area, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(image_id in crowd)}
            )  # fmt: skip
            ann_id += 1
        name = f"{image_id:06d}.png"
        canvas.save(root / "images" / name)
        data["images"].append({"id": image_id, "file_name": name, "height": height, "width": width})
    path = root / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
