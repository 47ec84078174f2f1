"""``ovsam train`` refuses bad settings, mismatched resumes and damaged run state in one line.

The CLI runs in-process with a tiny stand-in task (a stack of ``adapter_depth`` linear layers of
width ``adapter_dim``), so the engine, config checks and checkpoints are the real ones.
"""

from __future__ import annotations

import json
import math
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ovsam.cli.main import main
from ovsam.errors import InputError
from ovsam.train.config import TrainConfig, absolute_paths, check_resume
from train_harness import TINY, TinyTask, Train, log_rows, one_line_error

pytest_plugins = ("train_harness",)


class EventFile:
    """What one ``SummaryWriter`` of the fake ``torch.utils.tensorboard`` wrote."""

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step, self.closed = log_dir, purge_step, False
        self.events: list[tuple[str, int, float]] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        self.events.append((tag, global_step, scalar_value))

    def close(self) -> None:
        self.closed = True


def tensorboard_view(files: list[EventFile], tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` as TensorBoard shows it: the files in order, each one's
    ``purge_step`` first hiding the events read so far at or after that step."""
    shown: list[tuple[str, int, float]] = []
    for file in files:
        if file.purge_step is not None:
            shown = [event for event in shown if event[1] < file.purge_step]
        shown += file.events
    return [(step, value) for name, step, value in shown if name == tag]


@pytest.fixture()
def event_files(monkeypatch: pytest.MonkeyPatch) -> list[EventFile]:
    """Installs a fake ``torch.utils.tensorboard`` (``tensorboard`` is an optional extra);
    returns the event files its writers open, in order."""
    files: list[EventFile] = []

    def summary_writer(log_dir: str, purge_step: int | None = None) -> EventFile:
        files.append(EventFile(log_dir, purge_step))
        return files[-1]

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = summary_writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return files


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("batch_size=0", "batch_size=0: expected a positive integer"),
        ("grad_accum=0", "grad_accum=0: expected a positive integer"),
        ("checkpoint_every=0", "checkpoint_every=0: expected a positive integer"),
        ("log_every=0", "log_every=0: expected a positive integer"),
        ("steps=0", "steps=0: expected a positive integer"),
        ("steps=-1", "steps=-1: expected a positive integer"),
        ("lr=nan", "lr=nan: expected a finite number > 0"),
        ("lr=0", "lr=0.0: expected a finite number > 0"),
        ("lr=1e39", "lr=1e+39: expected a finite number > 0 that float32 holds"),  # Adam failed
        ("adapter_heads=3", "adapter_dim=4 is not divisible by adapter_heads=3"),
        ("clip_model=ViT-B-16", "clip_model='ViT-B-16' is a ViT (all its maps at stride 16)"),
        ("clip_model=RN42", "unknown CLIP model 'RN42'"),
        ("task=bogus", "--set task=bogus contradicts `train sam2clip`"),
        ("task=clip2sam", "--set task=clip2sam contradicts `train sam2clip`"),
        ("warmup_steps=1000", "warmup_steps=1000 leaves no step of steps=1000 at the full"),
        ("lr_schedule=linear", "lr_schedule='linear': expected one of cosine, step"),
        ("min_lr_ratio=2", "min_lr_ratio=2.0: expected a number in [0, 1]"),
        ("keep_checkpoints=-1", "keep_checkpoints=-1: expected an integer >= 0"),
        ("seed=18446744073709551616", "seed=18446744073709551616: expected an integer <= 1844"),
        ("out=elsewhere", "--set out=...: give the run's out with --out"),
        ("data=elsewhere", "--set data=...: give the run's data with --data"),
    ],
)
def test_bad_settings_are_refused_before_training(
    train: Train, tmp_path: Path, setting: str, message: str
) -> None:
    code, _, err = train(*TINY, setting)
    assert code == 2 and message in one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_resume_keeps_the_run_and_refuses_other_settings(train: Train, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(*TINY, "steps=3")[0] == 0
    saved = (run / "config.json").read_text()
    code, _, err = train("adapter_dim=8", "adapter_heads=2")
    assert code == 2 and "adapter_dim (4 -> 8)" in one_line_error(err) and "new --out" in err
    code, _, err = train(task="clip2sam", extra=("--annotations", str(tmp_path / "a.json")))
    assert code == 2 and "task ('sam2clip' -> 'clip2sam')" in one_line_error(err)
    assert (run / "config.json").read_text() == saved  # refused runs change nothing
    code, out, err = train()
    assert (code, err) == (0, "")
    assert out == f"{run} already finished at step 3; raise --set steps=N to go on\n"
    assert train("steps=5", "log_every=2")[0] == 0  # safe to change on resume
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 5
    assert json.loads((run / "config.json").read_text())["steps"] == 5


@pytest.mark.parametrize(("stop_after", "kept"), [(3, 2), (1, 0)], ids=["checkpoint", "none"])
def test_a_resumed_run_logs_each_step_once_with_the_values_it_kept(
    train: Train,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    event_files: list[EventFile],
    stop_after: int,
    kept: int,
) -> None:
    run = tmp_path / "run"
    assert train(*TINY, "steps=4", extra=("--stop-after", str(stop_after)))[0] == 0
    interrupted = {row["step"]: row["loss"] for row in log_rows(run)}
    assert sorted(interrupted) == list(range(1, stop_after + 1))
    monkeypatch.setattr(TinyTask, "offset", 100.0)  # the resumed process logs other values
    assert train()[0] == 0  # resumes from step ``kept`` (its last checkpoint)
    rows = log_rows(run)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        if row["step"] <= kept:  # the checkpointed state is the interrupted process's
            assert row["loss"] == interrupted[row["step"]]
        else:  # replayed or new: the resumed process's
            assert row["loss"] >= 100
            if row["step"] in interrupted:  # a replay is exact: only the offset differs
                assert row["loss"] == pytest.approx(interrupted[row["step"]] + 100)
    for tag in ("loss", "lr", "seconds"):
        assert tensorboard_view(event_files, tag) == [(row["step"], row[tag]) for row in rows]
    assert [file.purge_step for file in event_files] == [1, kept + 1]
    assert all(file.closed and file.log_dir == str(run / "tb") for file in event_files)


def test_a_log_row_without_its_newline_is_kept_apart(train: Train, tmp_path: Path) -> None:
    log = tmp_path / "run" / "log.jsonl"
    assert train(*TINY, "steps=4", extra=("--stop-after", "2"))[0] == 0  # checkpoint: 2
    log.write_text(log.read_text().rstrip("\n"))  # interrupted between a row and its newline
    assert train()[0] == 0
    assert [row["step"] for row in log_rows(tmp_path / "run")] == [1, 2, 3, 4]


def test_a_checkpoint_that_does_not_fit_is_a_checkpoint_error(train: Train, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(*TINY, "steps=2")[0] == 0
    edited = json.loads((run / "config.json").read_text()) | {"adapter_depth": 2}
    (run / "config.json").write_text(json.dumps(edited))  # by hand: no longer the run's
    code, _, err = train("steps=4")
    assert code == 2
    assert f"{run / 'checkpoints' / 'step_2.pt'} does not fit Sequential" in one_line_error(err)
    assert "2 missing keys: 1.bias, 1.weight" in err
    assert json.loads((run / "config.json").read_text()) == edited  # not overwritten


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda ckpt: (ckpt / "latest.json").write_text("{not json"), "latest.json is damaged"),
        (lambda ckpt: (ckpt / "step_2.pt").unlink(), "step_2.pt, which does not exist"),
        (
            lambda ckpt: (ckpt / "step_2.pt").write_bytes((ckpt / "step_2.pt").read_bytes()[:300]),
            "step_2.pt: RuntimeError: PytorchStreamReader failed reading zip archive",
        ),
        (
            lambda ckpt: torch.save({"step": 2, "model": Path("x")}, ckpt / "step_2.pt"),
            "it pickles Python objects besides tensors",  # not torch's weights_only=False advice
        ),
        (
            lambda ckpt: torch.save({"step": 2}, ckpt / "step_2.pt"),
            "step_2.pt: not a training checkpoint (KeyError: 'model')",
        ),
        (  # e.g. a teacher_features file copied by mistake: was a raw IndexError
            lambda ckpt: torch.save(torch.zeros(2, 4, 4), ckpt / "step_2.pt"),
            "step_2.pt: not a training checkpoint (TypeError: it holds a Tensor, not a dict)",
        ),
    ],
    ids=[
        "corrupt-pointer",
        "missing-checkpoint",
        "truncated",
        "pickled-object",
        "no-weights",
        "a-tensor",
    ],  # fmt: skip
)
def test_damaged_run_state_is_a_one_line_error(
    train: Train, tmp_path: Path, damage: Callable[[Path], object], message: str
) -> None:
    assert train(*TINY, "steps=2")[0] == 0
    damage(tmp_path / "run" / "checkpoints")
    code, _, err = train("steps=4")
    assert code == 2 and message in one_line_error(err)
    assert str(tmp_path / "run" / "checkpoints") in err and "weights_only=False" not in err


def test_check_resume_compares_paths_by_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    saved = TrainConfig(annotations="a.json", out="run")
    here = TrainConfig(annotations=str(tmp_path / "a.json"), out="elsewhere")
    check_resume(saved, here, tmp_path)
    with pytest.raises(InputError, match=r"annotations \('a.json' -> 'b.json'\); lr"):
        check_resume(saved, TrainConfig(annotations="b.json", lr=1.0, out="run"), tmp_path)


def test_absolute_paths_keep_registered_names_and_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    named = absolute_paths(
        TrainConfig(data="images", teacher_checkpoint="sam_vit_h_4b8939", clip_weights="openai")
    )
    assert named.data == str(tmp_path / "images")
    assert (named.teacher_checkpoint, named.clip_weights) == ("sam_vit_h_4b8939", "openai")
    files = absolute_paths(
        TrainConfig(data="images", teacher_checkpoint="t.pt", clip_weights="w/clip.pt")
    )
    assert files.teacher_checkpoint == str(tmp_path / "t.pt")
    assert files.clip_weights == str(tmp_path / "w" / "clip.pt")


def test_vocabulary_files_are_made_absolute_and_compared_as_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative vocabulary file named another file (or none) when the run was resumed or
    exported from another directory; built-in names and ``dataset`` stay names."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "classes.txt").write_text("person\ncar\n")
    (tmp_path / "coco").write_text("not the built-in\n")
    config = absolute_paths(
        TrainConfig(task="clip2sam", vocabulary="classes.txt", supervised_vocabulary="coco")
    )
    assert (config.vocabulary, config.supervised_vocabulary) == (
        str(tmp_path / "classes.txt"),
        "coco",
    )
    assert absolute_paths(TrainConfig(vocabulary="dataset")).vocabulary == "dataset"
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    check_resume(config, replace(config, vocabulary="../classes.txt"), tmp_path)
    (tmp_path / "sub" / "classes.txt").write_text("car\nperson\ncat\n")
    with pytest.raises(InputError, match=r"vocabulary \('/.*/classes.txt' -> 'classes.txt'\)"):
        check_resume(config, replace(config, vocabulary="classes.txt"), tmp_path)


def test_a_resumed_run_keeps_its_paths_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("ovsam.train.sam2clip_task.Sam2ClipTask", TinyTask)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    sets = [f"--set={s}" for s in (*TINY, "steps=2")]
    cpu = ["--device", "cpu"]  # TinyTask's inputs are CPU tensors
    assert main(["train", "sam2clip", "--data", "images", "--out", "run", *cpu, *sets]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["data"], saved["out"]) == (str(tmp_path / "images"), str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    argv = ["train", "sam2clip", "--data", "../images", "--out", "../run", *cpu, "--set=steps=3"]
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"] == 3


def test_fewer_steps_than_done_are_refused_and_the_config_kept(
    train: Train, tmp_path: Path
) -> None:
    assert train(*TINY, "steps=4")[0] == 0
    saved = (tmp_path / "run" / "config.json").read_text()
    code, _, err = train("steps=3")
    assert code == 2 and "already at step 4: steps=3" in one_line_error(err)
    assert (tmp_path / "run" / "config.json").read_text() == saved


def test_the_logged_lr_is_the_one_the_step_used(train: Train, tmp_path: Path) -> None:
    """sam2clip's official schedule: warm-up from 0.001 x lr, times a cosine to 0.01 x lr."""
    assert train(*TINY, "steps=4", "lr=0.1", "warmup_steps=1")[0] == 0
    rows = log_rows(tmp_path / "run")
    cosine = [0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert [row["lr"] for row in rows] == pytest.approx([1e-4, *(0.1 * c for c in cosine[1:])])


def test_config_json_records_versions_and_world_size(train: Train, tmp_path: Path) -> None:
    import ovsam

    assert train(*TINY, "steps=2")[0] == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["environment"] == {
        "ovsam": ovsam.__version__,
        "torch": torch.__version__,
        "world_size": 1,
    }
    assert train("steps=3")[0] == 0  # informational: a resume reads the config back


def test_clip2sam_says_once_that_its_clip_is_random(train: Train, tmp_path: Path) -> None:
    annotations = ("--annotations", str(tmp_path / "a.json"))
    code, _, err = train(*TINY, "steps=1", "random_clip=true", task="clip2sam", extra=annotations)
    assert code == 0 and err.count("random_clip=true (testing mode)") == 1


def test_a_loss_gone_nan_stops_before_the_weights_change(
    train: Train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optimizer step on NaN would put NaN into every later checkpoint."""

    class DivergingTask(TinyTask):
        calls = 0

        def loss(self, module: nn.Module, items: list[int], rng: np.random.Generator) -> dict:
            DivergingTask.calls += 1
            losses = super().loss(module, items, rng)
            return {"loss": losses["loss"] * (math.nan if DivergingTask.calls >= 3 else 1.0)}

    monkeypatch.setattr("ovsam.train.sam2clip_task.Sam2ClipTask", DivergingTask)
    run = tmp_path / "run"
    code, _, err = train(*TINY, "steps=4", "lr=0.5")
    assert code == 2
    last = err.splitlines()[-1]  # after the progress bar
    assert last == (
        f"ovsam train: error: step 3: loss = nan; stopped before this step's update. {run} "
        "keeps its checkpoints (the last at step 2; later steps are not saved), and a re-run "
        "would likely diverge again: start a new --out with a lower learning rate (--set lr=0.05)"
    )
    assert [row["step"] for row in log_rows(run)] == [1, 2]
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    monkeypatch.setattr("ovsam.train.sam2clip_task.Sam2ClipTask", TinyTask)
    assert train()[0] == 0  # resumes from the finite step-2 checkpoint
    assert [row["step"] for row in log_rows(run)] == [1, 2, 3, 4]
    assert all(math.isfinite(row["loss"]) for row in log_rows(run))


@pytest.mark.parametrize("clip", ["5", "0"])
def test_a_gradient_gone_nan_under_a_finite_loss_stops_too(
    train: Train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip: str
) -> None:
    """sqrt at 0 gives a loss of 0 and a NaN gradient: the update would put NaN in the weights."""

    class NanGradientTask(TinyTask):
        def loss(self, module: nn.Module, items: list[int], rng: np.random.Generator) -> dict:
            losses = super().loss(module, items, rng)
            zero = sum(p.sum() for p in module.parameters()) * 0.0
            return {"loss": losses["loss"] + torch.sqrt(zero)}

    monkeypatch.setattr("ovsam.train.sam2clip_task.Sam2ClipTask", NanGradientTask)
    code, _, err = train(*TINY, "steps=2", f"grad_clip={clip}")
    assert code == 2
    assert err.splitlines()[-1].startswith(
        "ovsam train: error: step 1: gradient norm = nan; stopped before this step's update."
    )
    assert not (tmp_path / "run" / "checkpoints" / "latest.json").exists()
