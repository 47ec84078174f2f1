"""Reading images from files or bytes into ``HxWx3`` uint8 RGB arrays, with clear errors.

Grayscale, palette, RGBA (alpha, or a transparent-colour key, composited on white), CMYK,
16-bit and float images are converted (16-bit by a fixed scale, 65535 -> 255; see
:func:`_gray_to_uint8`); EXIF orientation is applied. Corrupt or non-image data raises
:class:`InputError`, and so does PostScript (EPS), which PIL would hand to Ghostscript. Size is
ovsam's call (``max_pixels``, :class:`ImageTooLargeError`, checked on the header before any
pixel is decoded): PIL's own decompression-bomb check is off while an image file is opened
(the one place PIL makes it; under a lock, as it is process-wide and the server reads uploads
in several threads), so neither its warning nor its refusal of twice its own 89 Mpx limit
overrules ``max_pixels``.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from numbers import Integral
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ovsam.errors import InputError

DEFAULT_MAX_PIXELS = 100_000_000
#: Prefix of the metadata files macOS writes beside each file on FAT, exFAT and network drives
#: (``._IMG_1.jpg``, AppleDouble): not pictures, so folder listings pass them over.
APPLE_DOUBLE = "._"
# Formats PIL reads that ovsam refuses: EPS is PostScript, which PIL hands to Ghostscript (a
# program run on the file's code: not for uploads).
_REFUSED_FORMATS = frozenset({"EPS"})
_WARNINGS_LOCK = threading.Lock()  # one catch_warnings at a time (see the module doc)
# Modes whose transparency is a colour key (PNG tRNS, GIF): PNG optimisers store a binary-alpha
# RGBA image as RGB or L with such a key, which must composite as the RGBA image does.
_KEYED_MODES = frozenset({"1", "L", "P", "RGB"})


class ImageTooLargeError(InputError):
    """The image has more pixels than allowed (or than PIL will safely decode)."""


def _gray_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """A float32 ``HxW`` copy of a PIL ``mode`` ``I;16*`` / ``I`` / ``F`` image -> uint8.

    Fixed scales where the range is known, so that equal values always give equal pixels:
    16-bit values (and 32-bit integers within 0..65535) are divided by 257 (65535 -> 255),
    floats within 0..1 multiplied by 255. Other data (depth maps, signed or wider integers)
    is stretched from its minimum to its maximum. NaN and infinities count as 0. In place.
    """
    arr[~np.isfinite(arr)] = 0.0
    lo, hi = float(arr.min()), float(arr.max())
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        arr *= 1 / 257
    elif mode == "F" and lo >= 0 and hi <= 1:
        arr *= 255
    elif hi > lo:
        arr -= lo
        arr *= 255 / (hi - lo)
    else:
        arr[:] = 0.0
    np.rint(arr, out=arr)
    return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # one float32 copy, scaled in place (16-bit values are exact in float32; float64
        # copies of a 36 MP image took over 500 MB)
        values = np.array(img, dtype=np.float32)
        key = img.info.get("transparency")  # a 16-bit PNG's tRNS colour key
        keyed = values == key if isinstance(key, int) and not isinstance(key, bool) else None
        gray = _gray_to_uint8(values, img.mode)
        if keyed is not None:
            gray[keyed] = 255  # transparent: on white, as alpha is
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (
        img.mode in _KEYED_MODES and "transparency" in img.info
    ):
        return _on_white(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))


def _on_white(rgba: Image.Image) -> np.ndarray:
    """An RGBA image composited on opaque white, as ``HxWx3`` uint8 RGB."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))


ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview


def load_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_orientation: bool = True
) -> np.ndarray:
    """Load an image as an ``HxWx3`` uint8 RGB array.

    ``source`` is a file path or the encoded bytes of an image file (``bytes``,
    ``bytearray`` or ``memoryview``); ``max_pixels`` a positive integer. The image is turned
    upright as its EXIF orientation says (an XMP ``tiff:Orientation`` too), unless
    ``exif_orientation`` is False (the stored pixel grid, which dataset annotations refer to).
    Raises :class:`InputError` when the file is missing, is not an image, is truncated, or has
    more than ``max_pixels`` pixels.
    """
    return load_image_and_orientation(
        source, max_pixels=max_pixels, exif_orientation=exif_orientation
    )[0]


def _open_image_file(path: Path) -> IO[bytes]:
    """``path`` opened for reading; :class:`InputError` for a missing file, a broken link or
    something that is no file (OSError and ValueError, e.g. a name too long, propagate)."""
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"image file {path} is a link to a missing file ({os.readlink(path)})")
        raise InputError(f"image file not found: {path}")
    if not path.is_file():
        raise InputError(f"{path} is not an image file (a folder or a device)")
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def load_image_and_orientation(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_orientation: bool = True
) -> tuple[np.ndarray, int]:
    """:func:`load_image`, and the EXIF orientation (2..8) it applied, 1 for none.

    Browsers honour some orientation metadata and not other (Chromium ignores it in WebP and
    in XMP): a page showing an image it uploaded needs to know whether the pixels were turned.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, Integral) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    if not isinstance(source, (str, os.PathLike, bytes)):
        raise InputError(
            f"an image source is a file path or an image file's bytes, got {type(source).__name__}"
        )
    what = "image data" if isinstance(source, bytes) else f"image file {source}"
    if isinstance(source, bytes):
        fh: IO[bytes] = io.BytesIO(source)
    else:
        if not os.fspath(source):
            raise InputError("image file name is empty")
        try:  # a name too long, or one with a NUL, fails already here
            fh = _open_image_file(Path(os.fsdecode(source)))
        except InputError:
            raise
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise InputError(f"cannot read {what}: {reason}") from exc
    try:
        with fh:
            return _decode(fh, what, max_pixels, exif_orientation)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what} is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"{what} is not a readable image (unknown format or corrupt header)"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on bad data
        raise InputError(f"{what} is corrupt or truncated: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """``exc``'s message, led by its type where that is not an ``OSError`` or ``ValueError``
    (a damaged EXIF block gives a bare ``struct.error``)."""
    if isinstance(exc, OSError | ValueError | SyntaxError):
        return str(exc)
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"{name}: {exc}"


def _decode(
    fh: IO[bytes], what: str, max_pixels: int, exif_orientation: bool
) -> tuple[np.ndarray, int]:
    """Open, size-check and decode the image in ``fh`` (``what`` names it in errors), upright
    when ``exif_orientation``; with the orientation applied (1 = none)."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # max_pixels decides
        try:
            opened = Image.open(fh, formats=_opened_formats())
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit
    with opened as img:
        width, height = img.size
        if width < 1 or height < 1:
            raise InputError(f"{what} has an empty size {width}x{height}")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{what} is {width}x{height} = {width * height} pixels, "
                f"more than the limit of {max_pixels}"
            )
        # what exif_transpose reads (getexif() adds an XMP tiff:Orientation); others: none.
        # Read before load(): Pillow's TIFF loader turns the pixels itself and drops the tag.
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        orientation = orientation if orientation in range(2, 9) else 1
        img.load()
        turned = orientation != 1 and ExifTags.Base.Orientation not in img.getexif()
        if not exif_orientation:
            stored = img.transpose(_UNDO[orientation]) if turned else img
            return np.ascontiguousarray(_to_uint8_rgb(stored)), 1
        upright = img if turned else ImageOps.exif_transpose(img)
        return np.ascontiguousarray(_to_uint8_rgb(upright)), orientation


# The transpose that undoes each orientation's (``ImageOps.exif_transpose``'s) turn.
_UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _opened_formats() -> list[str]:
    """The formats :func:`load_image` opens: PIL's readable formats less the refused ones."""
    Image.init()
    return [name for name in Image.OPEN if name not in _REFUSED_FORMATS]


def check_image_array(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image and return it as ``HxWx3`` uint8 RGB.

    Accepts ``HxW`` / ``HxWx1`` greyscale and ``HxWx4`` RGBA uint8 arrays and converts them (RGBA
    composited on white, as :func:`load_image` does, so an array and its file give the same
    masks); anything else raises :class:`InputError` naming the problem.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise InputError(
            f"image must be HxWx3 RGB (or HxW / HxWx1 greyscale, HxWx4 RGBA), got shape "
            f"{tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image is empty: shape {tuple(image.shape)}")
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    if image.shape[2] == 4:
        return _on_white(Image.fromarray(np.ascontiguousarray(image), mode="RGBA"))
    return np.ascontiguousarray(image)
