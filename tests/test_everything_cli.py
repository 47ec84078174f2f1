"""``ovsam everything``: output layout, resuming with the same settings only, labels marked as
meaningless with random recognition weights, and captions kept inside the overlay."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ovsam.cli.everything_cmd import run_settings
from ovsam.cli.main import build_parser, main
from ovsam.cli.segment_cmd import label_options
from ovsam.recognizers import RANDOM_NOTE
from ovsam.visualize import CAPTION_PAD, PALETTE, caption_shift, overlay
from ovsam.weights import get_weights_spec
from synthetic_scenes import make_scene

# a 2x2 grid, every candidate kept: fast, and there are always masks (and captions)
FAST = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-thresh", "0"]
HINT = "choose another --out, or pass --overwrite to recompute every image"


def _everything(source: Path, out: Path, checkpoint: Path, *extra: str) -> int:
    argv = ["everything", str(source), "--out", str(out), "--checkpoint", str(checkpoint)]
    return main([*argv, *FAST, *extra])


def _stamps(out: Path, names: list[str]) -> dict[str, int]:
    return {name: (out / name / "masks.json").stat().st_mtime_ns for name in names}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """``a.png`` (120x160) and ``a.jpg`` (96x128): same stem, different images."""
    path = tmp_path / "images"
    path.mkdir()
    Image.fromarray(make_scene(1, 120, 160)[0]).save(path / "a.png")
    Image.fromarray(make_scene(2, 96, 128)[0]).save(path / "a.jpg")
    return path


def test_same_stem_images_get_folders_of_their_own_and_subfolders_are_counted(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    (folder / "nested").mkdir()
    Image.fromarray(make_scene(3, 64, 64)[0]).save(folder / "nested" / "c.png")
    out = tmp_path / "out"
    assert _everything(folder, out, mobilesam_checkpoint) == 0
    printed = capsys.readouterr().out
    note = f"1 subfolder of {folder} not searched: only the images directly in it are processed"
    assert note in printed
    assert printed.count("masks ->") == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "a.png", "settings.json"]
    for name, size in (("a.png", (120, 160)), ("a.jpg", (96, 128))):
        record = json.loads((out / name / "masks.json").read_text())
        assert record["image"] == str(folder / name) and record["masks"]
        assert (record["image_size"]["height"], record["image_size"]["width"]) == size
        assert Image.open(out / name / "overlay.png").size == size[::-1]


def test_names_differing_only_in_case_are_refused(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(make_scene(4, 64, 64)[0]).save(folder / "A.PNG")
    if len(list(folder.iterdir())) != 3:
        pytest.skip("this file system ignores case")
    assert main(["everything", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"ovsam everything: error: images in {folder} whose names differ only in case would "
        "share an output folder on a case-insensitive file system: A.PNG/a.png (rename them)\n"
    )
    assert not (tmp_path / "out").exists()


def test_out_may_not_be_the_input_folder(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["everything", str(folder), "--out", str(folder)]) == 2
    assert "--out must not be the input folder" in capsys.readouterr().err


def test_resume_only_with_the_same_settings_else_refuse_or_overwrite(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    names = ["a.jpg", "a.png"]
    assert _everything(folder, out, mobilesam_checkpoint) == 0
    first = _stamps(out, names)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["min_area"] == 0 and settings["points_per_side"] == 2
    capsys.readouterr()

    assert _everything(folder, out, mobilesam_checkpoint) == 0  # same settings: resumed
    assert capsys.readouterr().out == "2 images already done, skipped\n"
    assert _stamps(out, names) == first

    assert _everything(folder, out, mobilesam_checkpoint, "--min-area", "5") == 2
    assert capsys.readouterr().err == (
        f"ovsam everything: error: {out} holds results made with other settings "
        f"(min_area 0 -> 5): {HINT}\n"
    )
    assert _stamps(out, names) == first

    assert _everything(folder, out, mobilesam_checkpoint, "--min-area", "5", "--overwrite") == 0
    assert "already done" not in capsys.readouterr().out
    second = _stamps(out, names)
    assert all(second[name] != first[name] for name in names)
    assert json.loads((out / "settings.json").read_text())["min_area"] == 5
    for name in names:
        assert json.loads((out / name / "masks.json").read_text())["settings"]["min_area"] == 5

    assert _everything(folder, out, mobilesam_checkpoint, "--min-area", "5") == 0
    assert capsys.readouterr().out == "2 images already done, skipped\n"

    settings = json.loads((out / "settings.json").read_text())
    assert settings.pop("masks_format") == 2  # results of the [x, y] layout had none
    (out / "settings.json").write_text(json.dumps(settings))
    assert _everything(folder, out, mobilesam_checkpoint, "--min-area", "5") == 2
    assert "(masks_format None -> 2)" in capsys.readouterr().err


def test_an_interrupted_overwrite_redoes_the_images_left_with_old_settings(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert _everything(folder, out, mobilesam_checkpoint) == 0
    stale = json.loads((out / "a.png" / "masks.json").read_text())
    stale["settings"]["min_area"] = 99  # as left by a run with other settings
    (out / "a.png" / "masks.json").write_text(json.dumps(stale))
    kept = _stamps(out, ["a.jpg"])
    capsys.readouterr()
    assert _everything(folder, out, mobilesam_checkpoint) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("1 image already done, skipped\n") and "a.png: " in printed
    assert json.loads((out / "a.png" / "masks.json").read_text())["settings"]["min_area"] == 0
    assert _stamps(out, ["a.jpg"]) == kept


def test_a_single_image_follows_the_same_rule(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    image, out = folder / "a.png", tmp_path / "single"
    assert _everything(image, out, mobilesam_checkpoint) == 0
    stamp = (out / "masks.json").stat().st_mtime_ns
    capsys.readouterr()
    assert _everything(image, out, mobilesam_checkpoint) == 0
    assert capsys.readouterr().out == "1 image already done, skipped\n"
    assert _everything(image, out, mobilesam_checkpoint, "--points-per-side", "3") == 2
    assert capsys.readouterr().err == (
        f"ovsam everything: error: {out} holds results made with other settings "
        f"(points_per_side 2 -> 3): {HINT}\n"
    )
    assert (out / "masks.json").stat().st_mtime_ns == stamp
    # results of an older ovsam (no settings recorded anywhere) are not trusted either
    (out / "settings.json").unlink()
    record = json.loads((out / "masks.json").read_text())
    del record["settings"]
    (out / "masks.json").write_text(json.dumps(record))
    assert _everything(image, out, mobilesam_checkpoint) == 2
    assert capsys.readouterr().err == (
        f"ovsam everything: error: {out / 'masks.json'} was made with other settings "
        f"(not recorded: an older ovsam): {HINT}\n"
    )
    assert _everything(image, out, mobilesam_checkpoint, "--overwrite") == 0
    assert "settings" in json.loads((out / "masks.json").read_text())


def test_results_of_another_image_are_redone_not_skipped(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """Same settings, other image: an image replaced under its name, another image sent to
    the same --out, and results without a recorded image sha256 are all redone."""
    from ovsam.weight_sources import sha256_file

    redone = "1 image not the image its results were made from (or made before ovsam "
    redone += "recorded it): redone\n"
    out = tmp_path / "out"
    assert _everything(folder, out, mobilesam_checkpoint) == 0
    kept = _stamps(out, ["a.jpg"])
    Image.fromarray(make_scene(5, 80, 100)[0]).save(folder / "a.png")  # replaced
    capsys.readouterr()
    assert _everything(folder, out, mobilesam_checkpoint) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("1 image already done, skipped\n" + redone)
    record = json.loads((out / "a.png" / "masks.json").read_text())
    assert record["image_sha256"] == sha256_file(folder / "a.png")
    assert (record["image_size"]["height"], record["image_size"]["width"]) == (80, 100)
    assert _stamps(out, ["a.jpg"]) == kept

    single = tmp_path / "single"
    assert _everything(folder / "a.png", single, mobilesam_checkpoint) == 0
    capsys.readouterr()
    assert _everything(folder / "a.jpg", single, mobilesam_checkpoint) == 0  # another image
    assert capsys.readouterr().out.startswith(redone)
    assert json.loads((single / "masks.json").read_text())["image"] == str(folder / "a.jpg")
    record = json.loads((single / "masks.json").read_text())
    del record["image_sha256"]  # as written before ovsam recorded it
    (single / "masks.json").write_text(json.dumps(record))
    assert _everything(folder / "a.jpg", single, mobilesam_checkpoint) == 0
    assert capsys.readouterr().out.startswith(redone)
    assert _everything(folder / "a.jpg", single, mobilesam_checkpoint) == 0
    assert capsys.readouterr().out == "1 image already done, skipped\n"


def test_a_changed_image_that_no_longer_reads_leaves_no_old_results(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """An image replaced by an unreadable file (or one that cannot be read at all) is redone,
    fails, and its folder no longer holds the results of the image it replaced."""
    out = tmp_path / "out"
    assert _everything(folder, out, mobilesam_checkpoint) == 0
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not any more")
    capsys.readouterr()
    assert _everything(folder, out, mobilesam_checkpoint) == 1
    captured = capsys.readouterr()
    assert "1 image not the image its results were made from" in captured.out
    assert "failed: " in captured.err and "a.png" in captured.err
    assert sorted(p.name for p in (out / "a.png").iterdir()) == []
    assert (out / "a.jpg" / "masks.json").is_file()  # untouched
    alone = tmp_path / "alone"  # a folder of one image fails like any folder: listed, status 1
    alone.mkdir()
    shutil.copyfile(folder / "a.png", alone / "a.png")
    assert _everything(alone, tmp_path / "out_alone", mobilesam_checkpoint) == 1
    assert "failed: " in capsys.readouterr().err


def test_a_checkpoint_file_counts_by_its_content_not_its_spelling(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path,
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The checkpoint is recorded by absolute path and sha256: the same file written another
    way resumes, the file with other content is refused like any other setting."""
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(mobilesam_checkpoint, weights / "mine.pt")
    monkeypatch.chdir(weights)
    out = tmp_path / "out"
    assert _everything(folder / "a.png", out, Path("mine.pt")) == 0
    digest = get_weights_spec("mobile_sam").sha256
    record = {"path": str(weights.resolve() / "mine.pt"), "sha256": digest}
    assert json.loads((out / "settings.json").read_text())["checkpoint"] == record
    assert json.loads((out / "masks.json").read_text())["settings"]["checkpoint"] == record
    capsys.readouterr()
    assert _everything(folder / "a.png", out, weights / "mine.pt") == 0  # absolute: resumed
    assert capsys.readouterr().out == "1 image already done, skipped\n"
    (weights / "mine.pt").write_bytes(b"retrained")  # same name, other weights
    assert _everything(folder / "a.png", out, Path("mine.pt")) == 2
    changed = hashlib.sha256(b"retrained").hexdigest()
    assert capsys.readouterr().err == (
        f"ovsam everything: error: {out} holds results made with other settings "
        f"(checkpoint.sha256 {digest!r} -> {changed!r}): {HINT}\n"
    )


def test_settings_name_the_model_that_segments(tmp_path: Path) -> None:
    """With ``--recognizer ovsam`` OV-SAM makes the masks, whatever ``--model`` says; a
    registered weights name stays a name (its own, not an alias)."""
    (tmp_path / "model.safetensors").write_bytes(b"trained")
    argv = ["everything", "x.png", "--out", "o", "--vocab", "cup; saucer", "--clip", "RN50"]

    def settings(*extra: str) -> dict:
        args = build_parser().parse_args([*argv, *extra])
        return run_settings(args, label_options(args))

    ovsam = settings("--recognizer", "ovsam", "--checkpoint", str(tmp_path / "model.safetensors"))
    assert ovsam["model"] == "ovsam_coco" and ovsam["recognizer"] == "ovsam"
    assert ovsam["checkpoint"] == {
        "path": str((tmp_path / "model.safetensors").resolve()),
        "sha256": hashlib.sha256(b"trained").hexdigest(),
    }
    crop = settings("--checkpoint", "mobile_sam")  # the model's default: as if not given
    assert crop["model"] == "mobilesam" and crop["checkpoint"] is None
    assert settings("--model", "sam_vit_b", "--checkpoint", "vit_t")["checkpoint"] == "mobile_sam"
    assert settings("--model", str(tmp_path / "model.safetensors"))["model"] == ovsam["checkpoint"]


def test_a_vocabulary_file_counts_by_its_content_not_its_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--vocab cls.txt`` and ``--vocab $PWD/cls.txt`` are one setting (resumed)."""
    (tmp_path / "cls.txt").write_text("cup\nsaucer\n")
    monkeypatch.chdir(tmp_path)

    def vocabulary(path: str) -> dict:
        args = build_parser().parse_args(["everything", "x.png", "--out", "o", "--vocab", path])
        return run_settings(args, label_options(args))["vocabulary"]

    digest = hashlib.sha256(b"cup\nsaucer\n").hexdigest()
    record = {"path": str(tmp_path.resolve() / "cls.txt"), "sha256": digest}
    assert vocabulary("cls.txt") == vocabulary(str(tmp_path / "cls.txt")) == record


def test_random_recognition_is_announced_marked_and_recorded(
    folder: Path,
    tmp_path: Path,
    mobilesam_checkpoint: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captions: list[list[str] | None] = []

    def recording_overlay(*args: object, labels: list[str] | None = None, **kw: object):  # noqa: ANN202
        captions.append(labels)
        return overlay(*args, labels=labels, **kw)

    monkeypatch.setattr("ovsam.visualize.overlay", recording_overlay)
    argv = ["--vocab", "cup; saucer; spoon", "--random-recognition", "--clip", "RN50"]
    argv += ["--templates", "none", "--top-k", "2"]
    assert _everything(folder / "a.png", tmp_path, mobilesam_checkpoint, *argv) == 0
    assert f"labels (image-crop): {RANDOM_NOTE}\n" in capsys.readouterr().out
    record = json.loads((tmp_path / "masks.json").read_text())
    assert record["recognizer"] == "image-crop"
    assert record["vocabulary"] == ["cup", "saucer", "spoon"]  # as in segment's result.json
    assert record["recognition_weights"] == RANDOM_NOTE
    assert record["settings"]["random_recognition"] is True
    assert len(captions) == 1 and captions[0] and len(captions[0]) == len(record["masks"])
    for caption, mask in zip(captions[0], record["masks"], strict=True):
        assert caption.startswith(f"{mask['label']} ") and caption.endswith(" (random weights)")


def test_without_labels_masks_json_says_so(
    folder: Path, tmp_path: Path, mobilesam_checkpoint: Path
) -> None:
    assert _everything(folder / "a.jpg", tmp_path, mobilesam_checkpoint) == 0
    record = json.loads((tmp_path / "masks.json").read_text())
    assert record["recognizer"] is None and record["vocabulary"] is None
    assert record["recognition_weights"] is None and "label" not in record["masks"][0]


def test_caption_shift_keeps_captions_inside_and_fitting_ones_in_place() -> None:
    size = (200, 100)
    assert caption_shift((20, 30, 80, 45), size) == (0, 0)  # fits: unchanged
    dx, dy = caption_shift((170, 30, 260, 45), size)  # past the right edge: moved left
    assert (dx, dy) == (199 - CAPTION_PAD - 260, 0) and 170 + dx - CAPTION_PAD >= 0
    assert caption_shift((20, 1, 80, 16), size) == (0, CAPTION_PAD - 1)  # above the top: down
    assert caption_shift((20, 90, 80, 105), size) == (0, 99 - CAPTION_PAD - 105)  # bottom: up
    assert caption_shift((0, 30, 60, 45), size) == (CAPTION_PAD, 0)  # at the left edge
    assert caption_shift((50, 30, 400, 45), size)[0] == CAPTION_PAD - 50  # too wide: left end in


def test_a_caption_near_the_right_edge_is_drawn_whole() -> None:
    height, width = 120, 200
    image = np.zeros((height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    mask[100:, 190:] = True  # bottom-right corner: the caption starts 10 px from the edge
    text = "saucer 0.02 (random weights)"
    picture = overlay(image, [mask], labels=[text])
    band = picture[:100]  # above the mask: only the caption is drawn there
    background = np.all(band == PALETTE[0], axis=-1)
    rows, cols = np.nonzero(background)
    font = ImageFont.load_default(size=max(12, width // 40))
    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    assert cols.max() <= width - 1 and cols.min() >= 0
    assert cols.max() - cols.min() + 1 == right - left + 2 * CAPTION_PAD + 1  # not cut off
    ink = np.nonzero(np.all(band > 200, axis=-1))[1]  # the white text
    assert ink.size and ink.max() <= width - 1 - CAPTION_PAD


def test_a_grid_too_large_is_refused_before_the_model_is_built(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr("ovsam.build.build_model", no_model)
    argv = ["everything", str(folder), "--out", str(tmp_path / "out")]
    assert main([*argv, "--points-per-side", "100000"]) == 2
    assert capsys.readouterr().err == (
        "ovsam everything: error: --points-per-side=100000: expected at most 256\n"
    )
    assert main([*argv, "--min-area", "-5"]) == 2  # settings are named by their flags
    assert capsys.readouterr().err.endswith("error: --min-area=-5: expected an integer >= 0\n")
    assert not (tmp_path / "out").exists()


def test_an_image_that_cannot_be_hashed_is_never_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result without a recorded sha256 (older ovsam) beside an image that cannot be read:
    None == None must not count as "the same image"."""
    from ovsam.cli import everything_jobs

    image, out = tmp_path / "a.png", tmp_path / "out"
    image.write_bytes(b"png")
    out.mkdir()
    (out / "masks.json").write_text(json.dumps({"settings": {"x": 1}}))
    (out / "overlay.png").write_bytes(b"png")  # a finished result but for its image's hash

    def unreadable(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(everything_jobs, "sha256_file", unreadable)
    done, changed = everything_jobs.finished_jobs([(image, out)], out, {"x": 1}, False)
    assert (done, changed) == ([], [(image, out)])
    assert (out / "masks.json").exists()  # finished_jobs only reads; the run forgets it
