"""A CLIP2SAM task that runs in milliseconds: :func:`install_tiny_clip2sam` makes
``Clip2SamTask`` build tiny random stand-ins for what it freezes (CLIP tower, SAM2CLIP adapter,
SAM and the text bank), so its data, prompts, trained head + FPN and losses are the real ones;
:func:`write_squares` draws COCO files of one square instance per image.

The stand-ins' CLIP stages are small maps (16² … 2²) and SAM's embedding 8x8, so the head's
mask logits are 32², and a region's FPN level is still chosen by its box: a square of 8 pixels
(of 128, so 64 of the 1024 frame) pools from level 0, one of 80 pixels from level 3.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ovsam.clip.text_bank import TextBank
from ovsam.modeling.mask_decoder import MaskDecoder
from ovsam.modeling.prompt_encoder import PromptEncoder
from ovsam.modeling.transformer import TwoWayTransformer
from ovsam.train.config import TrainConfig, task_config
from ovsam.vocab import Vocabulary

STAGE_SIZES = (16, 8, 4, 2)
EMBEDDING_SIZE = 8
COCO_IDS = {"person": 1, "car": 3, "cat": 17}  # person and car: OV-COCO base; cat: novel
BIG, SMALL, TINY = 80, 8, 2  # square sides: FPN level 3, level 0, under min_mask_area=300
MIN_MASK_AREA = 300  # a TINY square covers 16² = 256 pixels of the 1024 frame


class TinyVisual(nn.Module):
    """CLIP tower stand-in: four 4-channel stages pooled from the grey image."""

    stage_channels = (4, 4, 4, 4)
    stage_strides = (4, 8, 16, 32)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        grey = x.mean(1, keepdim=True)
        return [F.adaptive_avg_pool2d(grey, size).repeat(1, 4, 1, 1) for size in STAGE_SIZES]


class TinyAdapter(nn.Module):
    """SAM2CLIP adapter stand-in: a ``1x256x8x8`` embedding from the second stage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(stages[1][:, :1], EMBEDDING_SIZE)
        return pooled.repeat(1, 256, 1, 1)


class TinySam(nn.Module):
    """SAM stand-in: a prompt encoder for an 8x8 embedding and a random SAM mask decoder."""

    def __init__(self) -> None:
        super().__init__()
        size = (EMBEDDING_SIZE, EMBEDDING_SIZE)
        self.prompt_encoder = PromptEncoder(256, size, (1024, 1024), 16)
        transformer = TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
        self.mask_decoder = MaskDecoder(transformer_dim=256, transformer=transformer)
        self.register_buffer("pixel_mean", torch.full((3, 1, 1), 100.0), False)
        self.register_buffer("pixel_std", torch.full((3, 1, 1), 50.0), False)


def _tiny_clip(name: str, pretrained: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(visual=TinyVisual(), embed_dim=8)


def _tiny_sam(name: str, checkpoint: str | None = None) -> TinySam:
    return TinySam()


def _tiny_bank(clip: object, vocab: Vocabulary, templates: object, progress: bool) -> TextBank:
    embeddings = F.normalize(torch.randn(len(vocab.classes), 8), dim=-1)
    return TextBank(tuple(vocab.classes), embeddings, torch.arange(len(vocab.classes)), "tiny")


def install_tiny_clip2sam(setattr_: Callable[[object, str, object], object]) -> None:
    """Make ``Clip2SamTask`` build the stand-ins, through ``setattr_`` (``monkeypatch.setattr``
    in a test, ``setattr`` in a spawned rank)."""
    import ovsam.train.clip2sam_task as module

    setattr_(module, "create_model", _tiny_clip)
    setattr_(module, "build_model", _tiny_sam)
    setattr_(module, "build_text_bank", _tiny_bank)
    setattr_(module, "SAM2CLIPAdapter", TinyAdapter)


def write_squares(root: Path, squares: list[tuple[str, int]]) -> Path:
    """``root/images/{i}.png`` (128x128) with one square instance each, of the ``(class, side)``
    given, at (10, 10); returns ``root/instances.json``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data: dict[str, list[dict[str, Any]]] = {"images": [], "annotations": []}
    data["categories"] = [{"id": i, "name": n} for n, i in COCO_IDS.items()]
    for i, (name, side) in enumerate(squares, start=1):
        pixels = rng.integers(60, 120, (128, 128, 3), dtype=np.uint8)
        pixels[10 : 10 + side, 10 : 10 + side] = 220
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        data["images"].append({"id": i, "file_name": f"{i}.png", "height": 128, "width": 128})
        corners = [10, 10, 10 + side, 10, 10 + side, 10 + side, 10, 10 + side]
        data["annotations"].append(
            {"id": i, "image_id": i, "category_id": COCO_IDS[name], "iscrowd": 0,
             "bbox": [10, 10, side, side], "area": side * side, "segmentation": [corners]}
        )  # fmt: skip
    path = root / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def squares_config(root: Path, **fields: Any) -> TrainConfig:
    """A clip2sam configuration on :func:`write_squares`' files in ``root`` (run in
    ``root/run``): no LSJ, no warm-up, 2 prompts per image, ``min_mask_area`` 300, logged every
    step; ``fields`` override."""
    config = replace(
        task_config("clip2sam"),
        data=str(root / "images"),
        annotations=str(root / "instances.json"),
        out=str(root / "run"),
        lsj=False,
        warmup_steps=0,
        prompts_per_image=2,
        min_mask_area=MIN_MASK_AREA,
        log_every=1,
        grad_clip=1.0,
    )
    return replace(config, **fields)
