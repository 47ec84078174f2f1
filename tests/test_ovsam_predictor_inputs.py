"""OVSamPredictor refuses a model or text model it cannot use, by name, and labels regions a
batch at a time (the predictor's maths: ``test_ovsam_model``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsam.build import build_model
from ovsam.clip.config import get_clip_config
from ovsam.clip.model import CLIP
from ovsam.clip.text_bank import TextBank
from ovsam.errors import InputError
from ovsam.ov.predictor import OVSamPredictor
from ovsam_fixtures import small_ovsam

# these tests use random models on purpose (the warning itself: test_ovsam_checkpoints)
pytestmark = pytest.mark.filterwarnings("ignore:OVSam model has random weights")


def test_a_model_or_text_model_it_cannot_use_is_refused_by_name() -> None:
    """A plain SAM failed deep in torch ('Sam' object has no attribute 'encode'), and a text
    model of another CLIP of the same width (RN101 and ViT-B-32: 512-d) was taken silently."""
    with torch.device("meta"):
        sam = build_model("mobilesam", pretrained=False)
        other = CLIP(get_clip_config("ViT-B-32"))
        same = CLIP(get_clip_config("RN50"))
    with pytest.raises(InputError, match="^OVSamPredictor needs an OV-SAM model .*not a Sam; "):
        OVSamPredictor(sam)
    model = small_ovsam(5)  # trained with RN50
    message = "^this OV-SAM was trained with CLIP RN50, but text_model is CLIP ViT-B-32: pass "
    with pytest.raises(InputError, match=message):
        OVSamPredictor(model, text_model=other)
    taken = OVSamPredictor(model, text_model=same, allow_random_weights=True)
    assert taken.text_model is same


def test_regions_are_labelled_a_batch_at_a_time_with_the_same_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """classify_boxes pooled every region at once (about 9 MiB each with RN50x16: 4 GB for the
    500 masks of a segment-everything run); batches must not change a label."""
    import ovsam.ov.predictor as ov_predictor

    predictor = OVSamPredictor(small_ovsam(3), top_k=3)
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    bank = F.normalize(torch.randn(4, 1024, generator=torch.Generator().manual_seed(2)), dim=-1)
    predictor.set_text_bank(TextBank(("cat", "dog", "car", "cup"), bank, torch.arange(4), "b"))
    corners = torch.rand(5, 2, 2, generator=torch.Generator().manual_seed(4)) * 1000
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    whole = predictor.classify_boxes(boxes, boxes.flip(0))
    monkeypatch.setattr(ov_predictor, "REGIONS_PER_BATCH", 2)
    batched = predictor.classify_boxes(boxes, boxes.flip(0))
    assert [[n for n, _ in lab.top] for lab in batched] == [
        [n for n, _ in lab.top] for lab in whole
    ]
    probs = [[p for _, p in lab.top] for lab in batched]
    np.testing.assert_allclose(probs, [[p for _, p in lab.top] for lab in whole], rtol=1e-5)
    assert len({lab.top[0] for lab in whole}) > 1  # the regions are told apart
