"""``ovsam train`` on an ``--out`` that holds a run (what counts as one to resume, the one-line
errors of a restart) and the weights settings checked before anything is built (tiny stand-in
task under the real CLI, engine and checkpoints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ovsam.train.config import TrainConfig, check_resume, load_config, save_config
from train_harness import TINY, TinyTask, Train, log_rows, one_line_error

pytest_plugins = ("train_harness",)


def test_a_run_stopped_before_its_first_checkpoint_starts_afresh_with_new_settings(
    tmp_path: Path, train: Train
) -> None:
    run = tmp_path / "run"
    code, _, _ = train(*TINY, "steps=10", "checkpoint_every=5", extra=("--stop-after", "3"))
    assert code == 0 and not (run / "checkpoints" / "latest.json").exists()
    assert [r["step"] for r in log_rows(run)] == [1, 2, 3]
    code, _, err = train(*TINY, "steps=4", "checkpoint_every=5", "lr=1e-5")  # nothing to keep
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-5
    assert [r["step"] for r in log_rows(run)] == [1, 2, 3, 4]  # the new run's rows only
    code, _, err = train(*TINY, "steps=4", "checkpoint_every=5", "lr=1e-3")  # now it has one
    assert code == 2 and "lr (1e-05 -> 0.001)" in one_line_error(err)


def test_stop_after_a_step_the_run_has_passed_is_refused(tmp_path: Path, train: Train) -> None:
    assert train(*TINY, "steps=6", extra=("--stop-after", "4"))[0] == 0
    code, _, err = train(*TINY, "steps=6", extra=("--stop-after", "2"))
    assert code == 2 and "--stop-after 2: " in one_line_error(err)
    assert "is already at step 4; give a later step" in err
    assert [r["step"] for r in log_rows(tmp_path / "run")] == [1, 2, 3, 4]  # nothing trained
    assert train(*TINY, "steps=6", extra=("--stop-after", "5"))[0] == 0
    assert [r["step"] for r in log_rows(tmp_path / "run")] == [1, 2, 3, 4, 5]


def test_shortening_a_run_to_its_warm_up_names_the_limit_a_resume_can_change(
    train: Train,
) -> None:
    warm = [s for s in TINY if not s.startswith("warmup_steps")] + ["warmup_steps=3"]
    assert train(*warm, "steps=8", extra=("--stop-after", "2"))[0] == 0
    code, _, err = train(*warm, "steps=3")
    assert code == 2 and "warmup_steps=3 leaves no step of steps=3" in one_line_error(err)
    assert err.rstrip().endswith("this run keeps its warm-up: use --set steps=N with N > 3")
    code, _, err = train(*warm, "steps=3", "warmup_steps=2")  # what a fresh run may do
    assert code == 2 and "warmup_steps (3 -> 2)" in one_line_error(err)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("steps", "4", "int"), ("lr", "fast", "float"), ("bf16", 1, "bool"), ("seed", True, "int")],
)
def test_a_config_json_holding_a_value_of_the_wrong_type_is_named(
    tmp_path: Path, train: Train, field: str, value: object, expected: str
) -> None:
    assert train(*TINY, "steps=4", extra=("--stop-after", "2"))[0] == 0
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, field: value}))
    code, _, err = train(*TINY, "steps=4")
    assert code == 2 and one_line_error(err).rstrip().endswith(
        f"config.json: {field} is {value!r}, expected {expected}"
    )
    path.write_text(json.dumps({**saved, "lr": 1}))  # an integer where a float goes is one
    assert train(*TINY, "steps=4", "lr=1")[0] == 0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("teacher=mobilesamm", "teacher=mobilesamm: unknown model 'mobilesamm'; available"),
        ("teacher_checkpoint=NOPE", "teacher_checkpoint=NOPE: no such file, nor the name of"),
        ("adapter_checkpoint=NOPE", "adapter_checkpoint=NOPE: no such file (expected a sam2clip"),
    ],
)
def test_missing_teachers_and_weights_files_are_named_before_anything_is_built(
    tmp_path: Path, train: Train, monkeypatch: pytest.MonkeyPatch, setting: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)  # NOPE, a relative path, is made absolute: tmp_path/NOPE
    monkeypatch.setattr("train_harness.TinyTask.__init__", pytest.fail)  # no task is built
    code, _, err = train(*TINY, setting)
    name = setting.partition("=")[0]
    shown = message.replace("NOPE", str(tmp_path / "NOPE")) if name != "teacher" else message
    assert code == 2 and shown in one_line_error(err)


def test_a_run_whose_every_step_was_skipped_says_its_weights_did_not_change(
    tmp_path: Path, train: Train, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ovsam.train.engine import USED_ITEMS

    code, _, err = train(*TINY, "steps=2")
    assert code == 0 and "warning" not in err
    real_loss = TinyTask.loss
    monkeypatch.setattr(  # no item left a training target (e.g. all under min_mask_area)
        TinyTask, "loss", lambda *args: {**real_loss(*args), USED_ITEMS: 0}
    )
    code, _, err = train(*TINY, "steps=4")  # steps 3 and 4: both skipped
    assert code == 0 and [r.get("skipped") for r in log_rows(tmp_path / "run")][2:] == [1, 1]
    assert err.splitlines()[-1] == (
        "warning: all 2 steps of this run were skipped (no image kept an instance to learn "
        "from: see min_mask_area and the data), so its weights are the ones it started from"
    )


@pytest.mark.parametrize(
    ("first", "expected"),
    [((), ("dataset", "")), (("supervised_vocabulary=lvis_base",), ("dataset", "lvis_base"))],
)
def test_a_restart_that_sets_vocabulary_alone_trains_on_all_of_it(
    tmp_path: Path, train: Train, first: tuple[str, ...], expected: tuple[str, str]
) -> None:
    """A fresh --out dropped clip2sam's default supervised classes (coco_base) for a run that
    sets vocabulary alone; an --out holding a run stopped before its first checkpoint kept
    them, and the head trained on 48 COCO classes only. Classes chosen on purpose stay."""
    annotations = tmp_path / "instances.json"
    annotations.write_text('{"images": [], "annotations": [], "categories": []}')
    extra = ("--annotations", str(annotations))
    later = (*TINY, "steps=10", "checkpoint_every=5")
    code, _, err = train(*later, *first, task="clip2sam", extra=(*extra, "--stop-after", "2"))
    assert code == 0, err
    assert train(*later, "vocabulary=dataset", task="clip2sam", extra=extra)[0] == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["vocabulary"], saved["supervised_vocabulary"]) == expected


def test_a_run_on_a_folder_whose_name_is_not_utf8_resumes(tmp_path: Path) -> None:
    """config.json spelt the path's undecodable bytes as the text '\\xe9': every resume was
    refused as a run with other settings."""
    data = str(tmp_path / os.fsdecode(b"d\xe9j\xe0"))
    config = TrainConfig(task="sam2clip", data=data, out=str(tmp_path / "run"))
    save_config(config, tmp_path)
    assert load_config(tmp_path) == config
    check_resume(load_config(tmp_path), config, tmp_path)  # raises for other settings
