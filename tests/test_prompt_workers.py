"""Parallel prompt workers: same results as a serial loop, caller's thread count and modes kept."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from ovsam.modeling.prompt_workers import map_prompt_chunks, prompt_workers


def _thread_and_modes(rows: slice) -> tuple[str, int, bool, bool, int]:
    return (
        threading.current_thread().name,
        rows.start,
        torch.is_inference_mode_enabled(),
        torch.is_grad_enabled(),
        torch.get_num_threads(),
    )


def test_chunks_run_on_single_threaded_workers_in_order() -> None:
    threads = torch.get_num_threads()
    chunks = [slice(i, i + 1) for i in range(6)]
    with torch.inference_mode():
        results = map_prompt_chunks(_thread_and_modes, chunks, workers=2)
    assert [r[1] for r in results] == list(range(6))
    assert all(r[0].startswith("ovsam-prompts") for r in results)
    assert all(r[2] and not r[3] and r[4] == 1 for r in results)
    assert torch.get_num_threads() == threads


def test_a_worker_that_has_not_computed_yet_stays_single_threaded() -> None:
    """ATen sets a thread's intra-op count on its first torch call, from the process-wide
    count: a worker that ran no torch op in its first map (the caller restores that count
    after every map) must still compute with one thread later, not the caller's count."""
    workers = 5  # a pool of its own: its threads are new
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        started = threading.Barrier(workers, timeout=10)
        map_prompt_chunks(lambda rows: started.wait(), [slice(0, 1)] * workers, workers)
        counts = map_prompt_chunks(_thread_and_modes, [slice(0, 1)] * workers, workers)
    finally:
        torch.set_num_threads(threads)
    assert [c[4] for c in counts] == [1] * workers


@pytest.mark.parametrize("grad", [True, False])
def test_workers_take_the_callers_grad_mode(grad: bool) -> None:
    with torch.set_grad_enabled(grad):
        results = map_prompt_chunks(_thread_and_modes, [slice(0, 1), slice(1, 2)], workers=2)
    assert [(r[2], r[3]) for r in results] == [(False, grad)] * 2


def test_serial_when_one_worker_or_one_chunk() -> None:
    here = threading.current_thread().name
    assert map_prompt_chunks(_thread_and_modes, [slice(0, 1), slice(1, 2)], 1)[0][0] == here
    assert map_prompt_chunks(_thread_and_modes, [slice(0, 1)], 4)[0][0] == here


def test_worker_count_follows_device_and_nesting() -> None:
    assert prompt_workers(torch.device("cpu")) == torch.get_num_threads()
    assert prompt_workers(torch.device("cuda")) == 1
    nested = map_prompt_chunks(
        lambda rows: prompt_workers(torch.device("cpu")), [slice(0, 1), slice(1, 2)], 2
    )
    assert nested == [1, 1]


def test_parallel_cached_decode_equals_serial_bit_for_bit(
    mobilesam_model: torch.nn.Module,
) -> None:
    decoder, prompt_encoder = mobilesam_model.mask_decoder, mobilesam_model.prompt_encoder
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(7, 2, 2, generator=generator) * 1024
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        embedding = torch.randn(1, 256, 64, 64, generator=generator)
        cache = decoder.build_image_cache(
            embedding, prompt_encoder.get_dense_pe(), prompt_encoder.no_mask_dense()
        )
        sparse, _ = prompt_encoder(points=None, boxes=boxes, masks=None)
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
        args = (cache, tokens, sparse, [0, 2, 3, 4], [1, 2, 3])
        torch.set_num_threads(2)
        parallel = decoder.decode_cached(*args)  # 4 chunks of 2 prompts on 2 workers
        torch.set_num_threads(1)
        try:
            serial = decoder.decode_cached(*args)  # the same chunks, one after another
        finally:
            torch.set_num_threads(threads)
    assert parallel[1].shape == (7, 3, 256, 256)
    assert torch.equal(parallel[0], serial[0]) and torch.equal(parallel[1], serial[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_workers_start_afresh_in_a_forked_child() -> None:
    """After fork the parent's worker threads are gone; the child must not wait on them."""
    both = threading.Barrier(2, timeout=10)  # the parent's pool starts both of its threads
    map_prompt_chunks(lambda rows: both.wait(), [slice(0, 1), slice(1, 2)], 2)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: decode on fresh workers, report, exit without pytest's cleanup
        signal.alarm(30)  # a hang on the parent's dead workers ends the child instead
        try:
            names = [r[0] for r in map_prompt_chunks(_thread_and_modes, [slice(0, 1)] * 2, 2)]
            os.write(write, b"ok" if all(n.startswith("ovsam-prompts") for n in names) else b"no")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok" and status == 0
