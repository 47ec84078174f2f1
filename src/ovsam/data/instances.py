"""COCO- and LVIS-format instance datasets (polygons and RLE) and SA-1B-style image folders.

``InstanceDataset(annotations, image_root)`` reads a COCO ``instances_*.json`` or an LVIS v1
file (category ``frequency`` kept; LVIS images are located by the last part of ``coco_url``
when there is no ``file_name``). Item ``i`` is an :class:`Instances`: the ``HxWx3`` uint8 RGB
image, ``Nx4`` XYXY pixel boxes, ``NxHxW`` bool masks and the category id / name of each
instance (crowd and empty annotations skipped, and those that mmdet's ``CocoDataset``, through
which the official evaluation and training read COCO, drops: :func:`_too_small`).
``category_filter`` keeps only some categories (e.g. the 65 of OV-COCO).
:class:`AnnotatedImages` holds every image of such a file, without labels.
:func:`read_annotations` reads and checks such a file: a missing, malformed or incomplete one
is an :class:`InputError` naming the file and the entry.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ovsam.data.polygons import polygons_to_mask
from ovsam.errors import InputError
from ovsam.image_io import APPLE_DOUBLE, load_image
from ovsam.masks import rle_runs, runs_to_mask


@dataclass
class Instances:
    """One image and its instances (``boxes`` XYXY pixels, ``masks`` ``NxHxW`` bool)."""

    image_id: int
    image: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    category_ids: list[int]
    names: list[str]


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The ``height x width`` mask of a COCO ``segmentation`` field: polygons, RLE or
    uncompressed RLE. An RLE of another size is an :class:`InputError`, found before it is
    decoded (a huge one cannot exhaust memory)."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, Mapping):
        rle_height, rle_width, counts = rle_runs(segmentation)
        if (rle_height, rle_width) != (height, width):
            raise InputError(
                f"its mask is {rle_height}x{rle_width} but the image is {height}x{width} (HxW)"
            )
        return runs_to_mask(height, width, counts)
    raise InputError(f"unsupported segmentation of type {type(segmentation).__name__}")


def image_file_name(info: Mapping[str, Any]) -> str:
    """The file of an ``images`` entry: ``file_name``, else the last part of LVIS' ``coco_url``
    (:class:`InputError` naming the image id when it has neither)."""
    name = str(info.get("file_name") or str(info.get("coco_url", "")).rsplit("/", 1)[-1])
    if not name:
        raise InputError(f"image id {info.get('id')} has no 'file_name' (nor an LVIS 'coco_url')")
    return name


class ListedImages:
    """Items that are the ``images`` entries of a COCO / LVIS file (``self.images``, found
    under ``self.image_root``)."""

    image_root: Path
    images: list[Mapping[str, Any]]

    def __len__(self) -> int:
        return len(self.images)

    def item_keys(self) -> list[str]:
        """The images' ids, in item order (what a training checkpoint fingerprints)."""
        return [str(image["id"]) for image in self.images]

    def image_path(self, index: int) -> Path:
        return image_file(self.image_root, self.images[index])


class AnnotatedImages(ListedImages):
    """Every image a COCO / LVIS file lists, without its labels (SAM2CLIP distillation needs
    none): item ``i`` is the ``HxWx3`` uint8 RGB picture, in the frame its annotations use."""

    def __init__(self, annotations: str | Path, image_root: str | Path) -> None:
        self.image_root = Path(image_root)
        self.images = list(read_annotations(annotations)["images"])

    def __getitem__(self, index: int) -> np.ndarray:
        return load_annotated_image(self.image_root, self.images[index])


class InstanceDataset(ListedImages):
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
        #: image id (of every annotation, images listed or not) -> how many of its annotations
        #: are ``usable`` (the instances), ``crowd``, ``too_small`` (a kept category that
        #: :func:`_too_small` leaves out) or ``other`` (a category not kept)
        self.annotation_kinds: dict[int, Counter[str]] = defaultdict(Counter)
        sizes = {img["id"]: (img.get("height"), img.get("width")) for img in data["images"]}
        by_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            self.unknown_category_annotations += ann["category_id"] not in known
            if ann["category_id"] not in self.categories:
                kind = "other"
            elif ann.get("iscrowd", 0):
                kind = "crowd"
            elif _too_small(ann, sizes.get(ann["image_id"], (None, None))):
                kind = "too_small"
            else:
                kind = "usable"
                by_image[ann["image_id"]].append(ann)
            self.annotation_kinds[ann["image_id"]][kind] += 1
        self.images = [img for img in data["images"] if by_image.get(img["id"])]
        self._annotations = by_image

    @property
    def too_small_annotations(self) -> Counter[int]:
        """Image id -> annotations of a kept category that :func:`_too_small` leaves out."""
        return Counter(
            {i: c["too_small"] for i, c in self.annotation_kinds.items() if c["too_small"]}
        )

    def __getitem__(self, index: int) -> Instances:
        """Image ``index`` and its instances. An image file that cannot be read, or an
        annotation whose mask cannot be decoded (or has another size than the image), is an
        :class:`InputError` naming the file, or the annotation id and the image id."""
        info = self.images[index]
        image = load_annotated_image(self.image_root, info)
        height, width = image.shape[:2]
        boxes, masks, ids = [], [], []
        for ann in self._annotations[info["id"]]:
            where = f"annotation id {ann.get('id')} (image id {info['id']})"
            try:
                mask = annotation_mask(ann["segmentation"], height, width)
            except (InputError, ValueError, TypeError) as exc:
                raise InputError(f"{where}: cannot decode its segmentation: {exc}") from exc
            ys, xs = np.nonzero(mask)
            if xs.size == 0:
                continue
            mask_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            boxes.append(_annotated_box(ann, height, width) or mask_box)
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


def image_file(image_root: Path, info: Mapping[str, Any]) -> Path:
    """The file of the ``images`` entry ``info``: ``image_root/file`` (:func:`image_file_name`),
    or for LVIS, whose images lie in COCO's ``train2017/`` and ``val2017/``,
    ``image_root/<folder of coco_url>/file`` when only that one exists (so ``--images coco/``
    finds both)."""
    path = Path(image_root) / image_file_name(info)
    parts = str(info.get("coco_url", "")).rsplit("/", 2)
    if not path.exists() and not info.get("file_name") and len(parts) == 3:
        nested = Path(image_root) / parts[1] / parts[2]
        if nested.exists():
            return nested
    return path


def load_annotated_image(image_root: Path, info: Mapping[str, Any]) -> np.ndarray:
    """The image of the ``images`` entry ``info`` in the frame its annotations use: as stored
    (COCO's annotations refer to the stored pixel grid), or upright as its EXIF orientation
    says when only that has the entry's ``height`` x ``width`` (a dataset annotated on upright
    images). :class:`InputError` when it cannot be read or neither has the stated size (a
    resized or replaced file)."""
    path = image_file(image_root, info)
    image = load_image(path, exif_orientation=False)
    stated = (info.get("height"), info.get("width"))
    if not all(is_int(v) for v in stated) or stated == image.shape[:2]:
        return image
    upright = load_image(path)
    if upright.shape[:2] == stated:
        return upright
    height, width = image.shape[:2]
    raise InputError(
        f"image file {path} is {height}x{width} (HxW) but the annotation file says "
        f"{stated[0]}x{stated[1]} for image id {info['id']}: not the annotated image "
        "(resized or replaced?)"
    )


def _bbox(ann: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """An annotation's ``bbox`` (XYWH pixels) as four finite floats, or None when it has no
    such box (missing, not four numbers, or too large for a float)."""
    box = ann.get("bbox")
    if not isinstance(box, list) or len(box) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return None
    try:
        x, y, w, h = (float(v) for v in box)
    except OverflowError:  # an integer too large for a float
        return None
    return (x, y, w, h) if all(math.isfinite(v) for v in (x, y, w, h)) else None


def _too_small(ann: Mapping[str, Any], size: tuple[object, object]) -> bool:
    """mmdet's ``CocoDataset.parse_data_info`` rule: an annotation whose ``bbox`` is under 1
    pixel wide or high, whose ``area`` is not positive, or whose box does not overlap its image
    (of the ``(height, width)`` the file states, when it states one) is no instance. One
    without a usable ``bbox`` is kept: its mask's box prompts it (:func:`_annotated_box`)."""
    box = _bbox(ann)
    if box is None:
        return False
    x, y, w, h = box
    area = ann.get("area")
    if w < 1 or h < 1 or (isinstance(area, (int, float)) and area <= 0):
        return True
    height, width = size
    if not (is_int(height) and is_int(width)):
        return False
    overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
    overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
    return overlap_w * overlap_h == 0


def _annotated_box(ann: Mapping[str, Any], height: int, width: int) -> list[float] | None:
    """An annotation's ``bbox`` (XYWH) as XYXY pixels clipped to the ``height x width`` image,
    or None when it has none usable (:func:`_bbox`, or under 1 pixel wide or high inside the
    image, which a box prompt cannot be: the mask's box is used then)."""
    box = _bbox(ann)
    if box is None:
        return None
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return [x0, y0, x1, y1]


class ImageFolder:
    """SA-1B-style folder of images (no labels needed): sorted ``*.jpg/*.jpeg/*.png`` files
    (not folders named so, nor macOS's ``._NAME`` metadata files)."""

    SUFFIXES = (".jpg", ".jpeg", ".png")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.paths = sorted(
            p
            for p in self.root.rglob("*")
            if p.suffix.lower() in self.SUFFIXES
            and not p.name.startswith(APPLE_DOUBLE)
            and p.is_file()
        )
        if not self.paths:
            raise InputError(f"no images (*.jpg, *.jpeg, *.png) under {root}")

    def __len__(self) -> int:
        return len(self.paths)

    def item_keys(self) -> list[str]:
        """The images' paths under the folder, in item order (a moved folder keeps them)."""
        return [p.relative_to(self.root).as_posix() for p in self.paths]

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
    ``image_id`` and ``category_id``) or an ``iscrowd`` other than 0 and 1, or the first image
    or category id given twice."""
    for key, (singular, fields) in _FIELDS.items():
        if not isinstance(data.get(key), list):
            raise InputError(f"{source} has no {key!r} list: not COCO / LVIS instances")
        for index, entry in enumerate(data[key]):
            if not isinstance(entry, Mapping):
                raise InputError(f"{source}: {key}[{index}] is not a JSON object")
            what = f"{key}[{index}]"
            if is_int(entry.get("id")):
                what = f"{singular} id {entry['id']}"
            for field in fields:
                if field not in entry:
                    raise InputError(f"{source}: {what} has no {field!r}")
            for field in _ID_FIELDS[key]:
                if field in entry and not is_int(entry[field]):
                    name = f"{singular} id" if field == "id" else f"{what}: {field}"
                    raise InputError(
                        f"{source}: {name} {entry[field]!r} is not an integer (COCO ids are)"
                    )
            if key == "annotations" and entry.get("iscrowd", 0) not in (0, 1):
                raise InputError(  # read as a truth value, "0" would drop every instance
                    f"{source}: {what}: iscrowd {entry['iscrowd']!r} is not 0 or 1"
                )
    _check_category_names(data["categories"], source)
    for key in ("images", "categories"):
        seen: set[int] = set()
        for entry in data[key]:
            if entry["id"] in seen:
                raise InputError(
                    f"{source}: {_FIELDS[key][0]} id {entry['id']} appears more than once"
                )
            seen.add(entry["id"])
    first: dict[int, Mapping[str, Any]] = {}  # a repeated id is another annotation, unless equal
    for entry in data["annotations"]:
        if "id" in entry and first.setdefault(entry["id"], entry) is not entry:
            if first[entry["id"]] == entry:  # e.g. merged shards: it would be scored twice
                raise InputError(
                    f"{source}: annotation id {entry['id']} is listed twice with the same "
                    "contents: remove the copy"
                )


def _check_category_names(categories: list[Mapping[str, Any]], source: str) -> None:
    """:class:`InputError` for a category name that is not a non-empty string, or one that
    names another category too (compared by :func:`~ovsam.vocab.name_key`: labels are matched
    to categories by name, so the two could not be told apart)."""
    from ovsam.vocab import name_key

    seen: dict[str, object] = {}
    for category in categories:
        name = category["name"]
        if not isinstance(name, str) or not name.strip():
            raise InputError(
                f"{source}: category id {category['id']} has the name {name!r}, not a class name"
            )
        first = seen.setdefault(name_key(name), category["id"])
        if first != category["id"]:
            raise InputError(
                f"{source}: categories {first} and {category['id']} are both named {name!r} "
                "(labels are matched by name)"
            )


def is_int(value: object) -> bool:
    """An int that is not a bool (JSON's ``true`` is no id)."""
    return isinstance(value, int) and not isinstance(value, bool)
