"""Import the upstream MobileSAM code (PyPI ``mobilesam-mirror==1.0.0``) without timm/torchvision.

Upstream imports a handful of names from ``timm`` and ``torchvision`` (whose CUDA wheels do
not import here). :func:`stand_ins` puts minimal pure-torch/PIL replacements for exactly those
names into ``sys.modules`` while ``mobile_sam`` is imported, then restores ``sys.modules`` so
no other code ever sees the fakes. Used by the parity tests and ``benchmarks/bench_mobilesam.py``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

INSTALL_HINT = ".venv/bin/pip install --no-deps mobilesam-mirror==1.0.0"


class DropPath(nn.Module):
    """timm's stochastic depth; identity in eval mode (all upstream uses are eval)."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.drop_prob:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_2tuple(x: object) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _to_pil_image(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image)


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision's ``resize`` of a PIL image to (h, w): bilinear."""
    return image.resize((size[1], size[0]), Image.BILINEAR)


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _batched_nms(*args: object, **kwargs: object) -> torch.Tensor:
    raise NotImplementedError("upstream automatic mask generation is not used here")


def _module(name: str, **attrs: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


@contextmanager
def stand_ins() -> Iterator[None]:
    """Temporarily provide the timm / torchvision names ``mobile_sam`` imports."""
    fakes = {
        "timm": _module("timm"),
        "timm.models": _module("timm.models"),
        "timm.models.layers": _module(
            "timm.models.layers",
            DropPath=DropPath,
            to_2tuple=_to_2tuple,
            trunc_normal_=nn.init.trunc_normal_,
        ),
        "timm.models.registry": _module("timm.models.registry", register_model=lambda fn: fn),
        "torchvision": _module("torchvision"),
        "torchvision.transforms": _module("torchvision.transforms"),
        "torchvision.transforms.functional": _module(
            "torchvision.transforms.functional", resize=_resize, to_pil_image=_to_pil_image
        ),
        "torchvision.ops": _module("torchvision.ops"),
        "torchvision.ops.boxes": _module(
            "torchvision.ops.boxes", batched_nms=_batched_nms, box_area=_box_area
        ),
    }
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def import_mobile_sam() -> types.ModuleType:
    """The upstream ``mobile_sam`` package (``ImportError`` when it is not installed)."""
    with stand_ins():
        import mobile_sam

    return mobile_sam


def build_upstream_mobilesam(checkpoint: str | Path) -> nn.Module:
    """Upstream MobileSAM with ``checkpoint`` loaded, in eval mode.

    ``eval()`` is called after loading as MobileSAM's README does: upstream caches the
    attention-bias table in ``eval()``, so calling it before loading would keep zeros.
    """
    model = import_mobile_sam().sam_model_registry["vit_t"](checkpoint=str(checkpoint))
    return model.eval()


def decode(
    model: nn.Module,
    embedding: torch.Tensor,
    multimask: bool,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder of a SAM-like ``model`` (ours or upstream), same calls.

    ``embedding`` ``1x256x64x64``; prompts in the 1024 input frame. Returns (low-res mask
    logits ``Bx(1|3)x256x256``, IoU predictions ``Bx(1|3)``).
    """
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
