"""Result files: atomic writes, overlay content, JSON record."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovsam.errors import InputError
from ovsam.fileio import atomic_write, atomic_write_bytes, atomic_write_json
from ovsam.outputs import Prompt, write_result
from ovsam.visualize import mask_outline, overlay


def _scene() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 20:50] = True
    return image, mask


def test_write_result_files(tmp_path: Path) -> None:
    image, mask = _scene()
    prompt = Prompt(points=[(30.0, 20.0), (2.0, 2.0)], point_labels=[1, 0], box=(20, 10, 50, 30))
    paths = write_result(
        tmp_path, image, mask, 0.9, prompt, extra={"model": "m"}, caption="cup 0.8"
    )
    saved = np.asarray(Image.open(paths["mask"]))
    assert saved.dtype == np.uint8 and saved.shape == (40, 60)
    assert np.array_equal(saved == 255, mask) and set(np.unique(saved)) == {0, 255}
    record = json.loads(paths["json"].read_text())
    assert record["area"] == 600 and record["bbox"] == [20, 10, 30, 20]
    assert record["prompt"] == {
        "points": [[30.0, 20.0], [2.0, 2.0]],
        "point_labels": [1, 0],
        "box_xyxy": [20.0, 10.0, 50.0, 30.0],
        "box_xyxy_clipped": [20.0, 10.0, 50.0, 30.0],
    }
    assert record["model"] == "m" and record["predicted_iou"] == pytest.approx(0.9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "overlay.png", "result.json"]


def test_a_box_reaching_past_the_image_is_recorded_as_given_and_clipped(tmp_path: Path) -> None:
    """The model takes the box clipped to the image: the JSON says so beside the box as given,
    and the overlay draws the clipped box, so its left edge shows on the image's first column."""
    image, mask = _scene()
    paths = write_result(tmp_path, image, mask, 0.9, Prompt(box=(-10, 5, 80.5, 30)))
    prompt = json.loads(paths["json"].read_text())["prompt"]
    assert prompt["box_xyxy"] == [-10.0, 5.0, 80.5, 30.0]
    assert prompt["box_xyxy_clipped"] == [0.0, 5.0, 60.0, 30.0]
    picture = np.asarray(Image.open(paths["overlay"]))
    assert {tuple(picture[y, 0]) for y in range(8, 28)} <= {(255, 255, 255), (20, 20, 20)}
    no_box = write_result(tmp_path, image, mask, 0.9, Prompt(points=[(5.0, 5.0)], point_labels=[1]))
    assert json.loads(no_box["json"].read_text())["prompt"]["box_xyxy_clipped"] is None


def test_an_interrupted_write_never_leaves_result_json_beside_other_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All three files are written first; then result.json goes and the files are renamed in
    place, result.json last: stopped between the renames, the folder holds no result.json
    that would describe the old pictures (or the new mask with an old overlay)."""
    image, mask = _scene()
    write_result(tmp_path, image, mask, 0.9, Prompt(box=(20, 10, 50, 30)))
    renamed, replace = [], os.replace

    def stopped_at_overlay(source: str, target: str) -> None:
        if Path(target).name == "overlay.png":
            raise KeyboardInterrupt
        renamed.append(Path(target).name)
        replace(source, target)

    monkeypatch.setattr("os.replace", stopped_at_overlay)
    with pytest.raises(KeyboardInterrupt):
        write_result(tmp_path, image, ~mask, 0.5, Prompt(points=[(5.0, 5.0)], point_labels=[1]))
    assert renamed == ["mask.png"] and not (tmp_path / "result.json").exists()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")) == 255, ~mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "overlay.png"]  # no tmp


def test_json_is_standard_with_non_finite_numbers_as_null(tmp_path: Path) -> None:
    record = {"iou": float("nan"), "rows": [1.5, float("inf"), (float("-inf"), "x")], "n": 3}
    path = atomic_write_json(tmp_path / "r.json", record)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"iou": None, "rows": [1.5, None, [None, "x"]], "n": 3}
    looped: list = []
    looped.append(looped)
    with pytest.raises(ValueError, match="Circular reference"):
        atomic_write_json(tmp_path / "loop.json", looped)
    assert not (tmp_path / "loop.json").exists()


def test_json_holds_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    """``os`` decodes a name's non-UTF-8 bytes to lone surrogates, which UTF-8 cannot hold."""
    name = os.fsdecode(b"caf\xe9.png")
    record = {"image": name, name: ["\ud800", "ok", float("nan")]}
    text = atomic_write_json(tmp_path / "r.json", record).read_bytes().decode("utf-8")
    assert json.loads(text) == {
        "image": "caf\\xe9.png", "caf\\xe9.png": ["\\ud800", "ok", None]
    }  # fmt: skip


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")

    def broken(fh: object) -> None:
        fh.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_full_disk_names_the_file_being_written(tmp_path: Path) -> None:
    target = tmp_path / "overlay.png"

    def full(fh: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() reports it

    with pytest.raises(OSError, match=f"No space left on device: '{target}'") as info:
        atomic_write(target, full)
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_names_the_target_not_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "mask.png"
    target.mkdir()  # e.g. an output folder in the way of the mask file
    (target / "keep.txt").write_text("mine")
    with pytest.raises(IsADirectoryError) as raised:
        atomic_write_bytes(target, b"png")
    assert raised.value.filename == str(target) and raised.value.filename2 is None
    assert str(raised.value) == f"[Errno 21] Is a directory: '{target}'"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]  # temporary file removed
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_a_file_name_of_255_bytes_is_written_atomically(tmp_path: Path) -> None:
    """The temporary file's name is the target's plus 14 characters: a legal 242-255 byte name
    gave "File name too long". Multi-byte characters are cut whole or not at all."""
    for name in ("x" * 250 + ".json", "é" * 127 + "x"):
        assert len(name.encode()) == 255
        atomic_write_bytes(tmp_path / name, b"{}")
        assert (tmp_path / name).read_bytes() == b"{}"
    assert len(list(tmp_path.iterdir())) == 2  # no temporary file left


def test_an_error_without_errno_keeps_its_own_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise OSError("the disk said no")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(OSError, match="^the disk said no$"):
        atomic_write_bytes(tmp_path / "x.bin", b"1")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_names_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    def refused(prefix: str, suffix: str, dir: Path) -> tuple[int, str]:  # noqa: A002 - mkstemp's
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as raised:
        atomic_write_bytes(tmp_path / "result.json", b"{}")
    assert raised.value.filename == str(tmp_path / "result.json")
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_get_umask_permissions_and_keep_existing_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import ovsam.fileio as fileio

    assert fileio._UMASK == fileio._umask()
    monkeypatch.setattr(fileio, "_UMASK", 0o027)
    new = atomic_write_bytes(tmp_path / "new.json", b"{}")
    assert new.stat().st_mode & 0o777 == 0o640  # as open() with umask 027, not mkstemp's 0600
    os.chmod(new, 0o604)
    atomic_write_bytes(new, b"[]")
    assert new.stat().st_mode & 0o777 == 0o604 and new.read_bytes() == b"[]"
    with fileio.atomic_path(tmp_path / "replaced.bin") as tmp:  # as safetensors' save_file:
        tmp.unlink()  # the writer makes a new 0600 file in its place
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    assert (tmp_path / "replaced.bin").stat().st_mode & 0o777 == 0o640


def test_overlay_tints_mask_draws_outline_and_prompts() -> None:
    image, mask = _scene()
    picture = overlay(image, [mask], points=np.array([[5.0, 5.0]]), point_labels=np.array([1]))
    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert np.array_equal(picture[0, 59], image[0, 59])  # far from everything: untouched
    inner = picture[20, 35].astype(int)
    assert not np.array_equal(inner, image[20, 35])  # tinted
    assert tuple(picture[10, 35]) == (30, 144, 255)  # outline in the first palette colour
    assert tuple(picture[5, 5]) == (0, 220, 0)  # positive point mark
    outline = mask_outline(mask, width=1)
    assert outline.sum() == 2 * (20 + 30) - 4 and not outline[20, 35]


@pytest.mark.parametrize("form", ["HxW", "HxWx1", "HxWx4"])
def test_overlay_takes_greyscale_and_rgba_as_set_image_does(form: str) -> None:
    """HxW and HxWx4 images crashed with a numpy broadcast error; an HxW one with a 3-pixel
    mask came back HxW. As grey (or opaque RGBA), each gives the RGB image's picture."""
    image, mask = _scene()  # grey: every channel 100
    odd = {
        "HxW": image[..., 0],
        "HxWx1": image[..., :1],
        "HxWx4": np.dstack([image, np.full(mask.shape, 255, np.uint8)]),
    }[form]
    small = np.zeros_like(mask)
    small[0, :3] = True
    for masks in ([mask], [small]):
        picture = overlay(odd, masks, labels=["cup"])
        assert picture.shape == image.shape and picture.dtype == np.uint8
        assert np.array_equal(picture, overlay(image, masks, labels=["cup"]))
    with pytest.raises(InputError, match=r"image must be HxWx3 RGB .* got shape \(40, 60, 2\)"):
        overlay(np.zeros((40, 60, 2), np.uint8), [mask])


def test_overlay_names_marks_that_do_not_fit_the_image() -> None:
    """They failed deep in numpy or zip (IndexError, "zip() argument 2 is shorter")."""
    from ovsam.errors import InputError

    image = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:9, 5:9] = True
    for kwargs, message in [
        ({"masks": [np.ones((10, 10), bool)]}, r"mask 0 is \(10, 10\), the image is \(40, 50\)"),
        ({"masks": [mask, mask], "labels": ["a"]}, "1 labels for 2 masks: give one per mask"),
        ({"masks": [], "points": [[1, 2]], "point_labels": [1, 0]}, "one label per point"),
        ({"masks": [], "boxes": [1, 2, 3]}, r"boxes must be Mx4 XYXY pixels, got shape \(3,\)"),
        ({"masks": [], "points": [[1, float("nan")]]}, "points contains NaN or infinite"),
    ]:
        with pytest.raises(InputError, match=message):
            overlay(image, **kwargs)
    one = overlay(image, mask)  # one HxW array is one mask
    assert np.array_equal(one, overlay(image, [mask])) and one[6, 6].any()


def test_a_link_is_written_through_and_kept(tmp_path: Path) -> None:
    """os.replace put a plain file in the link's place and left its target stale."""
    (tmp_path / "models").mkdir()
    real = tmp_path / "models" / "decoder.onnx"
    real.write_bytes(b"old")
    link = tmp_path / "decoder.onnx"
    link.symlink_to(real)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


# Writes one result set, then a second one under a file-size limit that its overlay exceeds
# (as a full disk would stop it); prints the error and every file's bytes afterwards.
_SECOND_RUN_TOO_BIG = """
import json, resource, sys
from pathlib import Path
import numpy as np
from ovsam.outputs import Prompt, write_result
out = Path(sys.argv[1])
mask = np.zeros((120, 160), bool)
mask[30:90, 40:120] = True
write_result(out, np.full((120, 160, 3), 90, np.uint8), mask, 0.9, Prompt(box=(40, 30, 120, 90)))
before = {p.name: p.read_bytes().hex() for p in sorted(out.iterdir())}
noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
try:
    write_result(out, noise, ~mask, 0.5, Prompt(points=[(5.0, 5.0)], point_labels=[1]))
except OSError as exc:
    error = str(exc)
after = {p.name: p.read_bytes().hex() for p in sorted(out.iterdir())}
print(json.dumps({"error": error, "unchanged": before == after, "files": sorted(after)}))
"""


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE")
def test_a_result_set_that_cannot_be_written_leaves_the_previous_one_whole(
    tmp_path: Path,
) -> None:
    """The old result.json was deleted first and each file replaced in turn: a run stopped by
    a full disk at overlay.png left its new mask.png beside the old overlay, and no JSON."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _SECOND_RUN_TOO_BIG, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["error"] == f"[Errno {errno.EFBIG}] File too large: '{tmp_path / 'overlay.png'}'"
    assert result["unchanged"] and result["files"] == ["mask.png", "overlay.png", "result.json"]
