"""The in-process ``ovsam train`` harness of the training tests: a tiny stand-in task (a stack of
``adapter_depth`` linear layers of width ``adapter_dim``) under the real CLI, engine, config
checks and checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ovsam.cli.main import main
from ovsam.train.config import TrainConfig

Train = Callable[..., tuple[int, str, str]]
TINY = [
    "warmup_steps=0",
    "adapter_dim=4",
    "adapter_heads=2",
    "adapter_depth=1",
    "log_every=1",
    "checkpoint_every=2",
]


class TinyTask:
    """Stands in for both tasks: ``loss`` is the squared output on random inputs, plus ``offset``
    (a constant: it changes the logged values, not the training)."""

    num_items = 4
    offset = 0.0

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        torch.manual_seed(config.seed)
        width = config.adapter_dim
        self.trainable = nn.Sequential(
            *[nn.Linear(width, width) for _ in range(config.adapter_depth)]
        )

    def loss(
        self, module: nn.Module, items: list[int], rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(rng.standard_normal((len(items), 4))).float()
        return {"loss": module(x).pow(2).mean() + self.offset}


def log_rows(run: Path) -> list[dict[str, float]]:
    """The rows of ``run``'s ``log.jsonl``."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def make_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Train:
    """``train(*sets, task=..., extra=[...]) -> (exit status, stdout, stderr)`` on
    ``tmp_path/run``."""
    monkeypatch.setattr("ovsam.train.sam2clip_task.Sam2ClipTask", TinyTask)
    monkeypatch.setattr("ovsam.train.clip2sam_task.Clip2SamTask", TinyTask)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def run(
        *sets: str, task: str = "sam2clip", extra: tuple[str, ...] = ()
    ) -> tuple[int, str, str]:
        capsys.readouterr()
        argv = ["train", task, "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run")]
        argv += ["--device", "cpu", *extra, *[f"--set={s}" for s in sets]]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture()
def train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Train:
    """:func:`make_train` on the test's ``tmp_path`` (a test module that lists this one in
    ``pytest_plugins`` gets it)."""
    return make_train(tmp_path, monkeypatch, capsys)


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("ovsam train: error: "), err
    return err
