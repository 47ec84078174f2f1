"""Files shipped with ovsam: the sample photo and the CLIP BPE vocabulary (see README.md)."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
SAMPLE_PHOTO = ASSETS_DIR / "coffee.jpg"
# XYXY pixels of the cup (with its handle and spoon) in SAMPLE_PHOTO
SAMPLE_BOX: tuple[float, float, float, float] = (170.0, 15.0, 425.0, 330.0)
