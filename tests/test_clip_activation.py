"""Which activation a CLIP built from a weights file gets: weights do not record it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from ovsam.clip.config import CLIP_CONFIGS, CLIPConfig, VisionConfig, get_clip_config
from ovsam.clip.factory import create_model, load_clip
from ovsam.clip.layers import QuickGELU
from ovsam.clip.model import CLIP
from ovsam.clip.tokenizer import tokenize
from tiny_clip import TINY_CLIP


def test_activation_of_weights_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A plain ViT state dict (e.g. LAION's open_clip weights) means exact GELU, with a warning,
    unless the name ends in ``-quickgelu``; a plain ResNet one means QuickGELU (every published
    ResNet CLIP used it)."""
    vit = CLIPConfig(64, VisionConfig("vit", 32, (1,), 64, 16), TINY_CLIP.text)
    monkeypatch.setitem(CLIP_CONFIGS, "tiny_vit", vit)
    path, resnet_path = tmp_path / "open_clip_vit.pt", tmp_path / "resnet.pt"
    torch.save(CLIP(vit).state_dict(), path)
    torch.save(CLIP(TINY_CLIP).state_dict(), resnet_path)
    assert not get_clip_config("tiny_vit").quick_gelu
    with pytest.warns(UserWarning, match="for OpenAI-trained weights name the model 'tiny_vit-q"):
        assert not create_model("tiny_vit", pretrained=path).config.quick_gelu
    with pytest.warns(UserWarning, match="for OpenAI-trained weights pass quick_gelu=True"):
        gelu_model = load_clip(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the activation is said: no warning
        quick_model = load_clip(path, name="tiny_vit-quickgelu")
        assert create_model("tiny_vit-quickgelu", pretrained=path).config.quick_gelu
        assert load_clip(path, quick_gelu=True).config.quick_gelu
        assert load_clip(resnet_path).config == TINY_CLIP  # QuickGELU
    assert type(gelu_model.transformer.resblocks[0].mlp.gelu) is torch.nn.GELU
    assert type(quick_model.transformer.resblocks[0].mlp.gelu) is QuickGELU
    tokens = tokenize(["a photo of a cat"])
    with torch.inference_mode():  # the same weights, another activation: other embeddings
        assert not torch.allclose(gelu_model.encode_text(tokens), quick_model.encode_text(tokens))
