"""The server under concurrent requests: its image store, and how many uploads it decodes."""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

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


def test_uploads_are_decoded_two_at_a_time(
    mobilesam_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode can take ~10 bytes per pixel of a 40 MP upload; 40 request threads at once
    would need gigabytes before the model (one image at a time) gets to any of them."""
    pytest.importorskip("fastapi")
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    import ovsam.serve.app as serve_app
    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.settings import ServeSettings

    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    client = TestClient(serve_app.create_app(ServeSettings(), lambda _: engine))
    decoding, most = [0], [0]
    lock, real_load = threading.Lock(), serve_app.load_image

    def slow_load(*args: object, **kwargs: object) -> object:
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
        time.sleep(0.3)  # long enough for every upload to arrive meanwhile
        with lock:
            decoding[0] -= 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(serve_app, "load_image", slow_load)
    embedded = engine.embed(np.zeros((24, 32, 3), np.uint8))  # the model is not under test
    monkeypatch.setattr(engine, "embed", lambda image: embedded)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()

    def upload(_: int) -> int:
        files = {"file": ("a.png", png, "image/png")}
        return client.post("/v1/images", files=files).status_code

    with ThreadPoolExecutor(max_workers=5) as pool:
        assert list(pool.map(upload, range(5))) == [201] * 5
    assert most[0] == serve_app.DECODES_AT_ONCE == 2
