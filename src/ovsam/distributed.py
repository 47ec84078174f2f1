"""``torchrun`` integration: process-group set-up from the launcher's environment.

``torchrun --nproc_per_node N`` (or a multi-node rendezvous) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` joins the group
(NCCL on GPU, gloo on CPU) when ``WORLD_SIZE > 1`` and is a no-op in a plain process; each
process runs on the device :func:`process_device` picks from ``--device``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ovsam.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_device(device: str, world: int, local_rank: int) -> torch.device:
    """The device this process trains or evaluates on, from ``--device``.

    ``auto``: CUDA when available, else the CPU. In a single process ``cuda:N`` is GPU N and
    ``cuda`` GPU 0; under ``torchrun`` (``world > 1``) each process uses GPU
    ``LOCAL_RANK``, so an explicit index (the same for every process) is refused. Devices other
    than ``cpu`` and ``cuda[:N]`` are refused: the process groups are gloo on CPU and NCCL on
    CUDA. Errors are :class:`~ovsam.errors.InputError` naming the device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise InputError(
            f"--device {device}: unknown device (expected cpu, cuda or cuda:N)"
        ) from exc
    if chosen.type not in ("cpu", "cuda"):
        raise InputError(
            f"--device {device}: only cpu and cuda[:N] are supported here (process groups run "
            "on gloo or NCCL); use --device cpu"
        )
    if chosen.type == "cpu":
        return torch.device("cpu")
    if world > 1:
        if chosen.index is not None:
            raise InputError(
                f"--device {device} under torchrun: each process uses GPU LOCAL_RANK; pass "
                "--device cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise InputError(
                f"--device {device} under torchrun: process LOCAL_RANK={local_rank} has no GPU "
                f"of its own ({count} visible): start at most {count} processes per node "
                "(--nproc_per_node)"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cuda", 0 if chosen.index is None else chosen.index)


def _env_count(name: str) -> int:
    """The non-negative integer in environment variable ``name`` (0 when unset)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise InputError(f"{name}={value!r} is not a process count or index (torchrun sets it)")
    return int(value)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if there is one; pick this rank's device
    (:func:`process_device`)."""
    world, rank, local_rank = (_env_count(n) for n in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    world = max(world, 1)
    chosen = process_device(device, world, local_rank)
    if world > 1:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            raise InputError(
                f"WORLD_SIZE={world} but {' and '.join(missing)} not set: start the processes "
                "with torchrun (or unset WORLD_SIZE for one process)"
            )
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, chosen)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
