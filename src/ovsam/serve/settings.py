"""Limits and options of the HTTP server."""

from __future__ import annotations

from dataclasses import dataclass, field

ACCEPTED_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff", "image/gif")


@dataclass(frozen=True)
class ServeSettings:
    """Server limits. Every violation is answered with a 4xx JSON error naming the limit.

    ``cache_images`` / ``cache_bytes`` bound the LRU store of embedded images (an embedding
    of MobileSAM is 4 MiB, plus 30 MiB of decoder precomputation once the image has had a
    prompt, which makes every later click faster); ``max_points`` bounds the clicks of one request
    (at most :data:`~ovsam.serve.schemas.MAX_POINTS`); ``max_vocabulary`` the names of a custom
    vocabulary (at most :data:`~ovsam.serve.schemas.MAX_NAMES`) and ``max_custom_vocabularies``
    how many are kept (least recently used evicted first). ``max_body_bytes`` bounds a JSON
    request body, ``max_upload_bytes`` an uploaded file; both are checked before the body is
    read. ``labels`` loads CLIP
    ``clip_model`` / ``clip_weights`` for recognition; ``random_recognition`` uses random weights
    (testing only).
    """

    model: str = "mobilesam"
    checkpoint: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    accepted_types: tuple[str, ...] = ACCEPTED_TYPES
    max_points: int = 64
    max_vocabulary: int = 25_000
    max_name_chars: int = 200
    max_custom_vocabularies: int = 16
    max_body_bytes: int = 8 * 1024 * 1024
    cache_images: int = 16
    cache_bytes: int = 1024 * 1024 * 1024
    masks_per_image: int = 32
    top_k: int = 5
    labels: bool = False
    random_recognition: bool = False
    clip_model: str = "RN50x16"
    clip_weights: str = "openai"
    extra: dict[str, str] = field(default_factory=dict)
