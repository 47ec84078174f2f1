"""CLIP calls given something they cannot use: each is named, never a torch error from inside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovsam.clip.config import get_clip_config
from ovsam.clip.factory import create_model
from ovsam.clip.model import CLIP
from ovsam.clip.region_classifier import classify_regions
from ovsam.clip.text_bank import build_text_bank
from ovsam.clip.tokenizer import tokenize
from ovsam.errors import InputError, NotReadyError
from tiny_clip import TINY_CLIP


@pytest.mark.parametrize("name", ["ViT-H-14", "vit-b-32"])
def test_an_unknown_architecture_is_named_before_its_weights_tag(name: str) -> None:
    """It was "no pretrained weights 'openai' for CLIP ViT-H-14; known tags: none", as if the
    model were registered and only lacked weights."""
    with pytest.raises(InputError, match=f"^unknown CLIP model '{name}'; registered: RN50, "):
        create_model(name, pretrained="openai")


def test_a_quickgelu_name_with_quick_gelu_false_is_a_contradiction() -> None:
    """The suffix silently won over the explicit argument."""
    with pytest.raises(InputError, match="uses QuickGELU but quick_gelu=False was asked"):
        get_clip_config("ViT-B-32-quickgelu", quick_gelu=False)
    assert get_clip_config("ViT-B-32-quickgelu", quick_gelu=True).quick_gelu
    assert not get_clip_config("ViT-B-32", quick_gelu=False).quick_gelu


def test_tokens_longer_than_the_context_are_named() -> None:
    """torch said "The size of tensor a (100) must match the size of tensor b (77)"."""
    model = CLIP(TINY_CLIP).eval()
    with torch.inference_mode():
        assert model.encode_text(tokenize(["a cat"])).shape == (1, 64)
        assert model.encode_text(tokenize(["a cat"], context_length=20)).shape == (1, 64)
        with pytest.raises(InputError, match=r"^tokens must be BxL with L <= 77 .* got shape \(1, 100\): tokenize with context_length=77$"):  # fmt: skip
            model.encode_text(tokenize(["a cat"], context_length=100))
        with pytest.raises(InputError, match=r"got shape \(77,\)"):
            model.encode_text(tokenize(["a cat"])[0])


def test_regions_cannot_be_classified_by_a_text_only_model() -> None:
    """``classify_regions`` read ``model.visual.image_size`` first: an AttributeError about
    None, not the NotReadyError that says the tower was freed."""
    model = CLIP(TINY_CLIP).eval()
    bank = build_text_bank(model, ["cat", "dog"])
    image = np.zeros((32, 32, 3), np.uint8)
    labels = classify_regions(model, image, bank, boxes=[[0, 0, 16, 16]])
    assert labels.probs.shape == (1, 2)
    # ordinary tensors, not inference ones (usable in autograd, changeable in place)
    assert not labels.probs.is_inference() and not bank.embeddings.is_inference()
    model.without_image_tower()
    with pytest.raises(NotReadyError, match="image tower was freed"):
        classify_regions(model, image, bank, boxes=[[0, 0, 16, 16]])
    with pytest.raises(NotReadyError, match="image tower was freed"):
        _ = model.image_size
