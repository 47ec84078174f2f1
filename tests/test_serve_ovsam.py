"""``ovsam serve --recognizer ovsam``: Open-Vocabulary SAM segments and names on the server,
with the masks, scores and labels its predictor gives; without its weights the server says so."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
from ovsam.clip.model import CLIP
from ovsam.errors import InputError
from ovsam.image_io import load_image
from ovsam.ov.predictor import OVSamPredictor
from ovsam_fixtures import SMALL_CONFIG, small_ovsam

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import ovsam.build  # noqa: E402
import ovsam.recognizers  # noqa: E402
from ovsam.serve.app import create_app, default_engine  # noqa: E402
from ovsam.serve.engine import SegmentationEngine  # noqa: E402
from ovsam.serve.recognition import OVSamRecognizer  # noqa: E402
from ovsam.serve.settings import ServeSettings  # noqa: E402

NAMES = ["cup", "saucer", "spoon", "table"]
# a random OV-SAM and text tower on purpose (the random-weights marking is tested below)
pytestmark = pytest.mark.filterwarnings("ignore:.* has random weights")


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Text banks built by a test go to its own cache folder, not the user's."""
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))


def text_model() -> CLIP:
    """A tiny random CLIP whose text tower embeds into RN50's 1024-d joint space."""
    torch.manual_seed(0)
    text = replace(get_clip_config("RN50").text, width=64, heads=1, layers=1)
    return CLIP(CLIPConfig(1024, VisionConfig("vit", 64, (2,), 64, 16), text, True)).eval()


@pytest.fixture(scope="module")
def predictors() -> tuple[SegmentationEngine, OVSamPredictor]:
    """The served engine and, on the same model and text tower, a reference predictor."""
    model, clip = small_ovsam(), text_model()
    served = OVSamPredictor(model, clip, templates="none", allow_random_weights=True)
    recognizer = OVSamRecognizer(served, "tiny test weights", random_weights=True)
    reference = OVSamPredictor(model, clip, templates="none", top_k=3, allow_random_weights=True)
    reference.set_vocabulary(NAMES, progress=False)
    reference.set_image(load_image(SAMPLE_PHOTO))
    return SegmentationEngine(served, "small-ovsam", recognizer), reference


@pytest.fixture(scope="module")
def served(predictors: tuple[SegmentationEngine, OVSamPredictor]) -> tuple[TestClient, str]:
    """A client of the served engine, the sample photo uploaded (embedded once) and the
    vocabulary ``table`` posted."""
    client = TestClient(create_app(ServeSettings(), lambda _: predictors[0]))
    image_id = upload(client)
    client.post("/v1/vocabularies", json={"name": "table", "names": NAMES})
    return client, image_id


def upload(client: TestClient) -> str:
    buf = io.BytesIO()
    Image.open(SAMPLE_PHOTO).save(buf, format="PNG")
    answer = client.post("/v1/images", files={"file": ("cup.png", buf.getvalue(), "image/png")})
    assert answer.status_code == 201, answer.text
    return answer.json()["image_id"]


@pytest.mark.parametrize(
    "prompt",
    [
        {"box": list(SAMPLE_BOX)},
        {"points": [[300, 170]], "labels": [1]},
        {"points": [[300, 170], [20, 20]], "labels": [1, 0], "box": list(SAMPLE_BOX)},
    ],
)
def test_served_masks_and_labels_equal_the_predictors(
    predictors: tuple[SegmentationEngine, OVSamPredictor],
    served: tuple[TestClient, str],
    prompt: dict,
) -> None:
    reference = predictors[1]
    client, image_id = served
    body = {**prompt, "vocabulary": "table", "top_k": 3, "format": "rle"}
    answer = client.post(f"/v1/images/{image_id}/predict", json=body).json()
    masks, scores, _, labels = reference.predict(
        point_coords=np.array(prompt["points"]) if "points" in prompt else None,
        point_labels=np.array(prompt["labels"]) if "labels" in prompt else None,
        box=np.array(prompt["box"]) if "box" in prompt else None,
    )
    assert answer["area"] == int(masks[0].sum()) > 0
    assert answer["score"] == pytest.approx(float(scores[0]), abs=1e-6)
    assert answer["score_name"] == "low_res_stability_score"
    served = [(label["name"], label["score"]) for label in answer["labels"]]
    assert [n for n, _ in served] == [n for n, _ in labels[0].top]
    assert [p for _, p in served] == pytest.approx([p for _, p in labels[0].top], abs=1e-6)
    assert answer["recognition"]["random_weights"] is True


def test_without_a_vocabulary_masks_come_unnamed(served: tuple[TestClient, str]) -> None:
    client, image_id = served
    answer = client.post(f"/v1/images/{image_id}/predict", json={"box": list(SAMPLE_BOX)})
    assert answer.status_code == 200 and answer.json()["labels"] == []
    health = client.get("/v1/health").json()
    assert health["model"] == "small-ovsam"
    assert health["recognition"]["message"] == (
        "recognition: Open-Vocabulary SAM (CLIP2SAM head + frozen CLIP), tiny test weights"
    )


def test_missing_ovsam_weights_leave_mobilesam_segmenting_and_say_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, mobilesam_checkpoint: Path, tmp_path: Path
) -> None:
    from ovsam.ov import save_ovsam
    from ovsam.ov.checkpoints import WeightsMissing

    def offline(names: list[str]) -> None:
        raise WeightsMissing("recognition weights", names, "no network")

    # the cache that holds MobileSAM (the fallback), so that nothing is downloaded
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(mobilesam_checkpoint.parents[1]))

    monkeypatch.setattr("ovsam.ov.checkpoints.resolve_all", offline)
    engine = default_engine(ServeSettings(recognizer="ovsam", labels=True))
    assert engine.model_name == "mobilesam" and not engine.recognizer.available
    message = engine.recognizer.message
    assert message.startswith("no recognition weights: clip_RN50x16_openai, ovsam_")
    assert "(no network)" in message and "'ovsam download clip_RN50x16_openai ovsam_" in message
    model = save_ovsam(small_ovsam(), tmp_path / "mine.safetensors")  # CLIP weights missing
    settings = ServeSettings(recognizer="ovsam", checkpoint=str(model), clip_model="RN50")
    fallback = default_engine(replace(settings, labels=True))
    assert fallback.model_name == "mobilesam" and "clip_RN50_openai" in (
        fallback.recognizer.message
    )
    assert fallback.weights == "default"  # MobileSAM's, not the OV-SAM file's
    off = default_engine(ServeSettings(model="ovsam_coco", recognizer="ovsam"))
    assert off.model_name == "mobilesam" and "'ovsam serve --recognizer ovsam'" in (
        off.recognizer.message
    )


def test_random_recognition_builds_ovsam_and_marks_masks_and_labels_random(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[tuple[str, bool]] = []

    def small_model(name: str, checkpoint: object = None, pretrained: bool = True) -> object:
        built.append((name, pretrained))
        return small_ovsam()  # CLIP RN50 joint space, random as the real one would be

    monkeypatch.setattr(ovsam.build, "build_model", small_model)
    monkeypatch.setattr(
        ovsam.recognizers, "ovsam_config", lambda *_: SMALL_CONFIG
    )  # the stand-in's
    settings = ServeSettings(recognizer="ovsam", random_recognition=True, clip_model="RN50")
    engine = default_engine(settings)
    assert built == [("ovsam_coco", False)] and engine.model_name == "ovsam_coco"
    assert engine.weights == "random"
    assert engine.recognizer.random_weights and engine.recognizer.message == (
        "recognition: Open-Vocabulary SAM (CLIP2SAM head + frozen CLIP), random OV-SAM and "
        "CLIP weights (testing only): masks and labels are meaningless"
    )
    client = TestClient(create_app(settings, lambda _: engine))
    image_id = upload(client)
    client.post("/v1/vocabularies", json={"name": "mine", "names": ["cup", "saucer", "spoon"]})
    body = {"box": list(SAMPLE_BOX), "vocabulary": "mine", "top_k": 2}
    answer = client.post(f"/v1/images/{image_id}/predict", json=body).json()
    assert len(answer["labels"]) == 2 and answer["recognition"]["random_weights"] is True


def test_serve_options_choose_the_recognizer_and_its_clip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ovsam.cli.main import build_parser
    from ovsam.cli.serve_cmd import build_settings
    from ovsam.ov import save_ovsam

    def settings(*argv: str) -> ServeSettings:
        return build_settings(build_parser().parse_args(["serve", *argv]))

    assert (settings().recognizer, settings().labels) == ("image-crop", False)
    chosen = settings("--recognizer", "ovsam")
    assert (chosen.recognizer, chosen.labels, chosen.clip_model) == ("ovsam", True, "RN50x16")
    model = save_ovsam(small_ovsam(), tmp_path / "mine.safetensors")  # trained with CLIP RN50
    assert settings("--recognizer", "ovsam", "--model", str(model)).clip_model == "RN50"

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were fetched")

    monkeypatch.setattr("ovsam.ov.checkpoints.resolve_all", no_download)
    with pytest.raises(InputError, match="trained with CLIP RN50x16, .* pass --clip RN50x16"):
        default_engine(settings("--recognizer", "ovsam", "--clip", "RN50"))
    with pytest.raises(InputError, match="recognizer must be one of image-crop, ovsam"):
        ServeSettings(recognizer="feature-crop")


def test_recognize_logits_refuses_other_shapes_and_counts(
    predictors: tuple[SegmentationEngine, OVSamPredictor],
) -> None:
    reference = predictors[1]
    with pytest.raises(InputError, match=r"must be Nx256x256, got shape \(1, 64, 64\)"):
        reference.recognize_logits(np.zeros((1, 64, 64)))
    with pytest.raises(InputError, match="2 prompt boxes for 1 masks"):
        reference.recognize_logits(np.zeros((1, 256, 256)), np.array([SAMPLE_BOX, SAMPLE_BOX]))
    assert reference.recognize_logits(np.zeros((0, 256, 256)), np.zeros((0, 4))) == []
    with pytest.raises(InputError, match="low-res logits contains NaN or infinite values"):
        reference.recognize_logits(np.full((1, 256, 256), np.nan))
    with pytest.raises(InputError, match="low-res logits contains NaN or infinite values"):
        reference.recognize_logits(np.full((1, 256, 256), np.inf, dtype=np.float32))


def test_the_page_names_the_ovsam_model_and_clip_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """With (stand-ins for) the real weights the message names the model and the CLIP."""
    monkeypatch.setattr("ovsam.ov.checkpoints.resolve_all", lambda names: None)  # "present"
    monkeypatch.setattr(ovsam.build, "build_model", lambda *args, **kwargs: small_ovsam())
    monkeypatch.setattr(ovsam.recognizers, "ovsam_config", lambda *_: SMALL_CONFIG)
    monkeypatch.setattr(ovsam.recognizers, "_text_model", lambda options, device: text_model())
    engine = default_engine(ServeSettings(recognizer="ovsam", labels=True, clip_model="RN50"))
    assert engine.model_name == "ovsam_coco" and not engine.recognizer.random_weights
    assert engine.recognizer.message == (
        "recognition: Open-Vocabulary SAM (CLIP2SAM head + frozen CLIP), ovsam_coco with CLIP "
        "RN50 (openai)"
    )
