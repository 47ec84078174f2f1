"""``ovsam segment --vocab/--labels``: honest without weights, end to end when opted in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ovsam.clip.factory as clip_factory
from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.cli.main import main
from ovsam.errors import WeightsUnavailableError

BOX = [str(v) for v in SAMPLE_BOX]


def _argv(out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        "segment",
        str(SAMPLE_PHOTO),
        "--box",
        *BOX,
        "--out",
        str(out),
        "--checkpoint",
        str(checkpoint),
        *extra,
    ]


def test_labels_without_weights_say_what_to_download(
    tmp_path: Path,
    mobilesam_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    def offline(name: str, **_: object) -> Path:
        raise WeightsUnavailableError(f"could not obtain weights {name!r} from any source")

    monkeypatch.setattr(clip_factory, "resolve_weights", offline)
    assert main(_argv(tmp_path / "out", mobilesam_checkpoint, "--vocab", "coco")) == 2
    err = capsys.readouterr().err
    assert "no recognition weights: clip_RN50x16_openai could not be loaded" in err
    assert "ovsam download clip_RN50x16_openai" in err and "--random-recognition" in err
    assert not (tmp_path / "out").exists()


def test_labels_end_to_end_with_random_recognition_opt_in(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = _argv(tmp_path, mobilesam_checkpoint, "--vocab", "cup; saucer, plate; spoon")
    argv += ["--random-recognition", "--templates", "none", "--clip", "RN50", "--top-k", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "label: " in out and "labels are meaningless" in out
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["label"] in ("cup", "saucer", "spoon") and len(record["labels"]) == 2
    assert record["recognizer"] == "image-crop" and "meaningless" in record["recognition_weights"]
    assert record["area"] > 30_000  # segmentation itself is the real MobileSAM's


def test_vocab_argument_errors(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(_argv(tmp_path, mobilesam_checkpoint, "--vocab", "cooc", "--random-recognition")) == 2
    )
    assert "vocabulary 'cooc' is neither built in" in capsys.readouterr().err
    assert main(_argv(tmp_path, mobilesam_checkpoint, "--vocab", "", "--random-recognition")) == 2
    assert "vocabulary is empty" in capsys.readouterr().err  # not silently COCO
    assert main(_argv(tmp_path, mobilesam_checkpoint, "--vocab", "coco", "--top-k", "0")) == 2
    assert "--top-k must be at least 1, got 0" in capsys.readouterr().err


def test_everything_with_labels(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["everything", str(SAMPLE_PHOTO), "--out", str(tmp_path), "--checkpoint", str(mobilesam_checkpoint),
            "--points-per-side", "8", "--vocab", "cup; saucer; spoon", "--random-recognition",
            "--clip", "RN50", "--templates", "none", "--top-k", "2"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "masks.json").read_text())
    assert record["masks"] and "meaningless" in record["recognition_weights"]
    for mask in record["masks"]:
        assert mask["label"] in ("cup", "saucer", "spoon") and len(mask["labels"]) == 2


def test_result_names_the_model_that_segmented() -> None:
    from ovsam.recognizers import LabelOptions, segmentation_model_name

    assert segmentation_model_name(None, "mobilesam") == "mobilesam"
    assert segmentation_model_name(LabelOptions(), "sam_vit_b") == "sam_vit_b"
    ovsam = LabelOptions(recognizer="ovsam")
    assert segmentation_model_name(ovsam, "mobilesam") == "ovsam_coco"  # not "mobilesam"
    assert segmentation_model_name(ovsam, "ovsam_lvis") == "ovsam_lvis"
