"""``ovsam everything`` on folders with awkward entries: a file name that is not UTF-8, names
that differ only in Unicode normalisation, a link to a missing file, pictures an earlier
ovsam run wrote there."""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovsam.cli.main import main
from ovsam.errors import InputError
from synthetic_scenes import make_scene

FAST = ["--points-per-side", "1"]


def _image(path: Path | bytes) -> None:
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(path, format="PNG")


def test_a_file_name_that_is_not_utf8_is_processed_and_recorded_escaped(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """Its lone surrogates crashed the JSON record (and printing), on every re-run."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in (b"caf\xe9.png", b"z.png"):  # z.png: the images after it are done too
        _image(os.path.join(os.fsencode(folder), name))
    out = tmp_path / "out"
    argv = ["everything", str(folder), "--out", str(out), "--checkpoint", str(mobilesam_checkpoint)]
    assert main([*argv, *FAST]) == 0
    odd = out / os.fsdecode(b"caf\xe9.png")
    record = json.loads((odd / "masks.json").read_text(encoding="utf-8"))
    assert record["image"] == str(folder / "caf\\xe9.png")  # the byte, escaped
    assert (out / "z.png" / "masks.json").is_file()
    assert f"{folder}/caf\\udce9.png: " in capsys.readouterr().out
    assert main([*argv, *FAST]) == 0  # and a re-run finds both done
    assert "2 images already done" in capsys.readouterr().out


def test_a_checkpoint_in_a_folder_whose_name_is_not_utf8_resumes(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """settings.json holds the name escaped: it was compared with the raw name on resume and
    every re-run was refused as made with other settings."""
    folder = tmp_path / os.fsdecode(b"w\xe9ights")
    folder.mkdir()
    checkpoint = folder / "mobile_sam.pt"
    shutil.copyfile(mobilesam_checkpoint, checkpoint)  # a link would resolve to its target
    _image(tmp_path / "a.png")
    out = tmp_path / "out"
    argv = [
        "everything",
        str(tmp_path / "a.png"),
        "--out",
        str(out),
        "--checkpoint",
        str(checkpoint),
    ]
    assert main([*argv, *FAST]) == 0
    capsys.readouterr()
    assert main([*argv, *FAST]) == 0
    assert capsys.readouterr().out == "1 image already done, skipped\n"


def test_names_differing_only_in_unicode_normalisation_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Composed and decomposed ``café.png`` share a folder where names are compared
    normalised (macOS): only names differing in case were refused."""
    folder = tmp_path / "images"
    folder.mkdir()
    for form in ("NFC", "NFD"):
        _image(folder / unicodedata.normalize(form, "café.png"))
    if len(list(folder.iterdir())) != 2:
        pytest.skip("this file system normalises names")
    assert main(["everything", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"ovsam everything: error: images in {folder} whose names differ only in case or "
        "Unicode normalisation (composed or decomposed accents) would share an output folder "
        "on a case- or normalisation-insensitive (macOS) file system: "
        "'cafe\\u0301.png'/'caf\\xe9.png' (rename them)\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_link_to_a_missing_file_is_named_as_failed(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """It was passed over in silence, the run ending with status 0."""
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "out"
    argv = ["everything", str(folder), "--out", str(out), "--checkpoint", str(mobilesam_checkpoint)]
    assert main([*argv, *FAST]) == 1
    err = capsys.readouterr().err
    assert f"failed: image file {folder / 'gone.png'} is a link to a missing file (" in err
    assert "1 image of 2 could not be read or segmented" in err
    assert (out / "a.png" / "masks.json").is_file()


def test_an_image_that_cannot_be_segmented_is_named_and_the_folder_goes_on(
    tmp_path: Path,
    mobilesam_checkpoint: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read image whose segmentation failed stopped the whole folder (exit 2)."""
    from ovsam.cli import everything_cmd

    segment = everything_cmd.segment_everything

    def fails_on_b(image: np.ndarray, *args: object) -> object:
        if image.shape[0] == 20:
            raise InputError("no masks for this one")
        return segment(image, *args)

    monkeypatch.setattr(everything_cmd, "segment_everything", fails_on_b)
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "a.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "b.png")
    argv = ["everything", str(folder), "--out", str(tmp_path / "out")]
    assert main([*argv, "--checkpoint", str(mobilesam_checkpoint), *FAST]) == 1
    err = capsys.readouterr().err
    assert "failed: no masks for this one" in err
    assert "1 image of 2 could not be read or segmented (listed above)" in err
    assert (tmp_path / "out" / "a.png" / "masks.json").is_file()


def test_pictures_an_earlier_run_wrote_into_the_folder_are_not_segmented(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """`everything a.png --out <its folder>` (or `segment --out` there) left overlay.png and
    mask.png beside the photos: the next folder run segmented them as photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(make_scene(1, 64, 80)[0]).save(folder / "a.png")
    argv = ["--checkpoint", str(mobilesam_checkpoint), "--points-per-side", "2"]
    assert main(["everything", str(folder / "a.png"), "--out", str(folder), *argv]) == 0
    assert main(["segment", str(folder / "a.png"), "--box", "5", "5", "40", "40"]
                + ["--out", str(folder), "--checkpoint", str(mobilesam_checkpoint)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["everything", str(folder), "--out", str(tmp_path / "out"), *argv]) == 0
    printed = capsys.readouterr().out
    assert f"overlay.png, mask.png in {folder}: written by an earlier ovsam run" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "settings.json"]
    (folder / "a.png").rename(tmp_path / "a.png")  # ovsam's outputs alone: said so
    assert main(["everything", str(folder), "--out", str(tmp_path / "none"), *argv]) == 2
    message = "holds no images besides overlay.png, mask.png, which an earlier ovsam run wrote"
    assert message in capsys.readouterr().err
    (folder / "masks.json").unlink()
    (folder / "result.json").unlink()  # without them, a picture of that name is a photo
    assert main(["everything", str(folder), "--out", str(tmp_path / "out2"), *argv]) == 0
    assert {"mask.png", "overlay.png"} <= {p.name for p in (tmp_path / "out2").iterdir()}


def test_every_suffix_a_single_image_run_reads_is_listed_in_a_folder(tmp_path: Path) -> None:
    """A GIF was read given alone but silently passed over in a folder."""
    from ovsam.cli.everything_jobs import list_jobs

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.gif", "b.webp", "c.tif", "d.bmp", "e.JPEG", "notes.txt"):
        (folder / name).write_bytes(b"")
    jobs = list_jobs(folder, tmp_path / "out")
    assert [image.name for image, _ in jobs] == ["a.gif", "b.webp", "c.tif", "d.bmp", "e.JPEG"]


def test_an_output_folder_that_would_be_the_input_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A folder named like one of its images, with --out the folder above it: that image's
    results went into the input folder, replacing a picture there named overlay.png."""
    folder = tmp_path / "x.png"
    folder.mkdir()
    _image(folder / "x.png")
    _image(folder / "overlay.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["everything", str(folder), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"ovsam everything: error: the results of x.png would go to the input folder {folder} itself (--out is "
        "the folder above it), replacing its files: choose another --out\n"
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_image_whose_output_folder_is_a_link_to_nothing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    _image(folder / "a.png")
    (out / "a.png").symlink_to(tmp_path / "nowhere")
    assert main(["everything", str(folder), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"ovsam everything: error: cannot create output folder {out / 'a.png'}: {out / 'a.png'} is a link to a "
        "missing target (or a loop of links)\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_macos_metadata_files_beside_the_pictures_are_not_listed(tmp_path: Path) -> None:
    """macOS writes ``._NAME`` (AppleDouble) beside each file on FAT/exFAT drives: each was
    listed, reported as an unreadable image, and the run ended with status 1."""
    from ovsam.cli.everything_jobs import list_jobs

    folder = tmp_path / "card"
    folder.mkdir()
    _image(folder / "IMG_1.jpg")
    (folder / "._IMG_1.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    assert list_jobs(folder, tmp_path / "out") == [
        (folder / "IMG_1.jpg", tmp_path / "out" / "IMG_1.jpg")
    ]
    (folder / "IMG_1.jpg").unlink()
    with pytest.raises(InputError, match="holds no images"):
        list_jobs(folder, tmp_path / "out")
