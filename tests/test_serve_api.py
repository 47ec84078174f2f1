"""HTTP API: uploads, prompts, refinement, vocabularies, every limit and malformed input."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic_scenes import make_scene

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ovsam.assets import SAMPLE_PHOTO  # noqa: E402
from ovsam.masks import decode_rle, mask_iou  # noqa: E402
from ovsam.predictor import SamPredictor  # noqa: E402
from ovsam.serve.app import create_app  # noqa: E402
from ovsam.serve.engine import NO_RECOGNITION, SegmentationEngine  # noqa: E402
from ovsam.serve.settings import ServeSettings  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Text banks built by a test go to its own cache folder, not the user's."""
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def engine(mobilesam_model: torch.nn.Module) -> SegmentationEngine:
    return SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")


def make_client(engine: SegmentationEngine, **limits: object) -> TestClient:
    return TestClient(create_app(ServeSettings(**limits), lambda _: engine))


@pytest.fixture(scope="module")
def client(engine: SegmentationEngine) -> TestClient:
    return make_client(engine)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scene(client: TestClient) -> tuple[str, list]:
    image, shapes = make_scene(0)
    r = client.post("/v1/images", files={"file": ("scene.png", png(image), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()["image_id"], shapes


def error_of(response: object) -> tuple[int, str, str]:
    body = response.json()  # type: ignore[attr-defined]
    return response.status_code, body["error"]["code"], body["error"]["message"]  # type: ignore[attr-defined]


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) == 255


def test_health_reports_model_and_missing_recognition(client: TestClient) -> None:
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and body["model"] == "mobilesam"
    assert body["recognition"] == {
        "available": False, "message": NO_RECOGNITION, "random_weights": False
    }  # fmt: skip
    head = client.head("/v1/health")
    assert head.status_code == 200 and head.content == b""


def test_openapi_schema_lists_versioned_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    routes = {"/v1/images", "/v1/images/{image_id}/predict", "/v1/vocabularies", "/v1/health"}
    picture = paths["/v1/images/{image_id}/picture"]["get"]["responses"]["200"]["content"]
    assert routes <= set(paths) and list(picture) == ["image/jpeg"]  # was documented as JSON


def test_box_and_point_prompts(client: TestClient, scene: tuple[str, list]) -> None:
    image_id, shapes = scene
    disc, rect = shapes[0], shapes[1]
    r = client.post(f"/v1/images/{image_id}/predict", json={"box": disc.box.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    mask = decode_png(body["mask_png"])
    assert mask.shape == (360, 480) and mask_iou(mask, disc.mask) >= 0.95
    assert body["area"] == int(mask.sum()) and body["labels"] == []
    assert body["recognition"]["available"] is False
    r = client.post(
        f"/v1/images/{image_id}/predict",
        json={"points": [rect.inner_point.tolist()], "labels": [1], "format": "rle"},
    )
    body = r.json()
    assert body["mask_png"] is None
    assert mask_iou(decode_rle(body["mask_rle"]), rect.mask) >= 0.95
    # refine: add a background click far away, reusing the previous low-res mask
    r = client.post(
        f"/v1/images/{image_id}/predict",
        json={
            "points": [rect.inner_point.tolist(), [5, 5]],
            "labels": [1, 0],
            "mask_id": body["mask_id"],
        },
    )
    assert r.status_code == 200 and mask_iou(decode_png(r.json()["mask_png"]), rect.mask) >= 0.95


def test_sample_upload_and_page(client: TestClient) -> None:
    r = client.post("/v1/images/sample")
    assert r.status_code == 201 and (r.json()["width"], r.json()["height"]) == (600, 400)
    page = client.get("/")
    assert page.status_code == 200 and "ovsam" in page.text and "/static/app.js" in page.text
    assert "cdn" not in page.text.lower() and "http" not in page.text.replace("http-equiv", "")
    assert "/static/input.js" in page.text
    assert all(client.get(f"/static/{f}").status_code == 200 for f in ("app.js", "input.js"))
    assert client.get("/v1/sample.jpg").content == SAMPLE_PHOTO.read_bytes()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    signature = bytes([0x89]) + b"PNG" + bytes([13, 10, 26, 10])
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "image/x-ms-bmp"])
@pytest.mark.parametrize("kind", ["WEBP", "BMP", "TIFF"])
def test_untyped_uploads_are_decoded(
    client: TestClient, kind: str, content_type: str | None
) -> None:
    """curl, ``requests`` and browsers send .webp/.bmp/.tif as octet-stream or with no type."""
    buf = io.BytesIO()
    Image.fromarray(make_scene(1, 48, 64)[0]).save(buf, format=kind)
    part = ("x", buf.getvalue()) if content_type is None else ("x", buf.getvalue(), content_type)
    r = client.post("/v1/images", files={"file": part})
    assert r.status_code == 201, r.text
    assert (r.json()["width"], r.json()["height"]) == (64, 48)


@pytest.mark.parametrize(
    ("payload", "content_type", "status", "code", "message"),
    [
        (b"definitely not an image", "image/png", 400, "bad_image", "not a readable image"),
        (b"plain bytes", "application/octet-stream", 400, "bad_image", "not a readable image"),
        (SVG, "application/octet-stream", 400, "bad_image", "not a readable image"),
        (
            SVG,
            "image/svg+xml",
            415,
            "unsupported_media_type",
            "content type 'image/svg+xml' is not accepted: send a raster image",
        ),
        (
            b"hello",
            "text/plain",
            415,
            "unsupported_media_type",
            "content type 'text/plain' is not accepted",
        ),
        (
            png_header_only(60000, 60000),
            "image/png",
            413,
            "too_many_pixels",  # in the server's words, not Pillow's 178956970 pixels
            "60000x60000 = 3600000000 pixels, more than the limit of 40000000",
        ),
    ],
)
def test_upload_errors(
    client: TestClient, payload: bytes, content_type: str, status: int, code: str, message: str
) -> None:
    r = client.post("/v1/images", files={"file": ("x", payload, content_type)})
    got_status, got_code, got_message = error_of(r)
    assert (got_status, got_code) == (status, code) and message in got_message


def test_upload_byte_and_pixel_limits(engine: SegmentationEngine) -> None:
    small = make_client(engine, max_upload_bytes=1000, max_pixels=1000)
    data = SAMPLE_PHOTO.read_bytes()
    r = small.post("/v1/images", files={"file": ("c.jpg", data, "image/jpeg")})
    assert error_of(r) == (413, "upload_too_large", "upload is larger than the limit of 1000 bytes")
    tiny = make_client(engine, max_pixels=1000)
    r = tiny.post("/v1/images", files={"file": ("c.jpg", data, "image/jpeg")})
    status, code, message = error_of(r)
    assert (status, code) == (413, "too_many_pixels")
    assert "600x400 = 240000 pixels, more than the limit of 1000" in message


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (
            {"points": [[-5, 10]], "labels": [1]},
            400,
            "invalid_input",
            "point (-5, 10) lies outside the 480x360 image",
        ),
        ({"box": [-50, -50, -10, -10]}, 400, "invalid_input", "lies entirely outside"),
        ({"box": [100, 100, 50, 150]}, 400, "invalid_input", "is inverted"),
        (
            {"points": [[1, 1]] * 65, "labels": [1] * 65},
            400,
            "too_many_points",
            "too many points: 65 > 64",
        ),
        ({"points": [[1, 1]], "labels": []}, 400, "invalid_input", "1 points but 0 labels"),
        ({}, 400, "invalid_input", "give at least one prompt"),
        ({"box": [1, 2, 3]}, 422, "invalid_request", "box: expected 4 values (X0, Y0, X1, Y1)"),
        ({"box": [1, 2, 3, 4, 5]}, 422, "invalid_request", "box: expected 4 values"),
        (
            {"points": [[290, 120, 4]], "labels": [1]},
            422,
            "invalid_request",
            "points.0: expected 2 values (X, Y)",
        ),
        (
            {"points": [[1, 1], [290]], "labels": [1, 1]},
            422,
            "invalid_request",
            "points.1: expected 2 values (X, Y)",
        ),
        (
            {"points": [290, 120], "labels": [1]},
            422,
            "invalid_request",
            "points.0: expected 2 values (X, Y); points.1: expected 2 values (X, Y)",
        ),
        ({"points": [["a", 1]], "labels": [1]}, 422, "invalid_request", "points"),
        ({"box": [1, 1, 50, 50], "mask_id": "nope"}, 404, "unknown_mask", "only its last 32 masks"),
        (
            {"box": [1, 1, 50, 50], "vocabulary": "nope"},
            404,
            "unknown_vocabulary",
            "unknown vocabulary 'nope'",
        ),
    ],
)
def test_prompt_errors(
    client: TestClient, scene: tuple[str, list], body: dict, status: int, code: str, message: str
) -> None:
    r = client.post(f"/v1/images/{scene[0]}/predict", json=body)
    got_status, got_code, got_message = error_of(r)
    assert (got_status, got_code) == (status, code), got_message
    assert message in got_message


def test_unknown_image_id(client: TestClient) -> None:
    r = client.post("/v1/images/abc/predict", json={"box": [0, 0, 5, 5]})
    assert error_of(r) == (
        404, "unknown_image", "unknown image id 'abc' (never uploaded, or evicted from the cache)"
    )  # fmt: skip
    assert client.get("/v1/images/abc").status_code == 404


def test_vocabularies(engine: SegmentationEngine) -> None:
    client = make_client(engine, max_vocabulary=3)
    r = client.post(
        "/v1/vocabularies", json={"name": "kitchen", "names": ["cup, mug", " spoon ", "cup, mug"]}
    )
    assert r.status_code == 201 and r.json() == {"name": "kitchen", "size": 2, "builtin": False}
    listed = client.get("/v1/vocabularies").json()
    assert listed[-1] == {"name": "kitchen", "size": 2, "builtin": False}
    assert {"name": "lvis", "size": 1203, "builtin": True} in listed
    assert {"name": "imagenet21k", "size": 21843, "builtin": True} in listed
    assert error_of(client.post("/v1/vocabularies", json={"name": "coco", "names": ["x"]})) == (
        409, "builtin_vocabulary", "'coco' is a built-in vocabulary: choose another name"
    )  # fmt: skip
    assert error_of(client.post("/v1/vocabularies", json={"name": "e", "names": [" ", ""]})) == (
        400, "empty_vocabulary", "vocabulary is empty: give at least one name"
    )  # fmt: skip
    r = client.post("/v1/vocabularies", json={"name": "big", "names": ["a", "b", "c", "d"]})
    assert error_of(r) == (
        413,
        "vocabulary_too_large",
        "vocabulary has 4 names, more than the limit of 3",
    )
    r = client.post("/v1/vocabularies", json={"name": "big", "names": ["a, b", "c, d"]})
    assert error_of(r) == (  # each synonym is embedded: they count
        413,
        "vocabulary_too_large",
        "vocabulary has 4 names counting synonyms, more than the limit of 3",
    )
    r = client.post("/v1/vocabularies", json={"name": "bad name!", "names": ["a"]})
    assert r.status_code == 422 and "name" in r.json()["error"]["message"]


def test_lru_evicts_least_recently_used_and_bounds_memory(engine: SegmentationEngine) -> None:
    client = make_client(engine, cache_images=2)
    image = make_scene(2, 64, 96)[0]
    ids = []
    for _ in range(2):
        r = client.post("/v1/images", files={"file": ("a.png", png(image), "image/png")})
        ids.append(r.json()["image_id"])
    assert client.get(f"/v1/images/{ids[0]}").status_code == 200  # ids[0] is now most recent
    r = client.post("/v1/images", files={"file": ("a.png", png(image), "image/png")})
    ids.append(r.json()["image_id"])
    assert client.get(f"/v1/images/{ids[1]}").status_code == 404  # least recently used went
    assert client.get(f"/v1/images/{ids[0]}").status_code == 200
    store = client.app.state.store  # type: ignore[attr-defined]
    assert len(store) == 2 and store.evictions == 1
    embedding_bytes = 256 * 64 * 64 * 4
    assert store.total_bytes() == 2 * embedding_bytes
    by_bytes = make_client(engine, cache_bytes=embedding_bytes + 10)
    for _ in range(3):
        by_bytes.post("/v1/images", files={"file": ("a.png", png(image), "image/png")})
    assert len(by_bytes.app.state.store) == 1  # type: ignore[attr-defined]


def test_concurrent_requests_get_consistent_answers(
    client: TestClient, scene: tuple[str, list]
) -> None:
    image_id, shapes = scene
    boxes = [s.box.tolist() for s in shapes] * 4

    def ask(box: list[float]) -> tuple[int, int]:
        r = client.post(f"/v1/images/{image_id}/predict", json={"box": box})
        return r.status_code, r.json()["area"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, boxes))
    assert all(status == 200 for status, _ in answers)
    for i, (_, area) in enumerate(answers):
        assert area == answers[i % 3][1]


def test_labels_from_a_clip_recognizer(engine: SegmentationEngine) -> None:
    from dataclasses import replace

    from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
    from ovsam.clip.model import CLIP
    from ovsam.serve.recognition import ClipRecognizer

    torch.manual_seed(0)
    text = replace(get_clip_config("RN50").text, width=64, heads=1, layers=1)
    clip = CLIP(CLIPConfig(32, VisionConfig("vit", 64, (2,), 64, 16), text, True))
    labelled = SegmentationEngine(
        engine.predictor,
        engine.model_name,
        ClipRecognizer(clip, "tiny test CLIP", "none", random_weights=True),
    )
    client = make_client(labelled)
    health = client.get("/v1/health").json()
    recognition = {
        "available": True,
        "message": "recognition: tiny test CLIP, Image-Crop (CLIP on the masked crop)",
        "random_weights": True,
    }
    assert health["recognition"] == recognition
    image, shapes = make_scene(0)
    r = client.post("/v1/images", files={"file": ("scene.png", png(image), "image/png")})
    image_id = r.json()["image_id"]
    client.post(
        "/v1/vocabularies", json={"name": "shapes", "names": ["disc", "square", "triangle"]}
    )
    body = {"box": list(shapes[0].box), "vocabulary": "shapes", "top_k": 2}
    answer = client.post(f"/v1/images/{image_id}/predict", json=body).json()
    assert answer["recognition"] == recognition  # the labels are machine-readably random
    labels = answer["labels"]
    assert len(labels) == 2 and {lab["name"] for lab in labels} <= {"disc", "square", "triangle"}
    assert labels[0]["score"] >= labels[1]["score"] > 0
