"""Zero-shot recognition of image regions with CLIP: the paper's *Image-Crop* baseline.

Each region (a box, or a mask and its bounding box) is cut out of the image, optionally with
the pixels outside the mask replaced by CLIP's mean colour, padded to a square with that colour
(so the object is never cut), resized to the tower's input size, encoded, and compared with a
:class:`~ovsam.clip.text_bank.TextBank`: logits = ``exp(logit_scale)`` x cosine, softmax over
the vocabulary. Regions are encoded in batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from PIL import Image

from ovsam.boxes import clip_boxes_to_image
from ovsam.clip.model import CLIP, CLIP_MEAN, CLIP_STD
from ovsam.clip.text_bank import TextBank
from ovsam.errors import InputError
from ovsam.image_io import check_image_array
from ovsam.inference import inference_api
from ovsam.input_values import check_count
from ovsam.mask_statistics import mask_boxes
from ovsam.prompt_arrays import check_masks

_MEAN_RGB = tuple(round(255 * m) for m in CLIP_MEAN)


@dataclass(frozen=True)
class RegionLabels:
    """Recognition of N regions over a C-class vocabulary.

    ``probs``: ``NxC`` softmax probabilities; ``top_indices`` / ``top_scores``: ``Nxk``.
    """

    names: tuple[str, ...]
    probs: torch.Tensor
    top_indices: torch.Tensor
    top_scores: torch.Tensor

    def top_k(self) -> list[list[tuple[str, float]]]:
        """Per region, ``(name, probability)`` pairs best first."""
        return [
            [(self.names[i], float(s)) for i, s in zip(idx.tolist(), sc.tolist(), strict=True)]
            for idx, sc in zip(self.top_indices, self.top_scores, strict=True)
        ]


def mask_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """Tight ``Nx4`` XYXY pixel boxes (``x_max + 1``) of ``NxHxW`` masks; empty → InputError."""
    yxyx = mask_boxes(torch.from_numpy(np.require(masks, dtype=bool, requirements="W")))
    empty = (yxyx[:, 2] == 0).nonzero()
    if len(empty):
        raise InputError(f"mask {int(empty[0, 0])} is empty: nothing to recognise")
    return yxyx[:, [1, 0, 3, 2]].numpy().astype(np.float32)


def check_expand(expand: float) -> float:
    """``expand`` as a float; :class:`InputError` unless it is a finite number > 0 (a box
    scaled by 0 or less would be cut down to a one-pixel crop)."""
    if (
        isinstance(expand, bool)
        or not isinstance(expand, Real)
        or not math.isfinite(expand)
        or expand <= 0
    ):
        raise InputError(f"expand must be a finite number > 0 (1: the box itself), got {expand!r}")
    return float(expand)


def crop_regions(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    masks: np.ndarray | None = None,
    expand: float = 1.0,
) -> torch.Tensor:
    """``Nx3xSxS`` CLIP-normalised crops of ``boxes`` (``Nx4`` XYXY pixels, inside the image).

    ``expand`` scales each box about its centre (context around the object); ``masks``
    (``NxHxW`` bool), when given, blank everything outside each mask with the mean colour.
    """
    expand = check_expand(expand)
    height, width = image.shape[:2]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    crops = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy, half_w, half_h = (
            (x0 + x1) / 2,
            (y0 + y1) / 2,
            (x1 - x0) * expand / 2,
            (y1 - y0) * expand / 2,
        )
        left, top = max(0, int(np.floor(cx - half_w))), max(0, int(np.floor(cy - half_h)))
        right = min(width, max(left + 1, int(np.ceil(cx + half_w))))
        bottom = min(height, max(top + 1, int(np.ceil(cy + half_h))))
        patch = image[top:bottom, left:right].copy()
        if masks is not None:
            patch[~masks[i, top:bottom, left:right]] = _MEAN_RGB
        side = max(patch.shape[:2])
        canvas = Image.new("RGB", (side, side), _MEAN_RGB)
        canvas.paste(
            Image.fromarray(patch), ((side - patch.shape[1]) // 2, (side - patch.shape[0]) // 2)
        )
        canvas = canvas.resize((size, size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
        crops.append((pixels - mean) / std)
    return torch.stack(crops)


@inference_api
def classify_regions(
    model: CLIP,
    image: np.ndarray,
    bank: TextBank,
    *,
    boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
    masks: np.ndarray | None = None,
    top_k: int = 5,
    mask_background: bool = True,
    expand: float = 1.0,
    batch_size: int = 16,
) -> RegionLabels:
    """Recognise regions of ``image`` (``HxWx3`` uint8 RGB) given as ``boxes`` (``Nx4`` XYXY
    pixels) and/or ``masks`` (``NxHxW`` bool; their bounding boxes are used when no boxes are
    given; N may be 0). ``mask_background`` blanks pixels outside the masks; ``expand`` (> 0)
    scales each box about its centre. Returns :class:`RegionLabels`."""
    image = check_image_array(image)
    height, width = image.shape[:2]
    if model.embed_dim != bank.dim:
        raise InputError(
            f"text bank has {bank.dim} dims but the CLIP model embeds {model.embed_dim}"
        )
    if masks is not None:
        masks = check_masks(masks, (height, width))
    if boxes is None:
        if masks is None:
            raise InputError("give boxes or masks to recognise")
        boxes = mask_boxes_xyxy(masks)
    boxes = clip_boxes_to_image(boxes, height, width, allow_empty=True)
    if masks is not None and len(masks) != len(boxes):
        raise InputError(f"{len(boxes)} boxes but {len(masks)} masks")
    top_k, batch_size = check_count("top_k", top_k), check_count("batch_size", batch_size)
    check_expand(expand)  # also when there are no regions to crop
    size = model.image_size  # NotReadyError for a text-only model
    device = next(model.parameters()).device
    blank = masks if mask_background else None
    embeddings = [torch.zeros((0, model.embed_dim))]  # no regions: no labels
    for start in range(0, len(boxes), batch_size):
        sub_masks = None if blank is None else blank[start : start + batch_size]
        crops = crop_regions(image, boxes[start : start + batch_size], size, sub_masks, expand)
        embeddings.append(model.encode_image(crops.to(device), normalize=True).float().cpu())
    logits = model.logit_scale.exp().float().cpu() * bank.similarity(torch.cat(embeddings))
    probs = logits.softmax(dim=-1)
    scores, indices = probs.topk(min(top_k, len(bank)), dim=-1)
    return RegionLabels(bank.names, probs, indices, scores)
