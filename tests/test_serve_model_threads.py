"""Model threads: a call's turn, and work dropped for clients that hung up meanwhile."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

pytest.importorskip("fastapi")

from ovsam.serve.http_errors import ApiError  # noqa: E402
from ovsam.serve.model_threads import WATCH_S, ModelThreads  # noqa: E402


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


def test_watched_work_learns_that_its_client_hung_up_while_it_runs() -> None:
    """A text-bank build for a client that had hung up could not know it and ran to the end."""
    threads, hung_up_at = ModelThreads(threads=1), [float("inf")]

    def work(seconds: float, wanted: object) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not wanted():  # type: ignore[operator]
                return "stopped"
            time.sleep(0.01)
        return "done"

    async def gone() -> bool:
        return time.monotonic() >= hung_up_at[0]

    async def main() -> tuple[str, str, str]:
        unwatched = await threads.run_watched(work, 0.2)  # no gone(): always wanted
        kept = await threads.run_watched(work, 0.2, gone=gone)
        hung_up_at[0] = time.monotonic() + 0.3
        return unwatched, kept, await threads.run_watched(work, 30.0, gone=gone)

    start = time.monotonic()
    assert anyio.run(main) == ("done", "done", "stopped")
    assert time.monotonic() - start < 0.4 + 0.3 + WATCH_S + 2


def test_an_error_of_watched_work_is_raised_as_itself() -> None:
    """Raised inside the watcher's task group, it came out as an ExceptionGroup: a 500."""
    threads = ModelThreads(threads=1)

    def work(wanted: object) -> None:
        raise ApiError(400, "invalid_input", "a bad name")

    async def still_here() -> bool:
        return False

    with pytest.raises(ApiError, match="a bad name"):
        anyio.run(lambda: threads.run_watched(work, gone=still_here))
