"""Model-bound requests run on threads of their own, behind a bounded queue.

FastAPI runs plain ``def`` endpoints in one pool of 40 threads, and so does Starlette's file
serving. Uploads and prompts wait there for the one model: a burst of them held every thread,
and the web page, its script and the sample photo stalled behind them for as long as the model
took. Uploads and prompts therefore run on :data:`MODEL_THREADS` threads of their own (an
anyio ``CapacityLimiter``), leaving the shared pool to everything else; once
:data:`QUEUE_LIMIT` requests already wait for one of those threads, another is answered at
once with 503 ``busy`` and a ``Retry-After`` header rather than queued for minutes.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio import CapacityLimiter

from ovsam.serve.http_errors import ApiError

Result = TypeVar("Result")
Gone = Callable[[], Awaitable[bool]]
"""Whether a request's client has hung up (``Request.is_disconnected``)."""

MODEL_THREADS = 8
"""Uploads and prompts in progress at once (most of them wait for the model's lock)."""
BANK_THREADS = 2
"""Text banks built (or waited for) at once, on threads of their own: a prompt naming its
mask with a new vocabulary waits there, not on a model thread (several such prompts held
every model thread for the minutes a build takes on a CPU)."""
QUEUE_LIMIT = 64
"""Requests that may wait for a model thread; one more is refused with 503 ``busy``."""
RETRY_AFTER_S = 2
"""What the ``Retry-After`` header of a 503 ``busy`` asks a client to wait, in seconds."""
WATCH_S = 0.5
"""How often :meth:`ModelThreads.run_watched` asks whether a waiting client has hung up."""


class ModelThreads:
    """Runs model-bound work off the event loop on at most ``threads`` threads, refusing
    work when ``queue_limit`` calls already wait (see the module docstring); ``what`` names
    the work in the 503 message."""

    def __init__(
        self,
        threads: int = MODEL_THREADS,
        queue_limit: int = QUEUE_LIMIT,
        what: str = "uploads or prompts",
    ) -> None:
        self.threads, self.queue_limit, self.what = threads, queue_limit, what
        self._limiter: CapacityLimiter | None = None  # made on the server's event loop
        self._threads: CapacityLimiter | None = None  # never waited on: turns are _limiter's
        self._admitted = 0  # calls in progress or waiting; counted on the event loop

    def limiter(self) -> CapacityLimiter:
        """The limiter (made on first use, inside the running event loop)."""
        if self._limiter is None:
            self._limiter = CapacityLimiter(self.threads)
            self._threads = CapacityLimiter(self.threads)
        return self._limiter

    async def run(
        self,
        fn: Callable[..., Result],
        *args: object,
        gone: Gone | None = None,
    ) -> Result:
        """``fn(*args)`` on a model thread; :class:`ApiError` 503 ``busy`` if the queue is full.

        ``gone`` (e.g. ``Request.is_disconnected``) is asked when the call's turn comes: work
        for a client that has hung up meanwhile is dropped (499 ``client_gone``, which no one
        reads), not done for nobody while others wait behind it."""
        limiter = self.limiter()
        # Counted before the first await: the limiter's own statistics see a call only once it
        # waits for a token, so a burst arriving at once all passed a check on them.
        if self._admitted >= self.threads + self.queue_limit:
            raise ApiError(
                503, "busy",
                f"the server is busy: {self.threads} {self.what} are in progress and "
                f"{self.queue_limit} more are waiting; try again in a few seconds",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
        self._admitted += 1
        try:
            async with limiter:  # this call's turn
                if gone is not None and await gone():
                    raise ApiError(499, "client_gone", "the client hung up before its turn")
                return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)
        finally:
            self._admitted -= 1

    async def run_watched(
        self, fn: Callable[..., Result], *args: object, gone: Gone | None = None
    ) -> Result:
        """:meth:`run` of ``fn(*args, wanted)`` for long work that can stop part-way:
        ``wanted()`` turns False once ``gone()``, asked every :data:`WATCH_S` seconds while
        the work waits or runs, says the client has hung up."""
        abandoned = threading.Event()

        def wanted() -> bool:
            return not abandoned.is_set()

        if gone is None:
            return await self.run(fn, *args, wanted)

        async def watch() -> None:
            while not await gone():
                await anyio.sleep(WATCH_S)
            abandoned.set()

        failed: Exception | None = None  # raised as itself, not in the task group's group
        async with anyio.create_task_group() as watching:
            watching.start_soon(watch)
            try:
                result = await self.run(fn, *args, wanted, gone=gone)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                failed = exc
            watching.cancel_scope.cancel()
        if failed is not None:
            raise failed
        return result
