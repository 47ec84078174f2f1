"""The server's image store under concurrent requests."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from ovsam.serve.store import ImageStore


class FakeState:
    """Stands in for an ``ImageState``: a size and a byte count are all the store reads."""

    original_size = (2, 2)

    def nbytes(self) -> int:
        return 10


@pytest.fixture()
def fast_switching() -> Iterator[None]:
    """Switch threads as often as possible, so that a race shows within milliseconds."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("fast_switching")
def test_health_figures_are_read_while_requests_touch_images() -> None:
    """``/v1/health`` reads ``total_bytes`` and ``len`` while every predict moves its image to
    the LRU end: unlocked, that raised "OrderedDict mutated during iteration" (a 500)."""
    store = ImageStore(16, 10**9, 4)
    ids = [store.add("x", FakeState()).image_id for _ in range(16)]  # type: ignore[arg-type]
    done = threading.Event()

    def requests() -> None:
        i = 0
        while not done.is_set():
            store.get(ids[i % 16])
            i += 1

    thread = threading.Thread(target=requests)
    thread.start()
    try:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            assert store.total_bytes() == 160 and len(store) == 16
    finally:
        done.set()
        thread.join()
