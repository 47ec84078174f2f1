"""The model's lock: served in order, and segment-everything steps aside between batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from ovsam.serve.fair_lock import FairLock


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_lock_is_granted_in_order_and_its_holder_can_step_aside() -> None:
    lock, order, asked = FairLock(), [], []
    lock.acquire()
    assert not lock.step_aside()  # nobody waits: the holder keeps the lock

    def take(name: str) -> None:
        asked.append(name)
        with lock.held():
            order.append(name)

    threads = []
    for name in "ABC":
        threads.append(threading.Thread(target=take, args=(name,)))
        threads[-1].start()
        _until(lambda: lock._next_ticket == len(threads) + 1)  # queued in this order
    assert lock.step_aside() and order == ["A", "B", "C"]  # all went, then the holder again
    threads.append(threading.Thread(target=take, args=("D",)))
    threads[-1].start()
    _until(lambda: asked == ["A", "B", "C", "D"])
    time.sleep(0.05)
    assert order == ["A", "B", "C"]  # D waits for the holder
    lock.release()
    for thread in threads:
        thread.join(10)
    assert order == ["A", "B", "C", "D"]


def test_a_click_queued_during_segment_everything_goes_before_the_grid_ends(
    mobilesam_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grid held the model to its end: a click waited for all of it (seconds)."""
    from ovsam import automatic
    from ovsam.assets import SAMPLE_PHOTO
    from ovsam.image_io import load_image
    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine

    image = load_image(SAMPLE_PHOTO)
    settings = {"points_per_side": 16, "points_per_batch": 64}  # 4 batches
    expected = automatic.AutomaticMaskGenerator(SamPredictor(mobilesam_model), **settings).generate(
        image
    )
    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    state, _ = engine.embed(image)
    events: list[str] = []
    candidates = automatic.AutomaticMaskGenerator._candidates

    def batch(self: object, *args: object) -> object:
        events.append("batch")
        return candidates(self, *args)

    monkeypatch.setattr(automatic.AutomaticMaskGenerator, "_candidates", batch)
    found: list[object] = []
    grid = threading.Thread(target=lambda: found.append(engine.everything(state, settings)[0]))
    grid.start()
    _until(lambda: events == ["batch"])
    prediction = engine.decode(state, np.array([[210.0, 160.0]]), np.array([1]), None, None)
    events.append("click")
    grid.join(120)
    assert events.index("click") < 4 and events.count("batch") == 4, events
    assert prediction.mask.any()
    (records,) = found
    assert [r["rle"] for r in records] == [r["rle"] for r in expected]  # the same masks
