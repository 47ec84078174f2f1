"""What a crash cannot undo: checkpoints are fsynced, and their folder too, before older ones are
deleted; teacher-feature cache files are fsynced, and a damaged one is recomputed with a warning
naming it rather than stopping every restart."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.data.instances import ImageFolder
from ovsam.train.config import TrainConfig
from ovsam.train.sam2clip_task import Sam2ClipTask, teacher_fingerprint
from ovsam.transforms import ResizeLongestSide
from train_harness import TINY, Train

pytest_plugins = ("train_harness",)

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")


@pytest.fixture()
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """``("fsync", path)`` and ``("unlink", path)`` of this process, in order."""
    events: list[tuple[str, str]] = []
    fsync, unlink = os.fsync, Path.unlink

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_unlink(path: Path, missing_ok: bool = False) -> None:
        events.append(("unlink", str(path)))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(Path, "unlink", recording_unlink)
    return events


def _synced_file(events: list[tuple[str, str]], folder: Path, name: str) -> int:
    """Index of the fsync of ``name``'s temporary file in ``folder`` (``.NAME.*.tmp``)."""
    return next(
        i
        for i, (kind, path) in enumerate(events)
        if kind == "fsync"
        and Path(path).parent == folder
        and Path(path).name.startswith(f".{name}.")
    )


def test_checkpoints_are_on_disk_before_older_ones_are_deleted(
    train: Train, tmp_path: Path, disk_events: list[tuple[str, str]]
) -> None:
    assert train(*TINY, "steps=2", "checkpoint_every=1", "keep_checkpoints=1")[0] == 0
    folder = (tmp_path / "run" / "checkpoints").resolve()
    assert sorted(p.name for p in folder.glob("step_*.pt")) == ["step_2.pt"]
    written = _synced_file(disk_events, folder, "step_2.pt")
    pointed = _synced_file(disk_events[written:], folder, "latest.json") + written
    folder_synced = disk_events.index(("fsync", str(folder)), pointed)
    assert disk_events.index(("unlink", str(folder / "step_1.pt"))) > folder_synced


class CountingTeacher(torch.nn.Module):
    """Teacher stand-in: ``image_encoder`` gives a fixed ``1x2x4x4`` target and counts calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x / 255

    def image_encoder(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.arange(32.0).reshape(1, 2, 4, 4)


def test_a_damaged_teacher_cache_file_is_recomputed_and_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], disk_events: list[tuple[str, str]]
) -> None:
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    task = Sam2ClipTask.__new__(Sam2ClipTask)  # the real caching, around a stand-in teacher
    task.config, task.device = TrainConfig(cache_teacher=True), torch.device("cpu")
    task.images, task.teacher = ImageFolder(tmp_path / "images"), CountingTeacher()
    task.transform, task.cache = ResizeLongestSide(16), tmp_path / "cache"
    task.teacher_key = b"teacher"
    expected = torch.arange(32.0).reshape(1, 2, 4, 4)
    path = task._cached_target(0)
    assert torch.equal(task.inputs(0)[1], expected) and task.teacher.calls == 1
    _synced_file(disk_events, path.parent.resolve(), path.name)  # written with an fsync
    for calls, damage in enumerate((b"", b"PK\x03\x04 cut short", path.read_bytes()[:100]), 2):
        path.write_bytes(damage)
        assert torch.equal(task.inputs(0)[1], expected) and task.teacher.calls == calls
        err = capsys.readouterr().err
        assert err.startswith("warning: damaged teacher-feature cache: ") and str(path) in err
        assert err.rstrip().endswith("; recomputing it") and err.count("\n") == 1
        assert torch.equal(torch.load(path, weights_only=True), expected)  # rewritten
    assert torch.equal(task.inputs(0)[1], expected) and task.teacher.calls == 4  # read back
    assert capsys.readouterr().err == ""


def test_teacher_targets_are_cached_per_teacher_and_for_any_file_name(tmp_path: Path) -> None:
    """The cache was keyed on the image alone: a run restarted with another teacher (allowed
    before its first checkpoint) distilled the old teacher's targets; a file name that is
    not UTF-8 stopped the run with a raw UnicodeEncodeError."""
    (tmp_path / "images").mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / name)
    task = Sam2ClipTask.__new__(Sam2ClipTask)
    task.images, task.cache = ImageFolder(tmp_path / "images"), tmp_path / "cache"
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    paths = []
    for teacher in (first, second, first):
        task.teacher_key = teacher_fingerprint(teacher)
        paths.append(task._cached_target(0))
    assert paths[0] == paths[2] != paths[1]


def test_a_checkpoint_write_that_a_kill_cut_short_leaves_no_file_behind(
    train: Train, tmp_path: Path
) -> None:
    """atomic_path removes its temporary file in a ``finally`` that SIGKILL never reaches: each
    kill while saving left a checkpoint-sized ``.step_N.pt.XXXXXXXX.tmp`` for good."""
    assert train(*TINY, "steps=6", extra=("--stop-after", "2"))[0] == 0
    folder = tmp_path / "run" / "checkpoints"
    (folder / ".step_4.pt.c0142uug.tmp").write_bytes(b"half a checkpoint")
    (folder / ".latest.json.x1y2z3w4.tmp").write_bytes(b"{")
    assert train(*TINY, "steps=6")[0] == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["latest.json", "step_2.pt", "step_4.pt", "step_6.pt"]
