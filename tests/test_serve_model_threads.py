"""Model threads: a call's turn, and work dropped for clients that hung up meanwhile."""

from __future__ import annotations

import threading

import anyio
import pytest

pytest.importorskip("fastapi")

from ovsam.serve.http_errors import ApiError  # noqa: E402
from ovsam.serve.model_threads import ModelThreads  # noqa: E402


def test_queued_work_of_a_client_that_hung_up_is_dropped_at_its_turn() -> None:
    """72 abandoned uploads were all embedded, one by one, before anyone else's."""
    threads, release, ran = ModelThreads(threads=1), threading.Event(), []

    def work(name: str) -> str:
        if name == "first":
            release.wait(10)
        ran.append(name)
        return name

    async def hung_up() -> bool:
        return True

    async def still_here() -> bool:
        return False

    async def main() -> list[object]:
        answers: list[object] = []

        async def call(name: str, gone: object) -> None:
            try:
                answers.append(await threads.run(work, name, gone=gone))
            except ApiError as exc:
                answers.append((exc.status, exc.code))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "first", still_here)
            await anyio.sleep(0.1)  # "first" holds the only thread
            tasks.start_soon(call, "abandoned", hung_up)
            tasks.start_soon(call, "waiting", still_here)
            await anyio.sleep(0.1)
            release.set()
        return answers

    answers = anyio.run(main)
    assert ran == ["first", "waiting"]
    assert sorted(map(str, answers)) == sorted(["first", "(499, 'client_gone')", "waiting"])
