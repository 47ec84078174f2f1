"""Limits and options of the HTTP server."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovsam.errors import InputError
from ovsam.recognizers import DEFAULT_CLIP

MIB = 1024 * 1024
MAX_REQUEST_BYTES = 2048 * MIB
"""Highest ``max_upload_bytes`` / ``max_body_bytes``: a request is held in memory whole."""
MAX_PIXELS_LIMIT = 1_000_000_000
"""Highest ``max_pixels``: a gigapixel RGB image decodes to 3 GB."""
SERVE_RECOGNIZERS = ("image-crop", "ovsam")
"""Recognizers the server offers: CLIP on the masked crop, or Open-Vocabulary SAM itself."""


class LimitError(InputError):
    """A :class:`ServeSettings` limit that is not an integer in its range.

    ``name`` is the field, ``value`` what was given and ``low`` / ``high`` the inclusive range,
    so a caller such as the CLI can restate the problem in terms of its own option.
    """

    def __init__(self, name: str, value: object, low: int, high: int) -> None:
        super().__init__(f"{name} must be an integer from {low} to {high}, got {value!r}")
        self.name, self.value, self.low, self.high = name, value, low, high


def limit_ranges() -> dict[str, tuple[int, int]]:
    """The inclusive range ``(low, high)`` allowed for each numeric limit of :class:`ServeSettings`.

    Needs pydantic (the schema bounds live in :mod:`ovsam.serve.schemas`), hence imported here
    rather than with this module, which the CLI parser imports for its defaults.
    """
    from ovsam.serve.schemas import MAX_NAMES, MAX_POINTS

    return {
        "max_upload_bytes": (1, MAX_REQUEST_BYTES),
        "max_body_bytes": (1, MAX_REQUEST_BYTES),
        "max_pixels": (1, MAX_PIXELS_LIMIT),
        "max_points": (1, MAX_POINTS),
        "max_vocabulary": (1, MAX_NAMES),
        "max_name_chars": (1, 10_000),
        "max_custom_vocabularies": (1, 1_000),
        "cache_images": (1, 10_000),
        "cache_bytes": (1, 1024 * 1024 * MIB),
        "masks_per_image": (1, 1_000),
        "body_timeout_s": (1, 3_600),
    }


@dataclass(frozen=True)
class ServeSettings:
    """Server limits. Every violation is answered with a 4xx JSON error naming the limit.

    ``cache_images`` / ``cache_bytes`` bound the LRU store of embedded images (an embedding
    of MobileSAM is 4 MiB, plus 30 MiB of decoder precomputation once the image has had a
    prompt, which makes every later click faster); ``max_points`` bounds the clicks of one request
    (at most :data:`~ovsam.serve.schemas.MAX_POINTS`); ``max_vocabulary`` the names of a custom
    vocabulary, synonyms included (at most :data:`~ovsam.serve.schemas.MAX_NAMES`) and
    ``max_custom_vocabularies`` how many are kept (least recently used evicted first).
    ``max_body_bytes`` bounds a JSON request body, ``max_upload_bytes`` an uploaded file; both
    are checked before the body is read, and a body must arrive whole within
    ``body_timeout_s`` seconds (else 408). ``device`` is the torch device the models run on.
    ``labels`` loads the ``recognizer`` (see :data:`SERVE_RECOGNIZERS`) with CLIP
    ``clip_model`` / ``clip_weights``; ``random_recognition`` uses random weights (testing
    only; with ``ovsam`` the masks too come from random weights unless ``checkpoint`` or an
    OV-SAM model file is given).

    Each limit must be an integer in its range (:func:`limit_ranges`); otherwise construction
    raises :class:`LimitError` naming the field.
    """

    model: str = "mobilesam"
    checkpoint: str | None = None
    device: str = "cpu"
    max_upload_bytes: int = 20 * MIB
    max_pixels: int = 40_000_000
    max_points: int = 64
    max_vocabulary: int = 25_000
    max_name_chars: int = 200
    max_custom_vocabularies: int = 16
    max_body_bytes: int = 8 * MIB
    cache_images: int = 16
    cache_bytes: int = 1024 * MIB
    masks_per_image: int = 32
    body_timeout_s: int = 120
    labels: bool = False
    recognizer: str = "image-crop"
    random_recognition: bool = False
    clip_model: str = DEFAULT_CLIP
    clip_weights: str = "openai"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a limit that is not an integer in its range (booleans included), and an
        unknown recognizer."""
        if self.recognizer not in SERVE_RECOGNIZERS:
            raise InputError(
                f"recognizer must be one of {', '.join(SERVE_RECOGNIZERS)}, got {self.recognizer!r}"
            )
        for name, (low, high) in limit_ranges().items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise LimitError(name, value, low, high)
