"""ovsam: segment and name any object you point at (Open-Vocabulary SAM in plain PyTorch).

Quick start::

    import numpy as np
    import ovsam
    model = ovsam.build_model("mobilesam")          # downloads + verifies weights once
    predictor = ovsam.SamPredictor(model)
    predictor.set_image(ovsam.load_image("photo.jpg"))
    masks, scores, logits = predictor.predict(box=np.array([x0, y0, x1, y1]))

Names are imported lazily so that ``import ovsam`` (and the CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "build_model": "ovsam.build",
    "list_models": "ovsam.build",
    "SamPredictor": "ovsam.predictor",
    "ImageState": "ovsam.image_state",
    "load_image": "ovsam.image_io",
    "resolve_weights": "ovsam.weights",
    "encode_rle": "ovsam.masks",
    "decode_rle": "ovsam.masks",
    "overlay": "ovsam.visualize",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ovsam' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The module's names and the lazily imported ones (for ``dir()`` and tab completion)."""
    return sorted(set(globals()) | set(_EXPORTS))
