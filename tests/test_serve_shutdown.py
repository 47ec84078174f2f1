"""Stalled or vanished clients, large uploads: the server stops, drops their work, frees memory."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from browser_helpers import free_port
from ovsam.cpu_allocator import release_freed_memory

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from ovsam.cli import serve_cmd  # noqa: E402
from ovsam.serve.app import create_app  # noqa: E402
from ovsam.serve.engine import MissingRecognizer  # noqa: E402
from ovsam.serve.settings import ServeSettings  # noqa: E402


def _stub_server(settings: ServeSettings) -> tuple[object, threading.Thread, int]:
    """A started server with ``settings`` and no model (in a thread): server, thread, port."""
    engine = SimpleNamespace(
        recognizer=MissingRecognizer(), model_name="stub", score_name="predicted_iou"
    )
    app = create_app(settings, lambda _: engine)
    port = free_port()
    server = uvicorn.Server(serve_cmd.uvicorn_config(app, "127.0.0.1", port))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # a thread
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread, port


def test_a_client_that_stops_mid_body_does_not_keep_the_server_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn waited without end for a body's rest: SIGTERM left the server up for good."""
    monkeypatch.setattr(serve_cmd, "SHUTDOWN_GRACE_S", 1)
    server, thread, port = _stub_server(ServeSettings())
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(
            b"POST /v1/vocabularies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"name": "a'
        )
        time.sleep(0.5)  # the request is in progress, waiting for the rest of its body
        start = time.monotonic()
        server.should_exit = True  # what SIGTERM sets
        thread.join(timeout=20)
        assert not thread.is_alive() and time.monotonic() - start < 10


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes() -> None:
    """A client that sent part of a body and then nothing (or trickled it) held its
    connection and handler for as long as it liked (slow-loris)."""
    server, thread, port = _stub_server(ServeSettings(body_timeout_s=1))
    try:
        for content_type, part in (
            (b"application/json", b'{"name": "a'),
            (b"multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; na"),
        ):
            path = b"/v1/vocabularies" if b"json" in content_type else b"/v1/images"
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.settimeout(20)
                start = time.monotonic()
                client.sendall(
                    b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
                    + b"\r\nContent-Length: 1000\r\n\r\n" + part
                )  # fmt: skip
                time.sleep(0.5)
                client.sendall(b"x")  # a trickle does not reset the clock
                answer = b""
                while b"}}" not in answer:
                    chunk = client.recv(4096)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in answer
                assert b"did not arrive within 1 s" in answer and time.monotonic() - start < 5
                while client.recv(4096):  # then closed by the server
                    pass
                assert time.monotonic() - start < 15
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)
def test_memory_freed_in_a_worker_threads_heap_goes_back_to_the_kernel() -> None:
    """Each model thread's heap kept about 0.75 GB of a large upload's freed decode memory."""

    def resident_mib() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

    kept: list = []

    def allocate() -> None:  # 190 MiB in 64 KiB blocks (from this thread's heap), 1 in 64 kept
        blocks = [ctypes.create_string_buffer(64 << 10) for _ in range(3000)]
        kept.extend(blocks[::64])

    worker = threading.Thread(target=allocate)
    worker.start()
    worker.join()
    before = resident_mib()
    assert release_freed_memory()
    assert resident_mib() < before - 100, before


def test_uploads_whose_clients_hung_up_are_not_embedded(
    mobilesam_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abandoned burst of uploads was embedded and cached for nobody, one after another,
    while live clients got 503 and then waited minutes."""
    from functools import partial

    from browser_helpers import running_server
    from ovsam.assets import SAMPLE_PHOTO
    from ovsam.predictor import SamPredictor
    from ovsam.serve import app as serve_app
    from ovsam.serve.engine import SegmentationEngine

    monkeypatch.setattr(serve_app, "ModelThreads", partial(serve_app.ModelThreads, threads=1))
    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    embedded: list[int] = []
    embed = engine.embed

    def slow_embed(image: object) -> object:  # a real embedding's time (tests may memoize it)
        embedded.append(1)
        time.sleep(1.0)
        return embed(image)

    monkeypatch.setattr(engine, "embed", slow_embed)
    photo = SAMPLE_PHOTO.read_bytes()
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--B--\r\n"
    )
    head = (
        "POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B"
        f"\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with running_server(engine) as url:
        port = int(url.rsplit(":", 1)[1])
        live = socket.create_connection(("127.0.0.1", port))
        live.sendall(head + body)  # its embedding holds the only model thread for a while
        deadline = time.monotonic() + 30
        while not embedded and time.monotonic() < deadline:  # the live upload's turn came
            time.sleep(0.01)
        for _ in range(3):  # sent whole, then gone before their turn
            with socket.create_connection(("127.0.0.1", port)) as gone:
                gone.sendall(head + body)
            time.sleep(0.05)
        live.settimeout(60)
        assert live.recv(64).startswith(b"HTTP/1.1 201")
        live.close()
        time.sleep(1.0)
    assert embedded == [1]  # the live upload alone


def test_a_text_bank_build_stops_when_its_client_hangs_up(
    mobilesam_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt naming its mask from a large new vocabulary, then gone: the bank was built to
    the end for nobody, and two such clients held both bank threads from everyone else."""
    import json
    import urllib.request
    from functools import partial

    import torch

    import ovsam.clip.text_bank as text_bank
    from browser_helpers import running_server
    from ovsam.assets import SAMPLE_PHOTO
    from ovsam.clip.model import CLIP
    from ovsam.predictor import SamPredictor
    from ovsam.serve import recognition
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.model_threads import WATCH_S
    from tiny_clip import TINY_CLIP

    batches: list[int] = []
    real = text_bank.encode_prompts

    def slow_encode(model: object, texts: list[str]) -> torch.Tensor:
        batches.append(len(texts))
        time.sleep(0.2)
        return real(model, texts)

    monkeypatch.setattr(text_bank, "encode_prompts", slow_encode)
    monkeypatch.setattr(
        recognition, "build_text_bank", partial(recognition.build_text_bank, batch_texts=2)
    )
    torch.manual_seed(0)
    recognizer = recognition.ClipRecognizer(CLIP(TINY_CLIP), "tiny", templates="none")
    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam", recognizer)

    def post(url: str, data: bytes, kind: str) -> dict[str, object]:
        request = urllib.request.Request(url, data, {"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    with running_server(engine) as url:
        names = [f"thing {i}" for i in range(100)]  # 50 batches, 10 s
        vocabulary = json.dumps({"name": "big", "names": names}).encode()
        post(f"{url}/v1/vocabularies", vocabulary, "application/json")
        photo = SAMPLE_PHOTO.read_bytes()
        form = (
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--B--\r\n"
        )
        image_id = post(f"{url}/v1/images", form, "multipart/form-data; boundary=B")["image_id"]
        prompt = json.dumps({"box": [170.0, 15.0, 255.0, 310.0], "vocabulary": "big"}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                f"POST /v1/images/{image_id}/predict HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(prompt)}\r\n\r\n".encode()
                + prompt
            )
            deadline = time.monotonic() + 60
            while not batches and time.monotonic() < deadline:  # the build began
                time.sleep(0.01)
        time.sleep(WATCH_S + 1.0)  # noticed within WATCH_S; the batch under way ends
        stopped_at = len(batches)
        time.sleep(1.0)
        assert len(batches) == stopped_at < 20
        assert recognizer.banks.built(engine_vocabulary(names)) is None


def engine_vocabulary(names: list[str]) -> object:
    """The vocabulary the server made of ``names`` (for its text-bank key)."""
    from ovsam.vocab import vocabulary_from_names

    return vocabulary_from_names(names, "big")
