"""The training loop shared by every task: DDP, accumulation, bf16, checkpoints, exact resume.

A *task* owns the frozen parts, the data and the loss; the engine owns the trainable module
(wrapped in ``DistributedDataParallel`` when ``torchrun`` started several processes), the
AdamW optimizer and schedule (:mod:`ovsam.train.schedule`), gradient accumulation and
clipping, bf16 autocast on GPU, logs (:mod:`ovsam.train.run_log`: ``log.jsonl`` and, when
``tensorboard`` is installed, ``tb/``), progress bars on rank 0 and checkpoints every ``checkpoint_every`` steps
(``checkpoints/step_N.pt`` written atomically and fsynced, ``latest.json`` pointing at the
newest; with ``keep_checkpoints`` only the newest are kept, deleted once the new ones are on disk).

A task may use fewer items than it was given (an image left without instances by its
augmentation): it says how many under :data:`USED_ITEMS`. A step's losses and gradient are then
the mean over the micro-batches (of all ranks) that used an item, and a step where none did is
skipped on every rank (no optimizer update; its step number and learning-rate schedule pass).

Resume is exact: a checkpoint holds the trainable weights, optimizer and scheduler state, the
step, the torch RNG state and what it was trained on (:mod:`ovsam.train.run_data`: a resume
on other data is refused);
data order and augmentation are pure functions of ``(seed, step, rank)``, so the steps
replayed after a restart see the same batches. After a resume every parameter group's
learning rate is the schedule's for the step about to be taken, under the current ``steps``
(raising ``steps`` re-shapes the whole schedule). What an
interrupted process logged after its last checkpoint is dropped (``log.jsonl`` rows trimmed,
TensorBoard events purged through the writer's ``purge_step``): each step is logged once, with
the values of the process whose state the run kept. A damaged or unfitting checkpoint is a
:class:`~ovsam.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ovsam.checkpoint import load_state_dict_strict, read_failure
from ovsam.distributed import DistInfo, barrier
from ovsam.errors import CheckpointError, InputError, TrainingDivergedError, first_line
from ovsam.fileio import atomic_write, atomic_write_json, fsync_directory
from ovsam.train.config import TrainConfig, save_config
from ovsam.train.run_data import check_same_data, data_record, require_items
from ovsam.train.run_log import RunLog
from ovsam.train.schedule import lr_factor, param_groups

#: key of a task's losses holding how many of the micro-batch's items the loss used (not a loss)
USED_ITEMS = "used_items"


class Task(Protocol):
    """What the engine trains: ``trainable`` (a module), ``num_items`` and ``loss``.

    ``loss`` calls ``module`` (DDP-wrapped under ``torchrun``) exactly once per micro-batch, on
    every rank, also when it has nothing to learn from: DDP reduces gradients once per forward.
    A task whose steps leave some trainable parameters without a gradient sets
    ``find_unused_parameters = True``: DDP then looks for them after each backward instead of
    waiting forever for their reduction (CLIP2SAM, whose regions each pool from one FPN level,
    instead ties every parameter into its loss with a zero term). Optional: ``data_rule`` and
    ``item_keys()``, which checkpoints record (:mod:`ovsam.train.run_data`), and
    ``start_run(resumed)``, called on rank 0 once the run's folder is the run's (its config
    saved) before the first step."""

    trainable: nn.Module
    num_items: int

    def loss(
        self, module: nn.Module, items: list[int], rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """Losses of one micro-batch (``items`` are dataset indices); key ``loss`` is optimised.
        Optionally :data:`USED_ITEMS`: how many of ``items`` it used (all of them without it).
        Every rank must return the same keys, in the same order."""


def batch_items(
    config: TrainConfig, step: int, micro: int, rank: int, world: int, num_items: int
) -> list[int]:
    """Dataset indices of one micro-batch: epoch-wise permutations seeded by ``config.seed``,
    shared by all ranks and split between them (a pure function of the arguments)."""
    per_step = config.batch_size * world
    start = ((step * config.grad_accum + micro) * per_step) + rank * config.batch_size
    out = []
    for position in range(start, start + config.batch_size):
        epoch, offset = divmod(position, num_items)
        out.append(int(epoch_order(config.seed, epoch, num_items)[offset]))
    return out


@functools.lru_cache(maxsize=2)  # a micro-batch spans at most two epochs
def epoch_order(seed: int, epoch: int, num_items: int) -> np.ndarray:
    """The order of the ``num_items`` dataset indices in ``epoch`` (read-only; computed once
    per epoch: seconds for SA-1B's 11M images, which every micro-batch had paid)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    order.flags.writeable = False
    return order


def latest_checkpoint(run_dir: Path, damaged_hint: str) -> Path | None:
    """The checkpoint ``run_dir/checkpoints/latest.json`` names (whether or not it exists), or
    None without that file; a damaged one is a :class:`CheckpointError` ending with
    ``damaged_hint`` (what the user can do)."""
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["file"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer} is damaged ({_first_line(exc)}); {damaged_hint}") from exc
    return pointer.parent / str(name)


def checkpoint_files(folder: Path) -> list[Path]:
    """The ``step_N.pt`` files in ``folder``, oldest step first."""
    steps = [(p.stem[5:], p) for p in folder.glob("step_*.pt")]
    return [p for _, p in sorted((int(n), p) for n, p in steps if n.isdigit())]


_POINTER_EXAMPLE = '{"file": "step_N.pt", "step": N}'


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


class Trainer:
    """Runs ``task`` under ``config`` in this process (one rank of a ``torchrun`` job)."""

    def __init__(self, config: TrainConfig, task: Task, info: DistInfo) -> None:
        self.config, self.task, self.info = config, task, info
        require_items(config, task.num_items)
        self.run_dir = Path(config.out)
        self.module = task.trainable.to(info.device)
        self.wrapped: nn.Module = self.module
        if info.world > 1:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(
                self.module,
                device_ids=ids,
                find_unused_parameters=bool(getattr(task, "find_unused_parameters", False)),
            )
        self.optimizer = torch.optim.AdamW(
            param_groups(self.module, config), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(config, s)
        )
        self.step = 0
        self.saved_step: int | None = None  # of the newest checkpoint, once there is one
        self.log = RunLog(self.run_dir, info.is_main)

    # ------------------------------------------------------------------ checkpoints
    def _latest(self) -> Path | None:
        path = latest_checkpoint(self.run_dir, f"fix it ({_POINTER_EXAMPLE}) or use a new --out")
        saved = checkpoint_files(self.run_dir / "checkpoints")
        if path is None and saved:  # a fresh start would overwrite them
            raise CheckpointError(
                f"{self.run_dir / 'checkpoints'} holds {', '.join(p.name for p in saved[-3:])} "
                f"but no latest.json: write one ({_POINTER_EXAMPLE}) to resume from a checkpoint, "
                "or use a new --out"
            )
        if path is not None and not path.is_file():
            raise CheckpointError(
                f"{path.parent / 'latest.json'} names {path}, which does not exist"
            )
        return path

    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / f"step_{self.step}.pt"
        if self.info.is_main:
            state = {
                "step": self.step,
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "data": data_record(self.task, self.info.world),
            }
            atomic_write(path, lambda fh: torch.save(state, fh))  # fsynced before the rename
            atomic_write_json(path.parent / "latest.json", {"file": path.name, "step": self.step})
            fsync_directory(path.parent)  # both renames on disk before older files go
            self._prune(path)
        barrier()
        self.saved_step = self.step
        return path

    def _prune(self, newest: Path) -> None:
        """Delete all but the newest ``keep_checkpoints`` checkpoints (0 keeps all), and the
        temporary files of writes that a killed process left (rank 0 alone writes here)."""
        for stale in newest.parent.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        keep = self.config.keep_checkpoints
        if keep < 1:
            return
        older = [p for p in checkpoint_files(newest.parent) if p != newest]
        for path in older[: max(0, len(older) - (keep - 1))]:
            path.unlink(missing_ok=True)

    def resume(self) -> Path | None:
        """Load the newest checkpoint of the run, if any; returns its path (None: none)."""
        path = self._latest()
        if path is None:
            return None
        remedy = "delete it and point latest.json at an older step_N.pt, or use a new --out"
        try:
            state = torch.load(path, map_location=self.info.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged file
            raise CheckpointError(f"{read_failure(path, exc)}; {remedy}") from exc
        try:
            if not isinstance(state, dict):  # e.g. a tensor: indexing it is no KeyError
                raise TypeError(f"it holds a {type(state).__name__}, not a dict")
            model, step, rng = state["model"], int(state["step"]), state["torch_rng"].cpu()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"cannot resume from {path}: not a training checkpoint ({_first_line(exc)}); "
                + remedy
            ) from exc
        check_same_data(state.get("data"), self.task, self.info.world, path)
        load_state_dict_strict(self.module, model, source=str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this run ({_first_line(exc)})"
            ) from exc
        torch.set_rng_state(rng)
        self.step = self.saved_step = step
        self._apply_schedule()
        return path

    def _check_ranks_resumed_alike(self) -> None:
        """Raise :class:`CheckpointError` on every rank when the ranks resumed from different
        steps: each reads the run's checkpoints itself, and an ``--out`` that is not one folder
        shared by all (node-local, or lagging) would have DDP average different models."""
        if self.info.world == 1:
            return
        steps = torch.tensor([self.step, -self.step], device=self.info.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        latest, earliest = int(steps[0]), -int(steps[1])
        if latest != earliest:
            raise CheckpointError(
                f"the ranks found different checkpoints in {self.run_dir} (from step {earliest} "
                f"to step {latest}; 0 = none): every rank must see --out as one shared folder"
            )

    def _apply_schedule(self) -> None:
        """Set every parameter group's learning rate to the schedule's for ``self.step`` (the
        one about to be taken) under this run's ``steps``: the rate the loaded optimizer holds
        was computed by the schedule of the process that saved it, with its ``steps``."""
        factor = lr_factor(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks (in one all-reduce; as they are in one process)."""
        if self.info.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.info.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    # ------------------------------------------------------------------ loop
    def _train_step(self, use_bf16: bool) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches), skipped when no micro-batch of
        any rank used an item; returns its row for the logs (``skipped`` 1 when skipped)."""
        config, start = self.config, time.perf_counter()
        totals: dict[str, float] = {}
        used_micro = 0  # micro-batches of this rank whose loss used an item
        for micro in range(config.grad_accum):
            items = batch_items(
                config, self.step, micro, self.info.rank, self.info.world, self.task.num_items
            )
            rng = np.random.default_rng([config.seed, self.step, micro, self.info.rank])
            last = micro == config.grad_accum - 1
            sync = nullcontext() if last or self.info.world == 1 else self.wrapped.no_sync()
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
            with sync, autocast:
                losses = self.task.loss(self.wrapped, items, rng)
                (losses["loss"] / config.grad_accum).backward()
            used_micro += float(losses.pop(USED_ITEMS, len(items))) > 0
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / config.grad_accum
        # the same on every rank: all stop, skip or step, or none
        *sums, used = self._sum_over_ranks([*totals.values(), float(used_micro)])
        means = {key: value / self.info.world for key, value in zip(totals, sums, strict=True)}
        planned = config.grad_accum * self.info.world
        if 0 < used < planned:  # means over the micro-batches that used an item
            means = {key: value * planned / used for key, value in means.items()}
            for p in self.module.parameters():
                if p.grad is not None:
                    p.grad.mul_(planned / used)
        self._check_finite(means)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses, not the next one's
        row = {"step": self.step + 1, **means, "lr": lr}
        if used:
            self._check_finite({"gradient norm": self._gradient_norm()})  # a finite loss can
            self.optimizer.step()  # still give NaN gradients (e.g. sqrt at 0)
        else:
            row["skipped"] = 1.0
            if self.info.is_main:
                tqdm.write(
                    f"step {self.step + 1}: no item of this step is left with a training target "
                    "(e.g. every instance cropped away): optimizer step skipped",
                    file=sys.stderr,
                )
        self._advance_schedule()  # after a skipped update too
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        row["seconds"] = time.perf_counter() - start
        return row

    def _advance_schedule(self) -> None:
        """Move the learning-rate schedule to the next step (also after a skipped update)."""
        with warnings.catch_warnings():  # a skipped first step has had no optimizer.step()
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
            self.scheduler.step()

    def _gradient_norm(self) -> float:
        """The gradient's total 2-norm (the same on every rank), after clipping it to
        ``grad_clip`` when that is set."""
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.config.grad_clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        norms = [torch.linalg.vector_norm(p.grad) for p in params]  # get_total_norm: torch>=2.6
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def _check_finite(self, losses: dict[str, float]) -> None:
        """Stop before an optimizer step on NaN or infinite ``losses`` (means over ranks): it
        would write NaN into the weights, and every later checkpoint would hold them."""
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            values = ", ".join(f"{k} = {v}" for k, v in bad.items())
            kept = "none yet" if self.saved_step is None else f"the last at step {self.saved_step}"
            raise TrainingDivergedError(
                f"step {self.step + 1}: {values}; stopped before this step's update. "
                f"{self.run_dir} keeps its checkpoints ({kept}; later steps are not saved), and "
                "a re-run would likely diverge again: start a new --out with a lower learning "
                f"rate (--set lr={self.config.lr / 10:g})"
            )

    def train(self, stop_after: int | None = None) -> list[dict[str, float]]:
        """Train to ``config.steps`` (resuming if possible); ``stop_after`` ends the process's
        work after that global step, as an interruption would. Returns the logged rows."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()  # before saving the config: a checkpoint that does not fit
        # changes nothing
        self._check_ranks_resumed_alike()
        if stop_after is not None and stop_after <= self.step < self.config.steps:
            raise InputError(
                f"--stop-after {stop_after}: {self.run_dir} is already at step {self.step}; "
                "give a later step, or leave it out to train on"
            )
        if self.step > self.config.steps:  # the config would no longer describe the checkpoints
            raise InputError(
                f"{self.run_dir} is already at step {self.step}: steps={self.config.steps} would "
                f"end it before that; use --set steps={self.step} or more, or a new --out"
            )
        start_run = getattr(self.task, "start_run", None)
        if self.info.is_main:
            save_config(self.config, self.run_dir, world_size=self.info.world)
            if start_run is not None:
                start_run(resumed is not None)
            if resumed is not None:  # a lowered keep_checkpoints applies now, not at a save
                self._prune(resumed)
        self.log.rewind(self.step)  # this step's successors are trained again
        config, rows = self.config, []
        use_bf16 = config.bf16 and self.info.device.type == "cuda"
        quiet = not self.info.is_main or self.step >= config.steps  # no bar for a finished run
        bar = tqdm(total=config.steps, initial=self.step, desc=config.task, disable=quiet)
        try:
            while self.step < config.steps:
                row = self._train_step(use_bf16)
                rows.append(row)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    self.log.write(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
                if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    self.save()
                if stop_after is not None and self.step >= stop_after:
                    break
        finally:
            bar.close()
            self.log.close()
        return rows
