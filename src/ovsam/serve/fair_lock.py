"""A first-come, first-served lock whose holder can step aside for those waiting.

The server's one model is held by one request at a time. A ``threading.Lock`` hands it to any
waiter, and a holder that releases and re-acquires it at once usually gets it back: a
segment-everything request, which holds the model for seconds, could not let the clicks that
queued behind it go first. :class:`FairLock` serves its holders in the order they asked, and
:meth:`FairLock.step_aside` sends the holder to the back of the queue when someone waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FairLock:
    """A lock granted in the order it was asked for (tickets); not re-entrant."""

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._next_ticket = 0  # the ticket the next caller takes
        self._serving = 0  # the ticket whose holder has the lock

    def acquire(self) -> None:
        """Wait for this caller's turn."""
        with self._turns:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._turns.wait_for(lambda: self._serving == ticket)

    def release(self) -> None:
        """End the holder's turn: the next in line gets the lock."""
        with self._turns:
            self._serving += 1
            self._turns.notify_all()

    @contextmanager
    def held(self) -> Iterator[None]:
        """The lock, for the ``with`` block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def step_aside(self) -> bool:
        """For the holder: when others wait, let all of them that asked before now go first
        and take the lock back after them; True when it stepped aside."""
        with self._turns:
            if self._next_ticket - self._serving <= 1:
                return False
            self._serving += 1
            ticket = self._next_ticket
            self._next_ticket += 1
            self._turns.notify_all()
            self._turns.wait_for(lambda: self._serving == ticket)
        return True
