"""HTTP API errors outside the endpoints: unknown routes, crashes, oversized or malformed bodies.

Each answer must be the documented envelope ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ovsam.predictor import SamPredictor  # noqa: E402
from ovsam.serve.app import create_app  # noqa: E402
from ovsam.serve.engine import SegmentationEngine  # noqa: E402
from ovsam.serve.schemas import MAX_NAMES, MAX_POINTS  # noqa: E402
from ovsam.serve.settings import ServeSettings  # noqa: E402


@pytest.fixture(scope="module")
def engine(mobilesam_model: torch.nn.Module) -> SegmentationEngine:
    return SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")


@pytest.fixture(scope="module")
def client(engine: SegmentationEngine) -> TestClient:
    return TestClient(create_app(ServeSettings(), lambda _: engine))


def envelope(response: object) -> tuple[int, str, str]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"], body["error"]["message"]  # type: ignore[attr-defined]


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert envelope(client.get("/v1/nope")) == (404, "not_found", "Not Found: GET /v1/nope")
    assert envelope(client.get("/static/nope.js"))[:2] == (404, "not_found")
    r = client.put("/v1/health")
    assert envelope(r) == (405, "method_not_allowed", "Method Not Allowed: PUT /v1/health")
    assert r.headers["allow"] == "GET"


def test_malformed_multipart(client: TestClient) -> None:
    r = client.post(
        "/v1/images",
        content=b"garbage",
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    status, code, message = envelope(r)
    assert (status, code) == (400, "bad_request") and "multipart" in message


def upload_failing_with(
    error: Exception, engine: SegmentationEngine, monkeypatch: pytest.MonkeyPatch
) -> object:
    """The response to an upload whose embedding raises ``error``."""
    broken = SegmentationEngine(engine.predictor, engine.model_name)

    def crash(image: np.ndarray) -> None:
        raise error

    monkeypatch.setattr(broken, "embed", crash)
    client = TestClient(create_app(ServeSettings(), lambda _: broken))
    return client.post("/v1/images", files={"file": ("a.png", tiny_png(), "image/png")})


def test_unexpected_exception_is_a_500_envelope_without_traceback(
    engine: SegmentationEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="ovsam.serve"):
        r = upload_failing_with(RuntimeError("secret detail"), engine, monkeypatch)
    status, code, message = envelope(r)
    assert (status, code) == (500, "internal_error")
    assert "secret" not in message and "Traceback" not in r.text  # type: ignore[attr-defined]
    logged = [rec for rec in caplog.records if rec.name == "ovsam.serve"]
    assert logged and logged[0].exc_info is not None
    assert "secret detail" in str(logged[0].exc_info[1])


def test_running_out_of_memory_is_a_503_envelope(
    engine: SegmentationEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 ...")
    with caplog.at_level(logging.WARNING, logger="ovsam.serve"):
        status, code, message = envelope(upload_failing_with(error, engine, monkeypatch))
    assert (status, code) == (503, "out_of_memory")
    assert message.startswith("ran out of GPU memory (asked for 2.00 GiB more): use smaller")
    assert [rec.levelname for rec in caplog.records if rec.name == "ovsam.serve"] == ["WARNING"]


def call_asgi(
    app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], chunk: bytes, chunks: int
) -> tuple[int, bytes, int]:
    """POST ``chunks`` copies of ``chunk`` to ``app``; returns status, body and how many chunks
    the app pulled before answering."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        if pulled == chunks:
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


def test_oversized_upload_is_refused_before_reading_the_body(engine: SegmentationEngine) -> None:
    app = create_app(ServeSettings(max_upload_bytes=1000), lambda _: engine)
    headers = [
        (b"content-type", b"multipart/form-data; boundary=xx"),
        (b"content-length", str(300 * 1024 * 1024).encode()),
    ]
    status, body, pulled = call_asgi(app, "/v1/images", headers, bytes(1 << 20), 300)
    assert status == 413 and b'"upload_too_large"' in body and pulled == 0


def test_streamed_body_is_stopped_at_the_limit(engine: SegmentationEngine) -> None:
    app = create_app(ServeSettings(max_body_bytes=100_000), lambda _: engine)
    headers = [(b"content-type", b"application/json")]  # chunked: no content-length
    status, body, pulled = call_asgi(app, "/v1/vocabularies", headers, b" " * 65536, 1000)
    assert status == 413 and b'"body_too_large"' in body and pulled == 2
    json_limit = TestClient(app).post("/v1/images/x/predict", json={"names": ["a" * 200_000]})
    assert envelope(json_limit) == (
        413, "body_too_large", "request body is larger than the limit of 100000 bytes"
    )  # fmt: skip


def test_huge_lists_fail_in_the_schema_with_the_documented_codes(client: TestClient) -> None:
    # the schema bound answers before the (unknown) image is even looked up
    n = MAX_POINTS + 1
    r = client.post("/v1/images/unknown/predict", json={"points": [[1, 1]] * n, "labels": [1] * n})
    assert envelope(r) == (400, "too_many_points", f"too many points: {n} > 64")
    r = client.post("/v1/images/unknown/predict", json={"labels": [1] * n})
    assert envelope(r) == (400, "too_many_points", f"too many labels: {n} > 64")
    r = client.post("/v1/vocabularies", json={"name": "v", "names": ["a"] * (MAX_NAMES + 1)})
    assert envelope(r) == (
        413, "vocabulary_too_large",
        f"vocabulary has {MAX_NAMES + 1} names, more than the limit of 25000",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code", "message"),
    [
        (b'{"box": [1, 2', "application/json", 422, "invalid_request",
         "request body is not valid JSON"),
        (b'{"box": [1, 2, 3, 4]}', "text/plain", 415, "unsupported_media_type",
         "request body must be JSON: send it with Content-Type: application/json"),
        (b'{"points": [[1, 1]], "labels": [true]}', "application/json", 422, "invalid_request",
         "labels.0: Input should be a valid integer"),
        (b'{"box": [1, 2, 3, 4], "point_coords": [[2, 2]], "topk": 3}', "application/json", 422,
         "invalid_request", "point_coords: unknown field (the fields are listed at /docs); "
         "topk: unknown field (the fields are listed at /docs)"),
        # booleans and numeric strings were coerced into pixels (true: 1.0, "40": 40.0)
        (b'{"points": [[true, 60.5]], "labels": [1]}', "application/json", 422, "invalid_request",
         "points.0.0: Input should be a valid number"),
        (b'{"box": ["40", 30, 120, false]}', "application/json", 422, "invalid_request",
         "box.0: Input should be a valid number; box.3: Input should be a valid number"),
        (b'{"box": [40, 30, 120, 90], "top_k": "3"}', "application/json", 422, "invalid_request",
         "top_k: Input should be a valid integer"),
    ],
)  # fmt: skip
def test_malformed_json_bodies(
    client: TestClient, content: bytes, content_type: str, status: int, code: str, message: str
) -> None:
    r = client.post(
        "/v1/images/unknown/predict", content=content, headers={"content-type": content_type}
    )
    assert envelope(r) == (status, code, message)


def test_an_upload_without_a_file_part_says_how_to_send_one(client: TestClient) -> None:
    """``curl -F "file=<img.png"`` sends a text field: pydantic said "Expected UploadFile,
    received: <class 'str'>"."""
    from ovsam.serve.http_errors import NO_FILE_PART, TEXT_NOT_FILE

    r = client.post("/v1/images", data={"file": "not a file"})
    assert envelope(r) == (422, "invalid_request", TEXT_NOT_FILE)
    r = client.post("/v1/images", files={"image": ("a.png", b"x", "image/png")})
    assert envelope(r) == (422, "invalid_request", NO_FILE_PART)
    assert "curl -F 'file=@photo.jpg'" in NO_FILE_PART


def test_a_body_that_is_not_utf8_or_holds_a_huge_number_is_named(client: TestClient) -> None:
    """FastAPI answered both with a bare 400 "There was an error parsing the body"."""
    headers = {"content-type": "application/json"}
    latin1 = '{"names": ["café"]}'.encode("latin-1")  # PowerShell 5.1's default body encoding
    status, code, message = envelope(
        client.post("/v1/vocabularies", content=latin1, headers=headers)
    )
    assert (status, code) == (422, "invalid_request")
    assert message == "request body must be UTF-8 JSON (byte 0xe9 at 15)"
    huge = b'{"names": ["a"], "x": ' + b"9" * 5000 + b"}"
    status, code, message = envelope(client.post("/v1/vocabularies", content=huge, headers=headers))
    assert (status, code) == (422, "invalid_request")
    assert message.startswith("request body is not valid JSON (Exceeds the limit (4300 digits)")
    nested = b"[" * 100_000 + b"]" * 100_000  # json.loads: a RecursionError, no ValueError
    status, code, message = envelope(
        client.post("/v1/vocabularies", content=nested, headers=headers)
    )
    assert (status, code) == (422, "invalid_request")
    assert message.startswith("request body is not valid JSON (maximum recursion depth")


def test_an_empty_vocabulary_name_is_refused_not_read_as_none(client: TestClient) -> None:
    """'"vocabulary": ""' (an unset dropdown) answered 200 with no labels while recognition
    was available: every label lost, silently."""
    image_id = client.post("/v1/images", files={"file": ("a.png", tiny_png(), "image/png")})
    body = {"points": [[5, 5]], "labels": [1], "vocabulary": ""}
    r = client.post(f"/v1/images/{image_id.json()['image_id']}/predict", json=body)
    status, code, message = envelope(r)
    assert (status, code) == (422, "invalid_request") and message.startswith("vocabulary: ")


def test_the_schema_gives_this_servers_limits(engine: SegmentationEngine) -> None:
    """It gave the largest limits any server allows (1024 points, 100,000 names): a request
    within the schema got a 400 from a server with lower ones."""
    settings = ServeSettings(max_points=8, max_vocabulary=300)
    client = TestClient(create_app(settings, lambda _: engine))
    models = client.get("/openapi.json").json()["components"]["schemas"]
    prompt = models["PredictRequest"]["properties"]
    assert prompt["points"]["maxItems"] == prompt["labels"]["maxItems"] == 8
    assert models["VocabularyIn"]["properties"]["names"]["maxItems"] == 300
    assert client.get("/openapi.json").json()["components"]["schemas"] == models


def multipart_upload(boundary: str = "XyZb") -> tuple[bytes, dict[str, str]]:
    """A whole ``file`` upload of :func:`tiny_png` as multipart form data, and its headers."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    body = head.encode() + tiny_png() + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f'multipart/form-data; boundary="{boundary}"'}


def test_an_upload_cut_short_is_named_not_called_a_missing_file_part(client: TestClient) -> None:
    """A multipart body without its closing boundary line was answered "no file part"."""
    body, headers = multipart_upload()
    assert client.post("/v1/images", content=body, headers=headers).status_code == 201
    for cut in (len(body) - 8, len(body) - 30, 60, 0):
        r = client.post("/v1/images", content=body[:cut], headers=headers)
        assert envelope(r) == (
            400, "bad_request",
            "multipart body ends before its closing boundary line '--XyZb--': the upload was "
            "cut short (send the whole file again)",
        )  # fmt: skip


@pytest.mark.parametrize("epilogue", [b"", b"trailing epilogue text"])
def test_the_closing_boundary_is_found_across_body_chunks(epilogue: bytes) -> None:
    """The body arrives in pieces: the closing line split between any two of them is seen."""
    from ovsam.serve.http_errors import ApiError, GuardMiddleware

    body, headers = multipart_upload()
    body += epilogue
    scope = {"type": "http", "method": "POST", "path": "/v1/images",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip

    async def read_all(scope: dict, receive: object, send: object) -> None:
        while (await receive())["more_body"]:  # type: ignore[operator]
            pass

    async def fail(message: dict) -> None:
        raise AssertionError(f"answered {message}")

    guard = GuardMiddleware(read_all, lambda _: (10**6, ApiError(413, "x", "y")))  # type: ignore[arg-type]
    for split in range(len(body) - len(epilogue) - 12, len(body) + 1):
        pieces = [body[:split], body[split:]]

        async def receive(pieces: list[bytes] = pieces) -> dict:
            chunk = pieces.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pieces)}

        asyncio.run(guard(scope, receive, fail))  # type: ignore[arg-type]
