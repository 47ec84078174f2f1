"""CLIP: an image tower and a causal text transformer embedding into one joint space.

The module tree (and so every state-dict key) is OpenAI's: ``visual.*`` (see
:mod:`ovsam.clip.resnet`, :mod:`ovsam.clip.vit`, :mod:`ovsam.clip.convnext`),
``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N.*``, ``ln_final``,
``text_projection`` and the scalar ``logit_scale`` (log of the softmax temperature's inverse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovsam.clip.config import CLIPConfig
from ovsam.clip.convnext import ConvNeXtTower
from ovsam.clip.layers import LayerNorm, Transformer
from ovsam.clip.resnet import ModifiedResNet
from ovsam.clip.vit import VisionTransformer
from ovsam.errors import InputError, NotReadyError

# CLIP's image normalisation (RGB in [0, 1])
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_vision_tower(config: CLIPConfig) -> ModifiedResNet | VisionTransformer | ConvNeXtTower:
    """The image tower of ``config``, randomly initialised."""
    v = config.vision
    if v.kind == "resnet":
        heads = v.width * 32 // 64
        return ModifiedResNet(v.layers, config.embed_dim, heads, v.image_size, v.width)
    if v.kind == "vit":
        assert v.patch_size is not None
        return VisionTransformer(
            v.image_size,
            v.patch_size,
            v.width,
            v.layers[0],
            v.vit_heads,
            config.embed_dim,
            config.quick_gelu,
        )
    return ConvNeXtTower(v.layers, v.dims, config.embed_dim, v.head, v.image_size, v.norm_eps)


class RandomWeightsFlag(nn.Module):
    """Mixin: ``random_weights`` is True (random initialisation) until ``load_state_dict`` loads
    weights, which every loader ends with. Labelled predictors check it (see
    :func:`ovsam.ov.classifier.check_random_weights`): labels from random weights are meaningless.
    """

    random_weights: bool = True

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:  # noqa: ANN401 - torch's _IncompatibleKeys
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.random_weights = False
        return result


class CLIP(RandomWeightsFlag):
    """Contrastive image/text model. Images: ``Bx3xHxW`` normalised with ``CLIP_MEAN/STD``;
    text: ``BxL`` token ids from :mod:`ovsam.clip.tokenizer` (EOT = highest id, pooled).
    ``random_weights`` stays True until weights are loaded (:class:`RandomWeightsFlag`)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        text = config.text
        self.visual = build_vision_tower(config)
        self.transformer = Transformer(text.width, text.layers, text.heads, config.quick_gelu)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.ln_final = LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        causal = torch.full((text.context_length, text.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self._init_text()

    def _init_text(self) -> None:
        width, layers = self.config.text.width, self.config.text.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = (
            (width**-0.5) * ((2 * layers) ** -0.5),
            width**-0.5,
            (2 * width) ** -0.5,
        )
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def without_image_tower(self) -> CLIP:
        """Free the image tower, for a model that only embeds class names (OV-SAM's text model:
        its own backbone sees the images; RN50x16's tower holds 167M parameters). Returns the
        model; :meth:`encode_image` and :meth:`image_features` then raise."""
        self.visual = None
        return self

    def _image_tower(self) -> nn.Module:
        if self.visual is None:
            raise NotReadyError("this CLIP's image tower was freed (without_image_tower)")
        return self.visual

    @property
    def image_size(self) -> int:
        """Side of the square images the image tower takes (pixels)."""
        return self._image_tower().image_size

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``Bx3xHxW`` → ``BxD`` image embeddings (L2-normalised if ``normalize``)."""
        features = self._image_tower()(images)
        return F.normalize(features, dim=-1) if normalize else features

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage dense maps of the image tower (see each tower's ``forward_features``)."""
        return self._image_tower().forward_features(images)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``BxL`` token ids (``L`` at most the text tower's context length, 77 for every
        registered model) → ``BxD`` text embeddings taken at each row's EOT token."""
        context = self.positional_embedding.shape[0]
        if tokens.ndim != 2 or tokens.shape[1] > context:
            raise InputError(
                f"tokens must be BxL with L <= {context} (this CLIP's context length), got shape "
                f"{tuple(tokens.shape)}: tokenize with context_length={context}"
            )
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x, _ = self.transformer(x, attn_mask=self.attn_mask[:length, :length].to(x.dtype))
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text embeddings and ``exp(logit_scale)``."""
        return (
            self.encode_image(images, normalize=True),
            self.encode_text(tokens, normalize=True),
            self.logit_scale.exp(),
        )
