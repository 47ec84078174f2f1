"""A thread-safe LRU store of embedded images, bounded by entry count and bytes."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ovsam.image_state import ImageState

LOW_RES_BYTES = 256 * 256 * 4


@dataclass
class StoredImage:
    """One uploaded image: its embedding state, the low-res logits of recent masks and, for an
    upload its orientation metadata turned, the upright picture the page shows (JPEG)."""

    image_id: str
    name: str
    state: ImageState
    masks: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    picture: bytes | None = None

    @property
    def width(self) -> int:
        return self.state.original_size[1]

    @property
    def height(self) -> int:
        return self.state.original_size[0]

    def nbytes(self) -> int:
        """Memory held: the embedding (and model extras), the kept low-res logits, the picture."""
        picture = 0 if self.picture is None else len(self.picture)
        return self.state.nbytes() + LOW_RES_BYTES * len(self.masks) + picture


class ImageStore:
    """LRU map ``image_id -> StoredImage``; the least recently used images are evicted first."""

    def __init__(self, max_images: int, max_bytes: int, masks_per_image: int) -> None:
        if max_images < 1:
            raise ValueError("the image cache must hold at least one image")
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.masks_per_image = masks_per_image
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def add(self, name: str, state: ImageState, picture: bytes | None = None) -> StoredImage:
        """Store a new image and return it (evicting old ones to respect the bounds)."""
        item = StoredImage(uuid.uuid4().hex, name, state, picture=picture)
        with self._lock:
            self._items[item.image_id] = item
            self._evict()
        return item

    def get(self, image_id: str) -> StoredImage | None:
        """The image with this id (marked as recently used), or None if unknown or evicted."""
        with self._lock:
            item = self._items.get(image_id)
            if item is not None:
                self._items.move_to_end(image_id)
            return item

    def remember_mask(self, item: StoredImage, low_res: np.ndarray) -> str:
        """Keep ``low_res`` (1x256x256 logits) for refinement; returns its mask id. A view
        (one of a prompt's three candidates) is copied: it would keep all three alive while
        :meth:`StoredImage.nbytes` counts one. The image becomes the most recently used: the
        one other requests used while it was decoded would otherwise evict it now, and the
        mask id just returned would refine nothing."""
        mask_id = uuid.uuid4().hex[:16]
        if low_res.base is not None:
            low_res = low_res.copy()
        with self._lock:
            if item.image_id in self._items:
                self._items.move_to_end(item.image_id)
            item.masks[mask_id] = low_res
            while len(item.masks) > self.masks_per_image:
                item.masks.popitem(last=False)
            self._evict()
        return mask_id

    def delete(self, image_id: str) -> bool:
        """Forget an image; returns whether it was present."""
        with self._lock:
            return self._items.pop(image_id, None) is not None

    def _evict(self) -> None:
        while len(self._items) > self.max_images or (
            len(self._items) > 1 and self._bytes() > self.max_bytes
        ):
            self._items.popitem(last=False)
            self.evictions += 1

    def _bytes(self) -> int:
        return sum(item.nbytes() for item in self._items.values())

    def total_bytes(self) -> int:
        """Bytes held by all stored images (under the lock: iterating while a request touches
        an image raised "OrderedDict mutated during iteration")."""
        with self._lock:
            return self._bytes()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
