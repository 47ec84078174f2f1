"""A run's logs: ``log.jsonl`` (one JSON row per logged step) and, when ``tensorboard`` is
installed, TensorBoard events under ``tb/``; written by rank 0 only.

Each step is logged once, with the values of the process whose state the run kept: a resumed
process first drops the rows an interrupted one logged after its last checkpoint, and purges
those TensorBoard events through its writer's ``purge_step`` (:meth:`RunLog.rewind`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from ovsam.fileio import atomic_write_bytes


class ScalarWriter(Protocol):
    """The part of ``torch.utils.tensorboard.SummaryWriter`` the engine uses."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        """Record ``scalar_value`` of ``tag`` at ``global_step``."""

    def close(self) -> None:
        """Flush pending events to disk and close the event file."""


class RunLog:
    """The logs of the run in ``run_dir``, as this process writes them (``is_main``: rank 0;
    the other ranks write nothing)."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.run_dir, self.is_main = run_dir, is_main
        self._logged_from = 1  # first step this process may log; earlier steps' logs are kept
        self._writer: ScalarWriter | None = None
        self._no_tensorboard = False

    def write(self, row: dict[str, float]) -> None:
        """Append ``row`` (its ``step`` and values) to ``log.jsonl`` and TensorBoard."""
        if not self.is_main:
            return
        with (self.run_dir / "log.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in row.items():
                if key != "step":
                    writer.add_scalar(key, value, int(row["step"]))

    def _tensorboard(self) -> ScalarWriter | None:
        """The run's TensorBoard writer (``tb/``), opened on first use; ``None`` without
        ``tensorboard``. Its ``purge_step`` makes TensorBoard discard the events of earlier event
        files from ``self._logged_from`` on: those steps are trained and logged again now."""
        if self._writer is None and not self._no_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is the optional [train] extra
                self._no_tensorboard = True
                return None
            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._logged_from)
        return self._writer

    def close(self) -> None:
        """Flush and close the TensorBoard writer (its queued events are lost otherwise)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def rewind(self, step: int) -> None:
        """Forget what earlier processes logged after ``step`` (the steps after it are about to
        be trained again): drop those ``log.jsonl`` rows now, and purge those TensorBoard events
        from the writer this process opens. The rows up to ``step`` are kept: that state is
        theirs."""
        self._logged_from = step + 1
        path = self.run_dir / "log.jsonl"
        if not self.is_main or not path.is_file():
            return
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a row cut short by an interruption
                continue
        if len(kept) < len(lines) or not text.endswith("\n"):  # an append starts a new line
            atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
