"""Image loading: conversions and clear errors for bad files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovsam.assets import SAMPLE_PHOTO
from ovsam.errors import InputError
from ovsam.image_io import ImageTooLargeError, check_image_array, load_image
from turned_images import png_file, turned_image_files


def test_sample_photo_loads_as_rgb_uint8() -> None:
    image = load_image(SAMPLE_PHOTO)
    assert image.shape == (400, 600, 3) and image.dtype == np.uint8


def test_grayscale_is_replicated_to_three_channels() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = load_image(png_file(Image.fromarray(gray, mode="L")))
    assert out.shape == (3, 4, 3)
    assert np.array_equal(out[:, :, 0], gray) and np.array_equal(out[:, :, 2], gray)


def test_rgba_is_composited_on_white_from_a_file_and_from_an_array() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[1, 1] = (0, 0, 255, 0)  # fully transparent becomes white
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black becomes mid grey
    out = load_image(png_file(Image.fromarray(rgba, mode="RGBA")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [127, 127, 127]
    assert np.array_equal(check_image_array(rgba), out)  # what set_image sees


def test_orientation_from_exif_or_xmp_is_applied_and_reported() -> None:
    from ovsam.image_io import load_image_and_orientation

    files = turned_image_files()
    for name, (data, orientation) in files.items():
        pixels, applied = load_image_and_orientation(data)
        assert applied == orientation, name
        assert np.array_equal(pixels, load_image(data))
    webp, _ = load_image_and_orientation(files["webp-exif"][0])
    assert webp.shape == (40, 20, 3) and webp[:10].tolist() == [[[255, 0, 0]] * 20] * 10
    xmp, _ = load_image_and_orientation(files["png-xmp"][0])
    assert xmp.shape == (20, 40, 3) and (xmp[:, 30:] == (255, 0, 0)).all()  # turned 180
    stored, applied = load_image_and_orientation(files["webp-exif"][0], exif_orientation=False)
    assert stored.shape == (20, 40, 3) and applied == 1
    # TIFF: the orientation was read after Pillow had turned the pixels and dropped it
    assert np.array_equal(load_image(files["tiff-exif"][0]), webp)
    raw = load_image(files["tiff-exif"][0], exif_orientation=False)
    assert np.array_equal(raw, stored)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "1", "I;16"])
def test_a_transparent_colour_key_composites_as_alpha_does(mode: str) -> None:
    """PNG optimisers store a binary-alpha RGBA image as RGB / L / P (or 16-bit grey) with a
    tRNS colour key: the same picture must give the same pixels (its key colour was read as
    black before)."""
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[1:3, 1:3] = (255, 255, 255, 255) if mode == "1" else (200, 200, 200, 255)
    keyed = Image.fromarray(rgba, mode="RGBA").convert(mode if mode != "P" else "RGB")
    if mode == "P":
        keyed = keyed.quantize(colors=4)
    if mode == "I;16":  # 16-bit grey: 200 * 257 reads as 200
        keyed = Image.fromarray(np.asarray(keyed.convert("L"), dtype=np.uint16) * 257)
    key = keyed.getpixel((0, 0))
    buf = io.BytesIO()
    keyed.save(buf, format="PNG", transparency=key)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == mode
    out = load_image(buf.getvalue())
    expected = load_image(png_file(Image.fromarray(rgba, mode="RGBA")))
    assert out[0, 0].tolist() == [255, 255, 255]  # the keyed background, on white
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([[0, 1000], [2000, 65535]], [[0, 4], [8, 255]]),  # a fixed scale, 65535 -> 255
        ([[65535, 65535], [65535, 65535]], [[255, 255], [255, 255]]),  # white stays white
        ([[7710, 51400], [56540, 0]], [[30, 200], [220, 0]]),  # not stretched to 0..255
    ],
)
def test_sixteen_bit_is_scaled_by_a_fixed_factor(values: list, expected: list) -> None:
    out = load_image(png_file(Image.fromarray(np.array(values, dtype=np.uint16))))
    assert out[:, :, 0].tolist() == expected


def test_float_image_in_unit_range_is_scaled_by_255(tmp_path: Path) -> None:
    data = np.array([[0.0, 0.5], [1.0, 1.0]], dtype=np.float32)
    path = tmp_path / "unit.tiff"
    Image.fromarray(data, mode="F").save(path)
    assert load_image(path)[:, :, 0].tolist() == [[0, 128], [255, 255]]


def test_float_image_with_nan_is_rescaled_with_nan_as_zero(tmp_path: Path) -> None:
    data = np.array([[np.nan, 1.0], [2.0, 3.0]], dtype=np.float32)
    path = tmp_path / "depth.tiff"
    Image.fromarray(data, mode="F").save(path)
    assert load_image(path)[:, :, 0].tolist() == [[0, 85], [170, 255]]


def test_corrupt_and_non_image_data_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a readable image"):
        load_image(b"this is not an image")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"  # PIL would run Ghostscript
    with pytest.raises(InputError, match=r"^image data is not a readable image \(unknown format"):
        load_image(eps)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(SAMPLE_PHOTO.read_bytes()[:5000])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(InputError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="image file name is empty"):
        load_image("")  # not the current folder, "."
    with pytest.raises(InputError, match=r"^cannot read image file x+\.png: File name too long$"):
        load_image("x" * 5000 + ".png")  # was an OSError from Path.exists()
    for source in (None, 3, np.zeros((2, 2, 3), np.uint8)):
        with pytest.raises(InputError, match="a file path or an image file's bytes, got"):
            load_image(source)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (struct.error("required argument is not an integer"), "struct.error: required argument"),
        (TypeError("'bytes' object cannot be interpreted"), "TypeError: 'bytes' object"),
        (OSError("broken data stream"), "broken data stream"),
    ],
)
def test_any_decoder_failure_is_a_corrupt_image_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, shown: str
) -> None:
    """Pillow raises struct.error on a damaged EXIF block and TypeError on a damaged TIFF tag
    (found by fuzzing); both were tracebacks that stopped a whole folder run."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(SAMPLE_PHOTO.read_bytes())

    def fail(*args: object) -> None:
        raise error

    monkeypatch.setattr("PIL.ImageOps.exif_transpose", fail)
    with pytest.raises(InputError, match=f"^image file {photo} is corrupt or truncated: {shown}"):
        load_image(photo)
    error = MemoryError()
    with pytest.raises(MemoryError):
        load_image(photo)  # not the file's fault


def test_unreadable_paths_are_named_for_what_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError, match=f"{tmp_path} is not an image file \\(a folder"):
        load_image(tmp_path)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(SAMPLE_PHOTO.read_bytes())

    def denied(path: object, mode: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    import ovsam.image_io

    monkeypatch.setattr(ovsam.image_io, "open", denied, raising=False)  # root reads mode 000
    with pytest.raises(InputError, match=f"^cannot read image file {photo}: Permission denied$"):
        load_image(photo)


def test_bytes_like_and_path_like_sources_load() -> None:
    data = SAMPLE_PHOTO.read_bytes()
    expected = load_image(data)

    class PathLike:  # any os.PathLike, e.g. py.path.local
        def __fspath__(self) -> str:
            return str(SAMPLE_PHOTO)

    np.testing.assert_array_equal(load_image(PathLike()), expected)  # type: ignore[arg-type]
    np.testing.assert_array_equal(load_image(str(SAMPLE_PHOTO)), expected)
    for source in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(load_image(source), expected)


def test_pixel_limit() -> None:
    with pytest.raises(InputError, match="600x400 = 240000 pixels, more than the limit of 1000"):
        load_image(SAMPLE_PHOTO, max_pixels=1000)
    for limit in (None, 0, -1, 2.5, True):
        with pytest.raises(InputError, match="max_pixels must be a positive integer"):
            load_image(SAMPLE_PHOTO, max_pixels=limit)  # type: ignore[arg-type]


def _png_header(width: int, height: int) -> bytes:
    """A grayscale PNG that declares ``width`` x ``height`` but holds no pixel data (enough
    for the size checks, which come before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "max_pixels", "expected"),
    [  # PIL warns over Image.MAX_IMAGE_PIXELS (89.5 MP): ovsam's limit decides, silently
        (_png_header(12000, 12000), None, "12000x12000 = 144000000 pixels, more than the limit"),
        (
            png_file(Image.new("L", (50, 30))),
            1000,
            "50x30 = 1500 pixels, more than the limit of 1000",
        ),
        (png_file(Image.new("L", (50, 30))), 2000, None),  # within ovsam's limit: loads
        (png_file(Image.new("L", (50, 41))), 10_000, None),  # over PIL's refusal (2x): loads
        # PIL refused over 2x its limit (179 MP) in its own words, whatever max_pixels said
        (_png_header(14000, 14000), None, "14000x14000 = 196000000 pixels, more than the limit"),
    ],
    ids=["12000x12000", "over-max-pixels", "within-max-pixels", "over-pil-refusal", "14000x14000"],
)
def test_pil_decompression_bomb_warning_is_not_shown(
    monkeypatch: pytest.MonkeyPatch, data: bytes, max_pixels: int | None, expected: str | None
) -> None:
    if max_pixels is not None:  # small images: PIL warns over 1000 pixels, refuses over 2000
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        if expected is None:
            assert load_image(data, **limit).shape[1:] == (50, 3)
        else:
            with pytest.raises(ImageTooLargeError, match=expected):
                load_image(data, **limit)
        assert warnings.filters == filters  # silenced while reading only
    assert [str(w.message) for w in caught] == []


def test_array_checks() -> None:
    assert check_image_array(np.zeros((2, 3), np.uint8)).shape == (2, 3, 3)
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    np.testing.assert_array_equal(check_image_array(grey), np.repeat(grey, 3, axis=2))
    with pytest.raises(InputError, match=r"image is empty: shape \(0, 5\)$"):
        check_image_array(np.zeros((0, 5), np.uint8))
    assert check_image_array(np.zeros((2, 3, 4), np.uint8)).shape == (2, 3, 3)
    with pytest.raises(InputError, match="uint8"):
        check_image_array(np.zeros((2, 3, 3), np.float32))
    with pytest.raises(InputError, match="HxWx3"):
        check_image_array(np.zeros((2, 3, 5), np.uint8))
