"""``POST /v1/images/{id}/everything``: the CLI's segment-everything on the server, named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.assets import SAMPLE_PHOTO
from ovsam.automatic import AutomaticMaskGenerator
from ovsam.clip.config import CLIPConfig, VisionConfig
from ovsam.clip.model import CLIP
from ovsam.image_io import load_image
from ovsam.masks import decode_rle, mask_iou
from ovsam.ov.predictor import OVSamPredictor
from ovsam.predictor import SamPredictor
from ovsam_fixtures import small_ovsam
from synthetic_scenes import make_scene
from tiny_clip import TINY_TEXT

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ovsam.serve.app import create_app  # noqa: E402
from ovsam.serve.engine import SegmentationEngine  # noqa: E402
from ovsam.serve.recognition import OVSamRecognizer  # noqa: E402
from ovsam.serve.settings import ServeSettings  # noqa: E402


def upload(client: TestClient, image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    answer = client.post("/v1/images", files={"file": ("a.png", buf.getvalue(), "image/png")})
    assert answer.status_code == 201, answer.text
    return answer.json()["image_id"]


def test_the_masks_are_the_generators_and_unnamed_without_recognition(
    mobilesam_model: torch.nn.Module,
) -> None:
    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    client = TestClient(create_app(ServeSettings(), lambda _: engine))
    image, shapes = make_scene(0)
    image_id = upload(client, image)
    body = {"points_per_side": 8, "min_mask_region_area": 50}
    answer = client.post(f"/v1/images/{image_id}/everything", json=body)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    expected = AutomaticMaskGenerator(
        SamPredictor(mobilesam_model), points_per_side=8, min_mask_region_area=50
    ).generate(image)
    assert [m["rle"] for m in served["masks"]] == [r["rle"] for r in expected]
    assert [m["score"] for m in served["masks"]] == [r["predicted_iou"] for r in expected]
    assert [m["point"] for m in served["masks"]] == [r["point_coords"][0] for r in expected]
    for shape in shapes:
        assert max(mask_iou(decode_rle(m["rle"]), shape.mask) for m in served["masks"]) > 0.95
    assert all(m["labels"] == [] for m in served["masks"])
    assert served["score_name"] == "predicted_iou" and not served["recognition"]["available"]
    assert (served["width"], served["height"]) == (480, 360)
    # the model is back on no image: a prompt on the upload still answers for it
    box = [float(v) for v in shapes[0].box]
    prompt = client.post(f"/v1/images/{image_id}/predict", json={"box": box, "format": "rle"})
    assert mask_iou(decode_rle(prompt.json()["mask_rle"]), shapes[0].mask) > 0.95


@pytest.mark.filterwarnings("ignore:.* has random weights")
def test_masks_are_named_as_the_ovsam_predictor_names_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))  # not the user's banks
    names = ["cup", "saucer", "spoon", "table"]
    model = small_ovsam()
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(1024, VisionConfig("vit", 64, (2,), 64, 16), TINY_TEXT, True)).eval()
    served = OVSamPredictor(model, clip, templates="none", allow_random_weights=True)
    engine = SegmentationEngine(
        served, "small-ovsam", OVSamRecognizer(served, "tiny", random_weights=True)
    )
    client = TestClient(create_app(ServeSettings(), lambda _: engine))
    image = load_image(SAMPLE_PHOTO)
    image_id = upload(client, image)
    assert client.post("/v1/vocabularies", json={"name": "table", "names": names}).status_code
    body = {"points_per_side": 3, "pred_iou_thresh": -1.0, "stability_score_thresh": 0.0}
    answer = client.post(
        f"/v1/images/{image_id}/everything", json={**body, "vocabulary": "table", "top_k": 2}
    ).json()
    reference = OVSamPredictor(model, clip, templates="none", top_k=2, allow_random_weights=True)
    reference.set_vocabulary(names, progress=False)
    records = AutomaticMaskGenerator(reference, **body).generate(image)
    labels = reference.recognize_masks(np.stack([r["segmentation"] for r in records]))
    assert len(answer["masks"]) == len(records) > 0
    assert answer["score_name"] == "low_res_stability_score"
    for mask, record, named in zip(answer["masks"], records, labels, strict=True):
        assert mask["rle"] == record["rle"]
        assert [label["name"] for label in mask["labels"]] == [n for n, _ in named.top]
        scores = [label["score"] for label in mask["labels"]]
        assert scores == pytest.approx([p for _, p in named.top], abs=1e-6)
    assert answer["recognition"]["random_weights"] is True


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("unknown", {}, 404, "unknown image id 'unknown'"),
        (None, {"vocabulary": "nope"}, 404, "nope"),
        (None, {"points_per_side": 65}, 422, "less than or equal to 64"),
        (None, {"points_per_side": 4.0}, 422, "valid integer"),
        (None, {"crop_n_layers": 1}, 422, "crop_n_layers: unknown field"),
    ],
)
def test_bad_requests_are_refused_before_the_grid_runs(
    mobilesam_model: torch.nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    path: str | None,
    body: dict,
    status: int,
    text: str,
) -> None:
    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    client = TestClient(create_app(ServeSettings(), lambda _: engine))
    image_id = path or upload(client, np.full((32, 48, 3), 128, np.uint8))
    monkeypatch.setattr(engine, "everything", lambda *a: pytest.fail("the grid ran"))
    answer = client.post(f"/v1/images/{image_id}/everything", json=body)
    assert answer.status_code == status and text in answer.text
