"""On a CUDA device: each inference path gives the CPU's answer (skipped without a GPU)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.automatic import AutomaticMaskGenerator
from ovsam.cli.main import main
from ovsam.clip.model import CLIP
from ovsam.clip.text_bank import TextBank
from ovsam.distributed import DistInfo
from ovsam.image_io import load_image
from ovsam.mask_statistics import mask_statistics
from ovsam.masks import mask_iou
from ovsam.ov.baselines import CropBaselinePredictor
from ovsam.ov.predictor import OVSamPredictor
from ovsam.predictor import SamPredictor
from ovsam.train.clip2sam_task import Clip2SamTask
from ovsam.train.config import TrainConfig, apply_overrides
from ovsam.train.engine import Trainer
from ovsam_fixtures import small_ovsam
from synthetic_scenes import make_scene
from test_ovsam_baselines import NAMES, TINY
from tiny_coco import write_tiny_coco

pytestmark = pytest.mark.gpu
CLICK = {"point_coords": np.array([[300, 170]]), "point_labels": np.array([1])}


@pytest.fixture(scope="module")
def cuda_model(mobilesam_model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(mobilesam_model).to("cuda")


@pytest.mark.parametrize("cached", [True, False])
def test_predictor_on_cuda_gives_the_cpu_masks(
    mobilesam_model: torch.nn.Module, cuda_model: torch.nn.Module, cached: bool
) -> None:
    image = load_image(SAMPLE_PHOTO)
    answers = []
    for model in (mobilesam_model, cuda_model):
        predictor = SamPredictor(model, cache_image_tokens=cached)
        predictor.set_image(image)
        answers.append(
            [
                predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False),
                predictor.predict(**CLICK, multimask_output=True),
            ]
        )
    for (cpu_masks, cpu_scores, cpu_logits), (masks, scores, logits) in zip(*answers, strict=True):
        assert masks.dtype == bool and masks.shape == cpu_masks.shape
        assert all(mask_iou(a, b) > 0.99 for a, b in zip(masks, cpu_masks, strict=True))
        np.testing.assert_allclose(scores, cpu_scores, atol=5e-3)
        assert np.abs(logits - cpu_logits).max() < 1e-2 * np.abs(cpu_logits).max()


def test_batched_boxes_on_cuda_give_the_cpu_masks(
    mobilesam_model: torch.nn.Module, cuda_model: torch.nn.Module
) -> None:
    image = load_image(SAMPLE_PHOTO)
    boxes = np.array([SAMPLE_BOX, [0, 0, 300, 200], [350, 100, 600, 400]], dtype=np.float32)
    answers = []
    for model in (mobilesam_model, cuda_model):
        predictor = SamPredictor(model)
        predictor.set_image(image)
        answers.append(predictor.predict_boxes(boxes))
    (cpu_masks, cpu_scores, _), (masks, scores, _) = answers
    assert predictor.export_state().decoder_cache is None  # by default on the CPU only
    assert masks.shape == cpu_masks.shape == (3, 1, 400, 600)
    assert all(mask_iou(a[0], b[0]) > 0.99 for a, b in zip(masks, cpu_masks, strict=True))
    np.testing.assert_allclose(scores, cpu_scores, atol=5e-3)


def test_everything_on_cuda_finds_each_shape_once(cuda_model: torch.nn.Module) -> None:
    image, shapes = make_scene(0)
    records = AutomaticMaskGenerator(SamPredictor(cuda_model), points_per_side=8).generate(image)
    for shape in shapes:
        matches = [mask_iou(r["segmentation"], shape.mask) for r in records]
        assert max(matches) >= 0.95 and sum(m > 0.9 for m in matches) == 1, shape.name


def test_mask_statistics_on_cuda_equal_the_cpu_bands() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = F.interpolate(torch.randn(4, 1, 48, 72, generator=generator) * 8, (683, 1024))[:, 0]
    cpu = mask_statistics(logits, (427, 640), 0.0, 1.0, 4)
    gpu = mask_statistics(logits.cuda(), (427, 640), 0.0, 1.0, 4)
    # the same bilinear maths on another device: pixels within rounding of a level may flip
    area = cpu.area.float()
    assert ((gpu.area.cpu() - area).abs() <= 1e-3 * area + 2).all()
    torch.testing.assert_close(gpu.stability.cpu(), cpu.stability, rtol=0, atol=1e-3)
    assert (gpu.cells.cpu() != cpu.cells).float().mean() < 1e-3


def test_segment_cli_on_cuda_writes_the_cpu_mask(tmp_path: Path) -> None:
    box = [str(v) for v in SAMPLE_BOX]
    masks = []
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        argv = ["segment", str(SAMPLE_PHOTO), "--box", *box, "--out", str(out), "--device", device]
        assert main(argv) == 0
        masks.append(np.asarray(Image.open(out / "mask.png")) > 0)
    assert masks[0].sum() > 40_000 and mask_iou(masks[0], masks[1]) > 0.99


@pytest.mark.filterwarnings("ignore:OVSam model has random weights")
def test_ovsam_predictor_on_cuda_gives_the_cpu_masks_and_labels() -> None:
    names = ("cup", "table", "plate")
    bank = TextBank(
        names, F.normalize(torch.randn(3, 1024, generator=torch.Generator().manual_seed(1)), dim=-1),
        torch.arange(3), "k",
    )  # fmt: skip
    image = load_image(SAMPLE_PHOTO)
    answers = []
    for device in ("cpu", "cuda"):
        predictor = OVSamPredictor(small_ovsam().to(device), top_k=3)
        predictor.set_text_bank(bank)
        predictor.set_image(image)
        answers.append(predictor.predict(box=np.array(SAMPLE_BOX)))
    (cpu_masks, cpu_scores, _, cpu_labels), (masks, scores, _, labels) = answers
    assert mask_iou(masks[0], cpu_masks[0]) > 0.98
    np.testing.assert_allclose(scores, cpu_scores, atol=1e-2)
    cpu_top, top = dict(cpu_labels[0].top), dict(labels[0].top)
    assert cpu_top.keys() == top.keys()
    assert all(top[n] == pytest.approx(p, abs=1e-2) for n, p in cpu_top.items())


def test_clip2sam_trains_at_bf16_on_cuda(tmp_path: Path, mobilesam_checkpoint: Path) -> None:
    data = tmp_path / "data"
    write_tiny_coco(data, images=1)
    config = apply_overrides(
        TrainConfig(
            data=str(data / "images"),
            annotations=str(data / "instances.json"),
            out=str(tmp_path / "run"),
        ),
        [
            "task=clip2sam", "steps=6", "lr=1e-3", "random_clip=true", "clip_model=RN50",
            "adapter_dim=64", "adapter_depth=2", "adapter_heads=2", "vocabulary=dataset",
            "lsj=false", "log_every=1", "checkpoint_every=3", "grad_clip=1.0",
        ],
    )  # fmt: skip
    device = torch.device("cuda")
    task = Clip2SamTask(config, device)
    rows = Trainer(config, task, DistInfo(0, 1, 0, device)).train()
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]


@pytest.mark.filterwarnings("ignore:CLIP model has random weights")
@pytest.mark.parametrize("kind", ["image-crop", "feature-crop"])
def test_crop_baselines_on_cuda_give_the_cpu_masks_and_labels(
    mobilesam_model: torch.nn.Module, cuda_model: torch.nn.Module, kind: str
) -> None:
    torch.manual_seed(0)
    clip = CLIP(TINY).eval()
    image = load_image(SAMPLE_PHOTO)
    answers = []
    for model, device in ((mobilesam_model, "cpu"), (cuda_model, "cuda")):
        predictor = CropBaselinePredictor(
            model, copy.deepcopy(clip).to(device), kind, templates="none", top_k=4
        )
        predictor.set_vocabulary(NAMES, progress=False)
        predictor.set_image(image)
        answers.append(predictor.predict_boxes(np.array([SAMPLE_BOX, [0, 0, 300, 200]])))
    (cpu_masks, _, _, cpu_labels), (masks, _, _, labels) = answers
    assert all(mask_iou(a[0], b[0]) > 0.99 for a, b in zip(masks, cpu_masks, strict=True))
    for cpu_label, label in zip(cpu_labels, labels, strict=True):
        cpu_top, top = dict(cpu_label.top), dict(label.top)
        assert cpu_top.keys() == top.keys()
        assert all(top[n] == pytest.approx(p, abs=1e-2) for n, p in cpu_top.items())


def test_serve_on_cuda_gives_the_cpu_answer(mobilesam_checkpoint: Path) -> None:
    """``ovsam serve --device cuda``: the page's answers equal those of a CPU server."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ovsam.serve.app import create_app, default_engine
    from ovsam.serve.settings import ServeSettings

    answers = []
    for device in ("cpu", "cuda"):
        settings = ServeSettings(device=device)
        client = TestClient(create_app(settings, default_engine))
        image = client.post("/v1/images/sample").json()["image_id"]
        body = {"box": list(SAMPLE_BOX), "format": "rle"}
        answers.append(client.post(f"/v1/images/{image}/predict", json=body).json())
    cpu, gpu = answers
    assert abs(gpu["area"] - cpu["area"]) <= 0.01 * cpu["area"] and cpu["area"] > 40_000
    assert gpu["score"] == pytest.approx(cpu["score"], abs=5e-3)
