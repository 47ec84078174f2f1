"""``ovsam segment --vocab/--labels``: honest without weights, end to end when opted in."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import ovsam.build
import ovsam.recognizers as recognizers
import ovsam.segment_job as segment_job
import ovsam.weights as weights
from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.cli.main import main
from ovsam.errors import InputError, WeightsUnavailableError
from ovsam_fixtures import SMALL_CONFIG, small_ovsam

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


def _no_model(*args: object, **kwargs: object) -> None:
    raise AssertionError("a model was built")


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No weights can be downloaded; returns the names asked for."""
    asked: list[str] = []

    def fail(spec: weights.WeightsSpec, **_: object) -> Path:
        asked.append(spec.name)
        raise WeightsUnavailableError(
            f"could not obtain weights {spec.name!r} from any source (URLError: offline); "
            "download it yourself"
        )

    monkeypatch.setattr(weights, "download_weights", fail)
    return asked


def test_labels_without_weights_say_what_to_download(
    tmp_path: Path, mobilesam_checkpoint: Path, offline: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main(_argv(tmp_path / "out", mobilesam_checkpoint, "--vocab", "coco")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, like every CLI error
    assert "no recognition weights: clip_RN50x16_openai could not be obtained" in err
    assert "'ovsam download clip_RN50x16_openai'" in err and "--random-recognition" in err
    assert offline == ["clip_RN50x16_openai"] and not (tmp_path / "out").exists()


def test_labels_with_an_unwritable_cache_say_so(
    tmp_path: Path, mobilesam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    def fail(spec: weights.WeightsSpec, **_: object) -> Path:
        raise WeightsUnavailableError("cache folder /ro/weights is not writable: set X")

    monkeypatch.setattr(weights, "download_weights", fail)
    assert main(_argv(tmp_path / "out", mobilesam_checkpoint, "--vocab", "coco")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert (
        "clip_RN50x16_openai could not be obtained (cache folder /ro/weights is not writable" in err
    )


def test_ovsam_without_weights_names_every_missing_file(
    tmp_path: Path, offline: list[str], capsys: pytest.CaptureFixture
) -> None:
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *BOX, "--out", str(tmp_path / "out"),
            "--vocab", "coco", "--recognizer", "ovsam", "--model", "ovsam_coco"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    files = ["clip_RN50x16_openai", "ovsam_sam2clip_vith_rn50x16",
             "ovsam_clip2sam_coco_rn50x16", "sam_vit_h_4b8939"]  # fmt: skip
    assert offline == files  # every file is tried, not just the first
    assert f"no recognition weights: {', '.join(files)} could not be obtained" in err
    assert f"'ovsam download {' '.join(files)}'" in err and "--random-recognition" in err


def test_ovsam_random_recognition_says_masks_are_random_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    built: list[tuple[str, bool]] = []

    def small_model(name: str, checkpoint: object = None, pretrained: bool = True) -> object:
        built.append((name, pretrained))
        return small_ovsam()  # CLIP RN50 joint space, random like the real one would be

    captions: list[str | None] = []
    write_result = segment_job.write_result

    def spy(*args: object, caption: str | None = None, **kwargs: object) -> object:
        captions.append(caption)
        return write_result(*args, caption=caption, **kwargs)

    monkeypatch.setattr(ovsam.build, "build_model", small_model)
    monkeypatch.setattr(
        ovsam.recognizers, "ovsam_config", lambda *_: SMALL_CONFIG
    )  # the stand-in's
    monkeypatch.setattr(segment_job, "write_result", spy)
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *BOX, "--out", str(tmp_path),
            "--vocab", " cup ; saucer ;spoon", "--recognizer", "ovsam", "--model", "ovsam_coco",
            "--random-recognition", "--templates", "none"]  # fmt: skip
    assert main(argv) == 0
    assert built == [("ovsam_coco", False)]
    out = capsys.readouterr().out
    note = "random OV-SAM and CLIP weights (testing only): masks and labels are meaningless"
    assert note in out and "stability score " in out
    assert "mask stability" not in out and "predicted IoU" not in out
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["recognition_weights"] == note
    assert record["predicted_iou"] is None and isinstance(record["low_res_stability_score"], float)
    assert "stability_score" not in record  # in masks.json that is the full-size filter's
    assert record["vocabulary"] == ["cup", "saucer", "spoon"]  # a JSON list, stripped
    assert captions[0] is not None and captions[0].endswith("(random weights: mask and label)")


def test_labels_end_to_end_with_random_recognition_opt_in(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = _argv(tmp_path, mobilesam_checkpoint, "--vocab", "cup; saucer, plate; spoon")
    argv += ["--random-recognition", "--templates", "none", "--clip", "RN50", "--top-k", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "label: " in out and "labels are meaningless" in out and "masks" not in out
    assert "predicted IoU " in out
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["label"] in ("cup", "saucer", "spoon") and len(record["labels"]) == 2
    assert record["recognition_weights"] == recognizers.RANDOM_NOTE
    assert record["recognizer"] == "image-crop" and record["predicted_iou"] > 0.5
    assert (
        record["vocabulary"] == ["cup", "saucer, plate", "spoon"]
        and "stability_score" not in record
    )
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


@pytest.mark.parametrize(
    "flags",
    [["--recognizer", "feature-crop"], ["--top-k", "3"], ["--templates", "none"],
     ["--clip", "RN50"], ["--clip-weights", "openai"], ["--random-recognition"], ["--labels"]],
)  # fmt: skip
def test_any_recognition_option_turns_labels_on(flags: list[str]) -> None:
    """They were dropped without --labels or --vocab: no labels, no message, exit 0 (and
    --top-k 0 accepted); ovsam serve already took --recognizer as --labels."""
    from ovsam.cli.main import build_parser
    from ovsam.cli.segment_cmd import label_options

    for command in ("segment", "everything"):
        argv = [command, "x.jpg", "--out", "o", *flags]
        options = label_options(build_parser().parse_args(argv))
        assert options is not None and options.vocabulary == "coco"
        assert (options.top_k, options.templates) == (
            3 if "--top-k" in flags else 5,
            "none" if "--templates" in flags else "vild",
        )
        assert options.recognizer == ("feature-crop" if "--recognizer" in flags else "image-crop")
    plain = build_parser().parse_args(["segment", "x.jpg", "--out", "o"])
    assert label_options(plain) is None
    zero = build_parser().parse_args(["segment", "x.jpg", "--out", "o", "--top-k", "0"])
    with pytest.raises(InputError, match="--top-k must be at least 1, got 0"):
        label_options(zero)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [(["--point", "5000", "10"], "point (5000, 10) lies outside the 600x400 image"),
     (["--box", "700", "10", "800", "50"], "entirely outside the 600x400 image")],
)  # fmt: skip
def test_a_bad_prompt_is_refused_before_any_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    prompt: list[str], message: str,
) -> None:  # fmt: skip
    """With --vocab lvis the text bank (minutes) was built before the prompt was looked at."""
    import ovsam.segment_job as job

    built: list[object] = []
    monkeypatch.setattr(job, "build_labeled_predictor", lambda *a: built.append(a))
    monkeypatch.setattr(job, "build_model", lambda *a, **k: built.append(a))
    argv = ["segment", str(SAMPLE_PHOTO), *prompt, "--out", str(tmp_path), "--vocab", "lvis"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and built == []


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


def test_result_vocabulary_and_weights_notes() -> None:
    from ovsam.recognizers import RANDOM_MODEL_NOTE, RANDOM_NOTE, LabelOptions
    from ovsam.vocab import load_vocabulary, lvis_vocabulary_from_annotations

    assert LabelOptions(vocabulary="coco").describe_vocabulary() == "coco"
    assert LabelOptions(vocabulary=load_vocabulary("lvis")).describe_vocabulary() == "lvis"
    custom = load_vocabulary(["cup , mug", " saucer"])
    assert LabelOptions(vocabulary=custom).describe_vocabulary() == ["cup, mug", "saucer"]
    assert LabelOptions(vocabulary=Path("my.txt")).describe_vocabulary() == "my.txt"
    cats = [{"id": i, "name": n, "frequency": "f"} for i, n in ((1, "cup"), (2, "mug_(drinking)"))]
    own = lvis_vocabulary_from_annotations({"categories": cats})  # named "lvis" too
    assert LabelOptions(vocabulary=own).describe_vocabulary() == ["cup", "mug (drinking)"]
    crop, ovsam = LabelOptions(random_weights=True), LabelOptions("coco", recognizer="ovsam")
    assert crop.describe_weights() == RANDOM_NOTE and crop.caption_note() == " (random weights)"
    assert ovsam.describe_weights() == "CLIP RN50x16 (openai)" and ovsam.caption_note() == ""
    random_ovsam = LabelOptions(recognizer="ovsam", random_weights=True)
    assert random_ovsam.describe_weights() == RANDOM_MODEL_NOTE


@pytest.mark.parametrize(
    ("extra", "note", "caption"),
    [
        ([], "RANDOM_MODEL_NOTE", " (random weights: mask and label)"),
        (["--checkpoint", "mine.safetensors"], "RANDOM_NOTE", " (random weights)"),
    ],
)
def test_random_ovsam_notes_follow_the_checkpoint(
    extra: list[str], note: str, caption: str
) -> None:
    """A random OV-SAM model has random masks; one loaded from --checkpoint has real masks,
    and only the CLIP text side (the labels) is random."""
    from ovsam import recognizers
    from ovsam.cli.main import build_parser
    from ovsam.cli.segment_cmd import label_options

    argv = ["segment", "x.jpg", "--box", "1", "1", "5", "5", "--out", "o", "--labels"]
    argv += ["--recognizer", "ovsam"]
    args = build_parser().parse_args([*argv, "--random-recognition", *extra])
    options = label_options(args)
    assert options.describe_weights() == getattr(recognizers, note)
    assert options.caption_note() == caption
    assert recognizers.recognition_record(options)["recognition_weights"] == getattr(
        recognizers, note
    )


def test_ovsam_refuses_a_clip_it_was_not_trained_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """An OV-SAM trained with CLIP RN50 (as its file says) would match regions against class
    names embedded by another CLIP: refused before any model is built or weights fetched,
    naming the --clip to pass; without --clip its own CLIP is the default."""
    from ovsam.ov import save_ovsam
    from ovsam.ov.checkpoints import WeightsMissing

    monkeypatch.chdir(tmp_path)
    save_ovsam(small_ovsam(), "model.safetensors")  # its header says CLIP RN50

    monkeypatch.setattr(ovsam.build, "build_model", _no_model)
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *BOX, "--out", "out", "--vocab",
            "cup; saucer", "--recognizer", "ovsam", "--checkpoint", "model.safetensors"]  # fmt: skip
    assert main([*argv, "--clip", "RN50x16"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors was trained with CLIP RN50, but the class names would be " in err
    assert "embedded with CLIP RN50x16: pass --clip RN50" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    fetched: list[list[str]] = []

    def offline(names: list[str], *args: object, **kwargs: object) -> None:
        fetched.append(names)
        raise WeightsMissing("weights", names)

    monkeypatch.setattr("ovsam.ov.checkpoints.resolve_all", offline)
    assert main(argv) != 0  # RN50 chosen by itself: only the openai RN50 weights are wanted
    assert fetched == [["clip_RN50_openai"]] and "Traceback" not in capsys.readouterr().err


def test_ovsam_refuses_clip_weights_its_file_does_not_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A model file records the CLIP weights its backbone holds (here the registered tag
    openai): those are the default, and others (a file of other content) are refused before
    anything is built or fetched, naming the ones to pass."""
    from dataclasses import replace

    from ovsam.ov import save_ovsam
    from ovsam.ov.checkpoints import WeightsMissing

    monkeypatch.chdir(tmp_path)
    model = small_ovsam()
    model.config = replace(model.config, clip_weights="openai")
    save_ovsam(model, "model.safetensors")
    Path("other.pt").write_bytes(b"other weights")
    fetched: list[list[str]] = []

    def offline(names: list[str], *args: object, **kwargs: object) -> None:
        fetched.append(names)
        raise WeightsMissing("weights", names)

    monkeypatch.setattr(ovsam.build, "build_model", _no_model)
    monkeypatch.setattr("ovsam.ov.checkpoints.resolve_all", offline)
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *BOX, "--out", "out", "--vocab", "cup; mug",
            "--recognizer", "ovsam", "--model", "model.safetensors"]  # fmt: skip
    assert main([*argv, "--clip-weights", "other.pt"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "model.safetensors holds the CLIP RN50 weights 'openai', but the class names would be "
        "embedded with 'other.pt': pass --clip-weights openai\n"
    )
    assert err.count("\n") == 1 and fetched == [] and not Path("out").exists()
    assert main(argv) != 0  # its own weights by default: the openai RN50 ones are wanted
    assert fetched == [["clip_RN50_openai"]] and "Traceback" not in capsys.readouterr().err


def test_ovsam_result_names_the_checkpoint_file_that_segmented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--recognizer ovsam --checkpoint model.safetensors``: the result names the OV-SAM model
    and the file (absolute path, sha256) that made the mask, not just ``ovsam_coco``."""
    from ovsam.ov import save_ovsam

    monkeypatch.chdir(tmp_path)
    save_ovsam(small_ovsam(), "model.safetensors")  # its header says CLIP RN50
    monkeypatch.setattr(ovsam.build, "build_model", lambda *_, **__: small_ovsam())  # narrow
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *BOX, "--out", "out", "--vocab", "cup; saucer",
            "--recognizer", "ovsam", "--checkpoint", "model.safetensors", "--clip", "RN50",
            "--random-recognition", "--templates", "none"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert record["model"] == "ovsam_coco"
    assert record["checkpoint"] == {
        "path": str(tmp_path.resolve() / "model.safetensors"),
        "sha256": hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest(),
    }


def test_an_ovsam_model_file_segments_with_its_own_clip_and_real_masks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``--model FILE --recognizer ovsam``: the file is the model (no official files wanted),
    its CLIP is the default, and with --random-recognition only the labels are random."""
    from ovsam.ov import save_ovsam
    from ovsam.recognizers import RANDOM_NOTE

    monkeypatch.chdir(tmp_path)
    save_ovsam(small_ovsam(), "model.safetensors")  # its header says CLIP RN50
    built: list[str] = []

    def narrow(name: str, *args: object, **kwargs: object) -> object:
        built.append(name)
        return small_ovsam()  # the saved file's narrow adapter is not loadable by name

    monkeypatch.setattr(ovsam.build, "build_model", narrow)
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *BOX, "--out", "out", "--vocab", "cup; saucer",
            "--recognizer", "ovsam", "--model", "model.safetensors", "--random-recognition",
            "--templates", "none"]  # fmt: skip
    assert main(argv) == 0
    assert built == ["model.safetensors"]
    assert RANDOM_NOTE in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert record["recognition_weights"] == RANDOM_NOTE
