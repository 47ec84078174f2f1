"""COCO- and LVIS-format instance datasets (polygons and RLE) and SA-1B-style image folders.

``InstanceDataset(annotations, image_root)`` reads a COCO ``instances_*.json`` or an LVIS v1
file (category ``frequency`` kept; LVIS images are located by the last part of ``coco_url``
when there is no ``file_name``). Item ``i`` is an :class:`Instances`: the ``HxWx3`` uint8 RGB
image, ``Nx4`` XYXY pixel boxes, ``NxHxW`` bool masks and the category id / name of each
instance (crowd and empty annotations skipped). ``category_filter`` keeps only some categories
(e.g. the 65 of OV-COCO). :func:`read_annotations` reads and checks such a file: a missing,
malformed or incomplete one is an :class:`InputError` naming the file and the entry.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ovsam.errors import InputError
from ovsam.image_io import load_image
from ovsam.masks import decode_rle


@dataclass
class Instances:
    """One image and its instances (``boxes`` XYXY pixels, ``masks`` ``NxHxW`` bool)."""

    image_id: int
    image: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    category_ids: list[int]
    names: list[str]


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (``[x0, y0, x1, y1, ...]`` lists) into an ``HxW`` bool mask.

    With pycocotools installed (the ``[coco]`` extra) its rasteriser is used, so ground truth is
    pixel-identical to what ``COCOeval`` sees; otherwise :func:`fill_polygons` (pixel centres
    inside; the same pixels for axis-aligned polygons, a few edge pixels apart on slanted edges).
    """
    valid = [list(map(float, poly)) for poly in polygons if len(poly) >= 6]
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


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The mask of a COCO ``segmentation`` field: polygons, RLE or uncompressed RLE."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, Mapping):
        return decode_rle(dict(segmentation))
    raise InputError(f"unsupported segmentation of type {type(segmentation).__name__}")


def image_file_name(info: Mapping[str, Any]) -> str:
    """The file of an ``images`` entry: ``file_name``, else the last part of LVIS' ``coco_url``."""
    return str(info.get("file_name") or str(info.get("coco_url", "")).rsplit("/", 1)[-1])


class InstanceDataset:
    """COCO / LVIS instances with masks (see the module docstring)."""

    def __init__(
        self,
        annotations: str | Path | Mapping[str, Any],
        image_root: str | Path,
        category_filter: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        if isinstance(annotations, Mapping):
            data = annotations
            check_annotations(data, "annotations")
        else:
            data = read_annotations(annotations)
        self.image_root = Path(image_root)
        self.categories = {
            c["id"]: c for c in data["categories"] if category_filter is None or category_filter(c)
        }
        known = {c["id"] for c in data["categories"]}
        #: annotations whose ``category_id`` is not among the file's categories (ignored)
        self.unknown_category_annotations = 0
        by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            self.unknown_category_annotations += ann["category_id"] not in known
            if ann["category_id"] in self.categories and not ann.get("iscrowd", 0):
                by_image[ann["image_id"]].append(ann)
        self.images = [img for img in data["images"] if by_image.get(img["id"])]
        self._annotations = by_image

    def __len__(self) -> int:
        return len(self.images)

    def annotated_names(self) -> set[str]:
        """Names of the categories with at least one (non-crowd) instance in the dataset."""
        return {
            str(self.categories[ann["category_id"]]["name"])
            for anns in self._annotations.values()
            for ann in anns
        }

    def image_path(self, index: int) -> Path:
        return self.image_root / image_file_name(self.images[index])

    def __getitem__(self, index: int) -> Instances:
        """Image ``index`` and its instances. An image file that cannot be read, or an
        annotation whose mask cannot be decoded (or has another size than the image), is an
        :class:`InputError` naming the file, or the annotation id and the image id."""
        info = self.images[index]
        image = load_image(self.image_path(index))
        height, width = image.shape[:2]
        boxes, masks, ids = [], [], []
        for ann in self._annotations[info["id"]]:
            where = f"annotation id {ann.get('id')} (image id {info['id']})"
            try:
                mask = annotation_mask(ann["segmentation"], height, width)
            except (InputError, ValueError, TypeError) as exc:
                raise InputError(f"{where}: cannot decode its segmentation: {exc}") from exc
            if mask.shape != (height, width):
                raise InputError(
                    f"{where}: its mask is {mask.shape[0]}x{mask.shape[1]} but the image is "
                    f"{height}x{width} (HxW)"
                )
            ys, xs = np.nonzero(mask)
            if xs.size == 0:
                continue
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            masks.append(mask)
            ids.append(int(ann["category_id"]))
        return Instances(
            int(info["id"]),
            image,
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(masks, dtype=bool).reshape(-1, height, width),
            ids,
            [self.categories[i]["name"] for i in ids],
        )


class ImageFolder:
    """SA-1B-style folder of images (no labels needed): sorted ``*.jpg/*.jpeg/*.png`` files."""

    SUFFIXES = (".jpg", ".jpeg", ".png")

    def __init__(self, root: str | Path) -> None:
        self.paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in self.SUFFIXES)
        if not self.paths:
            raise InputError(f"no images (*.jpg, *.jpeg, *.png) under {root}")

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, index: int) -> Path:
        return self.paths[index]

    def __getitem__(self, index: int) -> np.ndarray:
        return load_image(self.paths[index])


def read_annotations(path: str | Path) -> dict[str, Any]:
    """The COCO / LVIS file at ``path`` (a JSON object with ``images``, ``annotations`` and
    ``categories``); :class:`InputError` naming the file when it is missing or not one."""
    try:
        raw = Path(path).read_bytes()
        data = json.loads(raw)
    except OSError as exc:
        raise InputError(f"cannot read annotations {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        if not raw.strip():
            raise InputError(f"annotation file {path} is empty") from exc
        raise InputError(f"annotation file {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(
            f"annotation file {path} holds a JSON {type(data).__name__}, not a COCO / LVIS object"
        )
    check_annotations(data, f"annotation file {path}")
    return data


_FIELDS = {  # list -> (singular, fields the dataset reads)
    "images": ("image", ("id",)),
    "categories": ("category", ("id", "name")),
    "annotations": ("annotation", ("image_id", "category_id", "segmentation")),
}
#: list -> its fields that hold ids (COCO ids are integers; an annotation's own ``id`` is optional)
_ID_FIELDS = {
    "images": ("id",),
    "categories": ("id",),
    "annotations": ("id", "image_id", "category_id"),
}


def check_annotations(data: Mapping[str, Any], source: str) -> None:
    """:class:`InputError` naming ``source`` and the first entry that lacks a field read here,
    holds an id that is not an integer (image, category and annotation ids, an annotation's
    ``image_id`` and ``category_id``), or the first image or category id given twice."""
    for key, (singular, fields) in _FIELDS.items():
        if not isinstance(data.get(key), list):
            raise InputError(f"{source} has no {key!r} list: not COCO / LVIS instances")
        for index, entry in enumerate(data[key]):
            if not isinstance(entry, Mapping):
                raise InputError(f"{source}: {key}[{index}] is not a JSON object")
            what = f"{key}[{index}]"
            if _is_int(entry.get("id")):
                what = f"{singular} id {entry['id']}"
            for field in fields:
                if field not in entry:
                    raise InputError(f"{source}: {what} has no {field!r}")
            for field in _ID_FIELDS[key]:
                if field in entry and not _is_int(entry[field]):
                    name = f"{singular} id" if field == "id" else f"{what}: {field}"
                    raise InputError(
                        f"{source}: {name} {entry[field]!r} is not an integer (COCO ids are)"
                    )
    for key in ("images", "categories"):
        seen: set[int] = set()
        for entry in data[key]:
            if entry["id"] in seen:
                raise InputError(
                    f"{source}: {_FIELDS[key][0]} id {entry['id']} appears more than once"
                )
            seen.add(entry["id"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
