"""Image files for the loader and server tests: PNG bytes, and files whose orientation
metadata turns them (which browsers do not all apply)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin


def png_file(image: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


def turned_image_files() -> dict[str, tuple[bytes, int]]:
    """A 40x20 picture, red on its left quarter, saved with orientation metadata that
    browsers do not all apply: ``name -> (file bytes, orientation)``."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise to be upright
    webp = io.BytesIO()
    image.save(webp, format="WEBP", lossless=True, exif=exif.tobytes())
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt(
        "XML:com.adobe.xmp",
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        'tiff:Orientation="3"/></rdf:RDF></x:xmpmeta>',
    )
    tiff = io.BytesIO()  # Pillow's TIFF loader turns these pixels itself
    image.save(tiff, format="TIFF", exif=exif)
    return {
        "webp-exif": (webp.getvalue(), 6),
        "tiff-exif": (tiff.getvalue(), 6),
        "png-xmp": (png_file(image, pnginfo=xmp), 3),
        "png": (png_file(image), 1),
    }
