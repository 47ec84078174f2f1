"""Decode independent chunks of prompts on parallel single-threaded CPU workers.

One prompt's cached decode is a chain of a few hundred mostly small ops: intra-op threads
speed it up little (about 1.2x from one to two threads on the 2-core CI machine), while
independent prompts scale almost linearly. :func:`map_prompt_chunks` therefore runs the
chunks of a batch on ``torch.get_num_threads()`` worker threads with one intra-op thread each
(about 1.6x the throughput of one two-thread loop there; ``benchmarks/bench_mobilesam.py``).
Each chunk's arithmetic is unchanged, so results equal a serial loop bit for bit. Set
``torch.set_num_threads(1)`` to decode serially. The first parallel map also keeps freed
memory mapped for the next chunk (:func:`ovsam.cpu_allocator.keep_freed_memory`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from ovsam.cpu_allocator import keep_freed_memory

Result = TypeVar("Result")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_worker = threading.local()


def _forget_pools_after_fork() -> None:
    """A forked child has none of the parent's threads: start its pools afresh."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _start_worker() -> None:
    """Pool initializer: this worker thread computes with one intra-op thread.

    ``get_num_threads`` first: a thread's first torch call sets its count from the
    process-wide one, which the caller restores after each map (:func:`map_prompt_chunks`),
    so a worker that computed nothing yet would otherwise take the caller's count then.
    """
    _worker.active = True
    torch.get_num_threads()
    torch.set_num_threads(1)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers`` threads (created on first use)."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(
                workers, thread_name_prefix="ovsam-prompts", initializer=_start_worker
            )
        return _pools[workers]


def prompt_workers(device: torch.device) -> int:
    """Chunks decoded at once on ``device``: ``torch.get_num_threads()`` on CPU, else 1.

    1 inside a worker (no nesting) and on accelerators (their kernels run asynchronously).
    """
    if device.type != "cpu" or getattr(_worker, "active", False):
        return 1
    return torch.get_num_threads()


def map_prompt_chunks(
    fn: Callable[[slice], Result], chunks: Sequence[slice], workers: int
) -> list[Result]:
    """``[fn(rows) for rows in chunks]``, spread over ``workers`` single-threaded workers.

    Runs serially when ``workers`` or ``len(chunks)`` is below 2. The workers take the
    caller's grad and inference modes (both are per thread); the caller's intra-op thread
    count is left as it was.
    """
    if workers < 2 or len(chunks) < 2:
        return [fn(rows) for rows in chunks]
    keep_freed_memory()
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(rows: slice) -> Result:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(rows)

    threads = torch.get_num_threads()
    try:
        return list(_pool(workers).map(run, chunks))  # threads start only as needed
    finally:
        # a new worker's set_num_threads(1) also lowers the count new threads start with
        torch.set_num_threads(threads)
