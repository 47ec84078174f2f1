"""SAM + CLIP crop baselines on the real MobileSAM (labels from a small random CLIP)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
from ovsam.clip.model import CLIP
from ovsam.clip.region_classifier import classify_regions
from ovsam.clip.text_bank import TextBank
from ovsam.errors import InputError, NotReadyError
from ovsam.image_io import load_image
from ovsam.ov.baselines import CropBaselinePredictor
from ovsam.ov.roi_align import roi_align

TINY = CLIPConfig(
    32,
    VisionConfig("vit", 64, (2,), 64, 16),
    replace(get_clip_config("RN50").text, width=64, heads=1, layers=1),
    True,
)
NAMES = ["cup", "saucer", "spoon", "table"]
# these tests use a random CLIP on purpose (the warning itself is tested below)
pytestmark = pytest.mark.filterwarnings("ignore:CLIP model has random weights")


@pytest.fixture(scope="module")
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY).eval()


@pytest.mark.parametrize("kind", ["image-crop", "feature-crop"])
def test_baselines_segment_for_real_and_label_every_mask(
    mobilesam_model, clip: CLIP, kind: str
) -> None:
    predictor = CropBaselinePredictor(mobilesam_model, clip, kind, templates="none", top_k=3)
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    with pytest.raises(NotReadyError, match="no vocabulary"):
        predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    predictor.set_vocabulary(NAMES, progress=False)
    masks, scores, _, labels = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    x0, y0, x1, y1 = SAMPLE_BOX
    inside = masks[0, int(y0) : int(y1), int(x0) : int(x1)].sum()
    assert masks[0].sum() > 30_000 and inside / masks[0].sum() > 0.95  # the real cup
    assert len(labels) == 1 and [n for n, _ in labels[0].top][0] in NAMES
    assert sum(p for _, p in labels[0].top) <= 1.0 + 1e-6 and labels[0].background == 0.0
    _, _, _, multi = predictor.predict(
        point_coords=np.array([[290, 120]]), point_labels=np.array([1])
    )
    assert len(multi) == 3


def test_image_crop_equals_direct_classification(mobilesam_model, clip: CLIP) -> None:
    predictor = CropBaselinePredictor(
        mobilesam_model, clip, "image-crop", templates="none", top_k=4
    )
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    bank = predictor.set_vocabulary(NAMES, progress=False)
    masks, _, _, labels = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    direct = classify_regions(clip, image, bank, masks=masks, top_k=4).top_k()[0]
    assert [n for n, _ in labels[0].top] == [n for n, _ in direct]
    assert [p for _, p in labels[0].top] == pytest.approx([p for _, p in direct], abs=1e-6)


def test_feature_crop_region_equal_to_a_class_ranks_first(mobilesam_model, clip: CLIP) -> None:
    predictor = CropBaselinePredictor(mobilesam_model, clip, "feature-crop", templates="none")
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[50:300, 200:400] = True
    frame = torch.as_tensor(
        predictor.transform.apply_boxes(
            np.array([[200, 50, 400, 300]], np.float32), predictor.original_size
        )
    )
    rois = torch.cat([torch.zeros(1, 1), frame], dim=1)
    with torch.inference_mode():
        region = clip.visual.pool(
            roi_align(predictor.export_state().extras["clip_last"], rois, 4, 1 / 16)
        )
    bank = torch.cat([F.normalize(torch.randn(2, 32), dim=-1), F.normalize(region, dim=-1)])
    predictor.bank = TextBank(("a", "b", "target"), bank, torch.arange(3), "k")
    assert predictor.recognize_masks(mask[None])[0].label == "target"


def test_unknown_baseline_kind(mobilesam_model, clip: CLIP) -> None:
    with pytest.raises(InputError, match="unknown baseline 'pixel-crop'"):
        CropBaselinePredictor(mobilesam_model, clip, "pixel-crop")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["image-crop", "feature-crop"])
def test_random_clip_warns_once_and_marks_every_label(mobilesam_model, kind: str) -> None:
    import warnings

    torch.manual_seed(1)
    clip = CLIP(TINY)  # no weights loaded, as create_model(name) without pretrained
    with pytest.warns(UserWarning) as caught:
        predictor = CropBaselinePredictor(mobilesam_model, clip, kind, templates="none")
    assert [str(w.message) for w in caught] == [
        "CLIP model has random weights: labels are meaningless"
    ]
    predictor.set_image(load_image(SAMPLE_PHOTO))
    predictor.set_vocabulary(NAMES, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: not per prediction, not when opted in
        labels = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)[3]
        assert predictor.random_weights and labels[0].random_weights
        CropBaselinePredictor(mobilesam_model, clip, kind, allow_random_weights=True)
    clip.load_state_dict(clip.state_dict())  # weights loaded: the labels are no longer marked
    labels = predictor.recognize_masks(np.ones((1, 400, 600), dtype=bool))
    assert not predictor.random_weights and not labels[0].random_weights
