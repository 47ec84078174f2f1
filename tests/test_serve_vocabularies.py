"""Vocabularies on the server: bounded custom vocabularies, deletion, and text banks that are
built without holding up other users' prompts."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from synthetic_scenes import make_scene

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import ovsam.serve.recognition as recognition  # noqa: E402
from ovsam.predictor import SamPredictor  # noqa: E402
from ovsam.serve.app import create_app  # noqa: E402
from ovsam.serve.engine import SegmentationEngine  # noqa: E402
from ovsam.serve.model_threads import MODEL_THREADS  # noqa: E402
from ovsam.serve.settings import ServeSettings  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Text banks built by a test go to its own cache folder, not the user's."""
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))


def tiny_clip() -> torch.nn.Module:
    from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
    from ovsam.clip.model import CLIP

    torch.manual_seed(0)
    text = replace(get_clip_config("RN50").text, width=64, heads=1, layers=1)
    return CLIP(CLIPConfig(32, VisionConfig("vit", 64, (2,), 64, 16), text, True))


@pytest.fixture(scope="module")
def labelled(mobilesam_model: torch.nn.Module) -> SegmentationEngine:
    recognizer = recognition.ClipRecognizer(tiny_clip(), "tiny test CLIP", "none")
    return SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam", recognizer)


def upload_scene(client: TestClient) -> tuple[str, list[float]]:
    image, shapes = make_scene(0)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    r = client.post("/v1/images", files={"file": ("scene.png", buf.getvalue(), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()["image_id"], [float(v) for v in shapes[0].box]


def test_a_bad_prompt_is_refused_before_its_vocabulary_is_embedded(
    labelled: SegmentationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A click outside the image named LVIS: its 1,203 names were embedded (minutes with a
    real CLIP) before the 400 came."""
    prepared: list[str] = []
    real = labelled.recognizer.prepare
    monkeypatch.setattr(
        labelled.recognizer,
        "prepare",
        lambda v, *wanted: prepared.append(v.name) or real(v, *wanted),
    )
    client = TestClient(create_app(ServeSettings(), lambda _: labelled))
    image_id, box = upload_scene(client)
    bad = [{"points": [[-5, 10]], "labels": [1]}, {}]
    for body in bad:
        r = client.post(f"/v1/images/{image_id}/predict", json={**body, "vocabulary": "lvis"})
        assert r.status_code == 400, r.text
    assert prepared == []
    r = client.post(f"/v1/images/{image_id}/predict", json={"box": box, "vocabulary": "coco"})
    assert r.status_code == 200 and r.json()["labels"] and prepared == ["coco"]


def test_plain_prompts_proceed_while_a_text_bank_is_built(
    labelled: SegmentationEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More prompts naming a new vocabulary than there are model threads: they held every
    model thread (one building the bank, the others waiting for it) and a plain prompt
    queued for as long as the build took."""
    real_build = recognition.build_text_bank
    started, release = threading.Event(), threading.Event()
    builds: list[int] = []

    def slow_build(*args: object, **kwargs: object) -> object:
        builds.append(1)
        started.set()
        release.wait(120)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(recognition, "build_text_bank", slow_build)
    # one event loop for every request, as a server has (the client's context)
    with TestClient(create_app(ServeSettings(), lambda _: labelled)) as client:
        image_id, box = upload_scene(client)
        client.post("/v1/vocabularies", json={"name": "big", "names": ["disc", "square", "cup"]})

        def ask(body: dict) -> tuple[int, list]:
            r = client.post(f"/v1/images/{image_id}/predict", json=body)
            return r.status_code, r.json().get("labels", [])

        many = MODEL_THREADS + 1
        with ThreadPoolExecutor(max_workers=many + 1) as pool:
            try:
                named = [pool.submit(ask, {"box": box, "vocabulary": "big"}) for _ in range(many)]
                assert started.wait(60), "the bank build never started"
                plain = pool.submit(ask, {"box": box})
                assert plain.result(timeout=60) == (200, [])  # TimeoutError: stuck behind it
                assert not release.is_set()
            finally:
                release.set()
            answers = [future.result(timeout=120) for future in named]
    assert [status for status, _ in answers] == [200] * many
    assert all(len(labels) == 3 for _, labels in answers)
    assert len(builds) == 1  # the other requests waited for the first one's bank


def test_custom_vocabularies_are_capped_least_recently_used_first(
    labelled: SegmentationEngine,
) -> None:
    client = TestClient(create_app(ServeSettings(max_custom_vocabularies=2), lambda _: labelled))
    image_id, box = upload_scene(client)
    for name in ("a", "b"):
        assert (
            client.post("/v1/vocabularies", json={"name": name, "names": [name]}).status_code == 201
        )
    used = client.post(f"/v1/images/{image_id}/predict", json={"box": box, "vocabulary": "a"})
    assert used.status_code == 200  # "a" is now more recently used than "b"
    client.post("/v1/vocabularies", json={"name": "c", "names": ["c"]})
    custom = [v["name"] for v in client.get("/v1/vocabularies").json() if not v["builtin"]]
    assert custom == ["a", "c"]


def test_delete_a_custom_vocabulary(labelled: SegmentationEngine) -> None:
    client = TestClient(create_app(ServeSettings(), lambda _: labelled))
    client.post("/v1/vocabularies", json={"name": "mine", "names": ["cup"]})
    assert client.delete("/v1/vocabularies/mine").status_code == 204
    assert all(v["name"] != "mine" for v in client.get("/v1/vocabularies").json())
    r = client.delete("/v1/vocabularies/mine")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_vocabulary")
    r = client.delete("/v1/vocabularies/coco")
    assert r.json() == {
        "error": {
            "code": "builtin_vocabulary",
            "message": "'coco' is a built-in vocabulary: it cannot be deleted",
        }
    }
    assert r.status_code == 409


def test_commas_separate_synonyms_as_on_the_command_line(labelled: SegmentationEngine) -> None:
    """``"saucer, plate"`` is one class labelled ``saucer`` (the CLI's reading), not a class
    named ``"saucer, plate"``; a name in two classes is refused as the CLI refuses it."""
    from ovsam.vocab import load_vocabulary

    client = TestClient(create_app(ServeSettings(), lambda _: labelled))
    image_id, box = upload_scene(client)
    r = client.post("/v1/vocabularies", json={"name": "table", "names": ["cup", "saucer, plate"]})
    assert r.status_code == 201 and r.json()["size"] == 2
    body = {"box": box, "vocabulary": "table", "top_k": 2}
    labels = client.post(f"/v1/images/{image_id}/predict", json=body).json()["labels"]
    expected = load_vocabulary(["cup", "saucer, plate"])
    assert {label["name"] for label in labels} == set(expected.classes) == {"cup", "saucer"}
    bank = labelled.recognizer.banks.get(expected)  # type: ignore[attr-defined]
    assert bank.names == ("cup", "saucer") and len(bank.embeddings) == 3  # "plate" is embedded
    r = client.post("/v1/vocabularies", json={"name": "twice", "names": ["cup, mug", "", "Mug"]})
    assert (r.status_code, r.json()["error"]) == (400, {
        "code": "invalid_vocabulary",
        "message": "duplicate class name 'Mug' (name 1 and name 3)",
    })  # fmt: skip
    surrogate = '{"name": "broken", "names": ["cup", "cat\\ud800"]}'  # every answer naming it
    r = client.post(  # failed as a 500: no UTF-8 can carry it
        "/v1/vocabularies", content=surrogate, headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_vocabulary")
    assert "is not valid text: it holds a lone surrogate" in r.json()["error"]["message"]
    spaced = ["cup,mug", " cup ,  mug", "x" * 150 + ", " + "y" * 150]  # one class, repeated
    r = client.post("/v1/vocabularies", json={"name": "spaced", "names": spaced})
    assert (r.status_code, r.json()["size"]) == (201, 2)  # each synonym within the 200 chars


def test_names_too_long_for_clip_are_refused_when_posted(labelled: SegmentationEngine) -> None:
    client = TestClient(create_app(ServeSettings(), lambda _: labelled))
    r = client.post("/v1/vocabularies", json={"name": "tea", "names": ["cup", "🍵" * 60]})
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (400, "name_too_long"), r.text
    assert "CLIP's text context holds 77" in error["message"]
    assert all(v["name"] != "tea" for v in client.get("/v1/vocabularies").json())


@pytest.mark.parametrize(("name", "status"), [(".", 422), ("..", 422), ("...", 422),
                                              (".hidden", 201), ("v1.2", 201), ("a-b_c", 201)])  # fmt: skip
def test_vocabulary_names_of_only_dots_are_refused(
    labelled: SegmentationEngine, name: str, status: int
) -> None:
    """``.`` and ``..`` are path segments: no client could delete such a vocabulary."""
    client = TestClient(create_app(ServeSettings(), lambda _: labelled))
    r = client.post("/v1/vocabularies", json={"name": name, "names": ["cup"]})
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"]["message"].startswith("name: String should match pattern")


def test_only_builtin_text_banks_go_to_disk_and_a_request_keeps_its_bank(
    mobilesam_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posted vocabularies would let any client fill the disk; a bank the in-memory LRU drops
    between ``prepare`` and ``label`` must not be rebuilt under the model lock."""
    recognizer = recognition.ClipRecognizer(tiny_clip(), "tiny test CLIP", "none", banks_kept=1)
    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam", recognizer)
    client = TestClient(create_app(ServeSettings(), lambda _: engine))
    image_id, box = upload_scene(client)
    banks = tmp_path / "cache" / "text_banks"
    for i in range(3):
        client.post("/v1/vocabularies", json={"name": "v", "names": [f"thing {i}", "cup"]})
        r = client.post(f"/v1/images/{image_id}/predict", json={"box": box, "vocabulary": "v"})
        assert r.status_code == 200 and r.json()["labels"], r.text
    assert not list(banks.glob("*"))
    r = client.post(f"/v1/images/{image_id}/predict", json={"box": box, "vocabulary": "coco"})
    assert r.status_code == 200 and len(r.json()["labels"]) == 5
    assert len(list(banks.glob("*.safetensors"))) == 1
    with monkeypatch.context() as kept:  # a kept bank goes to the request, not prepared again
        kept.setattr(recognizer, "prepare", pytest.fail)
        r = client.post(f"/v1/images/{image_id}/predict", json={"box": box, "vocabulary": "coco"})
    assert r.status_code == 200 and len(r.json()["labels"]) == 5

    real_prepare = recognizer.prepare

    def prepare_then_drop(vocabulary: object, *wanted: object) -> object:
        prepared = real_prepare(vocabulary, *wanted)  # type: ignore[arg-type]
        recognizer.banks._banks.clear()  # another request's bank pushed it out

        def no_rebuild(*args: object, **kwargs: object) -> None:
            raise AssertionError("rebuilt under the model lock")

        monkeypatch.setattr(recognition, "build_text_bank", no_rebuild)
        return prepared

    monkeypatch.setattr(recognizer, "prepare", prepare_then_drop)
    r = client.post(f"/v1/images/{image_id}/predict", json={"box": box, "vocabulary": "v"})
    assert r.status_code == 200 and r.json()["labels"][0]["name"] in ("thing 2", "cup"), r.text
