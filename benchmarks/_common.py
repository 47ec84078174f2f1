"""Helpers shared by the benchmark scripts: timing, device sync, load average, argument checks,
entry point.

The scripts run as ``.venv/bin/python benchmarks/NAME.py``, which puts this folder on
``sys.path``; they import this module as ``_common``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import NoReturn

import torch

from ovsam.cli.arg_types import int_in_range
from ovsam.errors import OVSamError


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: ``taskset``, a container's cpuset), which
    torch's default thread count follows; ``os.cpu_count()`` counts the host's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> str:
    """The 1-minute load average (other processes share these cores)."""
    return f"{os.getloadavg()[0]:.2f}"


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by :func:`synchronize`, so that timing it times the device's work."""

    def call() -> None:
        fn()
        synchronize(device)

    return call


def median_seconds(fn: Callable[[], object], runs: int, warmups: int = 1) -> float:
    """Median seconds of ``runs`` calls of ``fn`` after ``warmups`` untimed ones."""
    for _ in range(warmups):
        fn()
    return statistics.median(timed(fn) for _ in range(runs))


positive_int = int_in_range(1)
"""argparse type: an integer >= 1."""


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main`` and exit with its status; an error ovsam raises on purpose
    (:class:`~ovsam.errors.OVSamError`) is printed as ``SCRIPT: error: MESSAGE`` (exit 2)."""
    try:
        status = main() or 0
    except OVSamError as exc:
        print(f"{os.path.basename(sys.argv[0])}: error: {exc}", file=sys.stderr)
        status = 2
    raise SystemExit(status)
