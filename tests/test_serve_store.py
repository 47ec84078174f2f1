"""The server's uploads: its image store under concurrent requests, how many uploads it
decodes at once (its health check answering meanwhile), and the upright pictures it keeps for
turned ones."""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.serve.store import LOW_RES_BYTES, ImageStore


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


def test_a_kept_mask_holds_the_memory_the_store_counts() -> None:
    """A one-click prompt's best mask is one of three candidates: kept as a view, it held all
    three (768 KiB) while the store counted 256 KiB."""
    store = ImageStore(4, 10**9, 4)
    item = store.add("x", FakeState())  # type: ignore[arg-type]
    candidates = np.zeros((3, 256, 256), np.float32)
    store.remember_mask(item, candidates[2][None])
    (kept,) = item.masks.values()
    assert kept.base is None and kept.nbytes == LOW_RES_BYTES
    assert store.total_bytes() == 10 + LOW_RES_BYTES
    # another image used while this one's mask was decoded: the mask's image is kept
    full = ImageStore(4, 10 + LOW_RES_BYTES + 5, 4)  # room for one image with its mask
    first, second = (full.add(n, FakeState()) for n in "ab")  # type: ignore[arg-type]
    mask_id = full.remember_mask(first, candidates[:1])
    assert full.get(first.image_id) is first and mask_id in first.masks
    assert full.get(second.image_id) is None and full.evictions == 1


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


def test_uploads_are_decoded_and_held_two_at_a_time(
    mobilesam_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode can take ~10 bytes per pixel of a 40 MP upload; 40 request threads at once
    would need gigabytes before the model (one image at a time) gets to any of them. A decoded
    image is held until it is embedded: uploads queued for the model held theirs (12 parallel
    10 MP uploads held 11, about 2 GB)."""
    pytest.importorskip("fastapi")
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    import ovsam.serve.app as serve_app
    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.settings import ServeSettings

    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    client = TestClient(serve_app.create_app(ServeSettings(), lambda _: engine))
    decoding, held, most = [0], [0], {"decoding": 0, "held": 0}
    lock, real_load = threading.Lock(), serve_app.load_image_and_orientation

    def count(counter: list[int], name: str, step: int) -> None:
        with lock:
            counter[0] += step
            most[name] = max(most[name], counter[0])

    def slow_load(*args: object, **kwargs: object) -> object:
        count(held, "held", 1)  # decoded pixels exist from here until they are embedded
        count(decoding, "decoding", 1)
        time.sleep(0.3)  # long enough for every upload to arrive meanwhile
        count(decoding, "decoding", -1)
        return real_load(*args, **kwargs)

    embedded = engine.embed(np.zeros((24, 32, 3), np.uint8))  # the model is not under test

    def slow_embed(image: np.ndarray) -> object:
        time.sleep(0.2)  # a slow model: the next decoded uploads queue up for it
        count(held, "held", -1)
        return embedded

    monkeypatch.setattr(serve_app, "load_image_and_orientation", slow_load)
    monkeypatch.setattr(engine, "embed", slow_embed)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()

    def upload(_: int) -> int:
        files = {"file": ("a.png", png, "image/png")}
        return client.post("/v1/images", files=files).status_code

    with ThreadPoolExecutor(max_workers=5) as pool:
        assert list(pool.map(upload, range(5))) == [201] * 5
    assert most == {"decoding": 2, "held": 2} and serve_app.DECODES_AT_ONCE == 2


@contextmanager
def held_uploads(
    engine: object, monkeypatch: pytest.MonkeyPatch, model_threads: tuple[int, int] | None = None
) -> Iterator[tuple[object, Callable[[], object], Callable[[], int], threading.Event]]:
    """A TestClient whose uploads wait in the model until the event is set: ``(client,
    upload, waiting, model_free)``, ``upload()`` posting a PNG and ``waiting()`` counting the
    requests queued for a model thread. ``model_threads``: ``(threads, queue_limit)``."""
    import functools

    from fastapi.testclient import TestClient

    import ovsam.serve.app as serve_app
    from ovsam.serve.settings import ServeSettings

    if model_threads is not None:
        monkeypatch.setattr(
            serve_app, "ModelThreads", functools.partial(serve_app.ModelThreads, *model_threads)
        )
    model_free = threading.Event()

    def slow_embed(image: np.ndarray) -> tuple[FakeState, float]:
        model_free.wait(30)  # the model is busy with other uploads
        return FakeState(), 0.0

    monkeypatch.setattr(engine, "embed", slow_embed)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buffer, format="PNG")
    files = {"file": ("a.png", buffer.getvalue(), "image/png")}
    app = serve_app.create_app(ServeSettings(), lambda _: engine)
    with TestClient(app) as client:
        limiter = app.state.model_threads.limiter()
        try:
            yield (
                client,
                lambda: client.post("/v1/images", files=files),
                lambda: client.portal.call(lambda: limiter.statistics().tasks_waiting),
                model_free,
            )
        finally:
            model_free.set()


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_page_and_health_answer_while_uploads_wait_for_the_model(
    mobilesam_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads waiting for the model held every thread of FastAPI's pool (40), which also
    serves the page, its script and the sample photo: those stalled as long as the model took
    to embed them all. Uploads now wait on threads of their own."""
    pytest.importorskip("fastapi")
    from concurrent.futures import ThreadPoolExecutor

    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.model_threads import MODEL_THREADS

    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    with held_uploads(engine, monkeypatch) as (client, upload, waiting, model_free):
        with ThreadPoolExecutor(max_workers=48) as pool:
            uploads = [pool.submit(upload) for _ in range(43)]  # more than the pool's 40
            wait_until(lambda: waiting() == 43 - MODEL_THREADS)
            paths = ["/", "/static/app.js", "/static/style.css", "/v1/sample.jpg", "/v1/health"]
            answers = [pool.submit(client.get, path) for path in paths]
            statuses = [answer.result(timeout=5).status_code for answer in answers]
            model_free.set()
            assert [u.result().status_code for u in uploads] == [201] * 43
    assert statuses == [200] * len(paths)


def test_a_full_queue_answers_busy_at_once(
    mobilesam_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the queue's limit a request is refused at once with 503 ``busy`` and a
    Retry-After header, instead of waiting minutes for the model; the queued ones go on."""
    pytest.importorskip("fastapi")
    from concurrent.futures import ThreadPoolExecutor

    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine

    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    with held_uploads(engine, monkeypatch, (2, 3)) as (client, upload, waiting, model_free):
        with ThreadPoolExecutor(max_workers=6) as pool:
            queued = [pool.submit(upload) for _ in range(5)]  # 2 in the model, 3 waiting
            wait_until(lambda: waiting() == 3)
            refused = upload()
            sample = client.post("/v1/images/sample")
            prompt = client.post(
                "/v1/images/none/predict", json={"points": [[1, 2]], "labels": [1]}
            )
            model_free.set()
            assert [q.result().status_code for q in queued] == [201] * 5
        after = upload()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "busy"
    assert (
        "2 uploads or prompts are in progress and 3 more are waiting"
        in refused.json()["error"]["message"]
    )
    assert [r.status_code for r in (sample, prompt)] == [503, 503]
    assert after.status_code == 201


def test_a_turned_upload_is_stored_with_its_upright_picture(
    mobilesam_model: torch.nn.Module,
) -> None:
    """Chromium ignores orientation in WebP EXIF and XMP: the page drew the stored grid and
    mapped clicks onto the server's turned one. It now shows the server's picture, which the
    store keeps (and counts) for uploads their orientation turned."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ovsam.image_io import load_image
    from ovsam.predictor import SamPredictor
    from ovsam.serve.app import create_app
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.settings import ServeSettings
    from turned_images import turned_image_files

    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    app = create_app(ServeSettings(), lambda _: engine)
    client = TestClient(app)
    for name, (data, orientation) in turned_image_files().items():
        r = client.post("/v1/images", files={"file": (name, data, "application/octet-stream")})
        info = r.json()
        assert r.status_code == 201, r.text
        turned = orientation in (5, 6, 7, 8)
        assert (info["width"], info["height"]) == ((20, 40) if turned else (40, 20))
        url = f"/v1/images/{info['image_id']}/picture"
        assert info["picture"] == (None if orientation == 1 else url)
        assert client.get(f"/v1/images/{info['image_id']}").json()["picture"] == info["picture"]
        r = client.get(url)
        if orientation == 1:
            assert (r.status_code, r.json()["error"]["code"]) == (404, "no_picture")
            continue
        assert r.headers["content-type"] == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=int)
        assert np.abs(shown - load_image(data)).mean() < 3  # the upright pixels, as JPEG
        item = app.state.store.get(info["image_id"])
        assert item.nbytes() == item.state.nbytes() + len(r.content)
    # a turned panorama: JPEG holds no side over 65,500 (a 500 after the embedding, before)
    exif = Image.Exif()
    exif[0x0112] = 6
    wide = io.BytesIO()
    Image.new("RGB", (66000, 4), (200, 30, 30)).save(wide, format="PNG", exif=exif.tobytes())
    r = client.post("/v1/images", files={"file": ("wide.png", wide.getvalue(), "image/png")})
    assert r.status_code == 201 and (r.json()["width"], r.json()["height"]) == (4, 66000)
    shown = Image.open(io.BytesIO(client.get(r.json()["picture"]).content))
    assert max(shown.size) == 4096  # the page scales it to the canvas anyway


def test_a_burst_arriving_at_once_is_held_to_the_queue_limit() -> None:
    """Eight calls started in one tick, 2 threads, a queue of 3: five run, three are refused
    (a check on the limiter's statistics let all eight in, the queue unbounded)."""
    import anyio

    from ovsam.serve.http_errors import ApiError
    from ovsam.serve.model_threads import ModelThreads

    threads, model_free, answers = ModelThreads(2, 3), threading.Event(), []

    async def call() -> None:
        try:
            answers.append(await threads.run(model_free.wait, 10))
        except ApiError as error:
            answers.append(error.status)

    async def burst() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(call)
            await anyio.sleep(0.2)
            assert answers == [503] * 3 and threads.limiter().statistics().tasks_waiting == 3
            model_free.set()

    anyio.run(burst)
    assert answers.count(503) == 3 and answers.count(True) == 5
    answers.clear()
    model_free.clear()
    anyio.run(burst)  # the finished calls left the count: the same again
    assert answers.count(503) == 3 and answers.count(True) == 5
