"""Class probabilities of OV-SAM: CLIP2SAM and frozen-CLIP logits fused geometrically.

Both branches score a region embedding against the text bank: ``exp(logit_scale)`` x cosine,
with a trailing all-zero "background" class (cosine 0). Each is softmaxed over the C classes +
background, then fused per class as ``p = p_head^(1-a) * p_clip^a`` with ``a = alpha_seen`` for
classes seen in training and background, ``alpha_unseen`` for the others (0 where the mask
does not reach the frozen-CLIP map, :func:`reaches_clip_map`: head only), and renormalised
(the official ``open_voc_inference`` takes the argmax of the same quantity). The label is the
best non-background class.

**Unknown.** A prediction is reported as ``"unknown"`` when its best probability is below
``unknown_threshold``. :func:`calibrate_unknown_threshold` sets it from a labelled validation set:
the lowest score at which the top-1 precision of the predictions kept reaches a target
(``math.inf`` when none does: everything is unknown).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovsam.clip.text_bank import TextBank
from ovsam.errors import InputError

UNKNOWN = "unknown"
RANDOM_WEIGHTS_WARNING = "{} model has random weights: labels are meaningless"


def bank_logits(embeddings: Tensor, bank: TextBank, logit_scale: float) -> Tensor:
    """``Bx(C+1)`` logits: scaled cosine to each class, then the zero background logit."""
    cos = bank.similarity(embeddings.float())
    return torch.cat([cos, cos.new_zeros((cos.shape[0], 1))], dim=1) * float(np.exp(logit_scale))


def reaches_clip_map(logits: Tensor, size: Sequence[int]) -> Tensor:
    """``B`` booleans: whether each ``BxHxW`` low-res mask keeps a positive logit once resized
    bilinearly (no antialias) to the frozen-CLIP map's ``size`` (the official
    ``valid_masking``). A small or thin mask can have positive pixels at 256² and none at 32²:
    its label then comes from the CLIP2SAM head alone."""
    if len(logits) == 0:
        return torch.zeros(0, dtype=torch.bool, device=logits.device)
    resized = F.interpolate(
        logits[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False
    )
    return (resized > 0).flatten(1).any(1)


def fused_probabilities(
    head_logits: Tensor,
    clip_logits: Tensor,
    seen: Tensor,
    alpha_seen: float,
    alpha_unseen: float,
    valid: Tensor | None = None,
) -> Tensor:
    """``Bx(C+1)`` probabilities from both branches' ``Bx(C+1)`` logits (see module docstring).

    ``seen``: ``C`` booleans; ``valid``: ``B`` booleans (False → the head alone decides).
    """
    # In log space: a class whose probability underflows in one branch stays out (the
    # official product gives it 0), where clamping that probability would revive it.
    # Clamped to the dtype's lowest so that a weight of 0 times a -inf log is 0, not NaN.
    lowest = torch.finfo(head_logits.dtype).min
    log_head = head_logits.log_softmax(-1).clamp_min(lowest)
    log_clip = clip_logits.log_softmax(-1).clamp_min(lowest)
    seen = seen.to(log_head.device, torch.bool)  # a bank's flags may live on another device
    seen_bg = torch.cat([seen, seen.new_ones(1)])
    alpha = torch.where(seen_bg, alpha_seen, alpha_unseen).to(log_head.dtype).expand_as(log_head)
    if valid is not None:
        alpha = alpha * valid.to(alpha.dtype)[:, None]
    return ((1 - alpha) * log_head + alpha * log_clip).softmax(-1)


def check_random_weights(*models: nn.Module | None, allow: bool = False) -> bool:
    """Whether any of ``models`` still has random weights (``random_weights``, see
    :class:`~ovsam.clip.model.RandomWeightsFlag`); if so, and the caller did not ``allow`` it
    (opt-in for tests, like ``--random-recognition``), a :class:`UserWarning` says so."""
    random = [type(m).__name__ for m in models if getattr(m, "random_weights", False)]
    if random and not allow:
        warnings.warn(RANDOM_WEIGHTS_WARNING.format("/".join(random)), UserWarning, stacklevel=3)
    return bool(random)


@dataclass(frozen=True)
class Labels:
    """Per region: ``top`` = ``[(name, probability), ...]`` best first over the vocabulary,
    ``label`` = best name or ``"unknown"``, ``background`` = probability of "no object";
    ``random_weights``: True when they come from random weights (meaningless)."""

    top: list[tuple[str, float]]
    label: str
    background: float
    random_weights: bool = False


def top_labels(
    probs: Tensor,
    names: Sequence[str],
    top_k: int,
    unknown_threshold: float = 0.0,
    random_weights: bool = False,
) -> list[Labels]:
    """Turn ``Bx(C+1)`` probabilities into :class:`Labels` (background excluded from top-k;
    ``random_weights`` marks every one)."""
    if top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    classes = probs[:, :-1]
    scores, indices = classes.topk(min(top_k, classes.shape[1]), dim=-1)
    out = []
    for row in range(probs.shape[0]):
        top = [
            (names[i], float(s))
            for i, s in zip(indices[row].tolist(), scores[row].tolist(), strict=True)
        ]
        label = top[0][0] if top[0][1] >= unknown_threshold else UNKNOWN
        out.append(Labels(top, label, float(probs[row, -1]), random_weights))
    return out


def calibrate_unknown_threshold(
    scores: Sequence[float], correct: Sequence[bool], target_precision: float = 0.9
) -> float:
    """Lowest top-1 score whose kept predictions (score >= it) reach ``target_precision``.

    ``scores``: best probability per validation region; ``correct``: whether its top-1 label
    was right. Returns ``math.inf`` (everything unknown) if no threshold reaches the target:
    1.0 would keep the predictions of probability 1 (as rounded), which can be wrong ones.
    Equal scores are kept or dropped together, so precision is counted over whole groups.
    """
    s, c = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    if s.shape != c.shape or s.size == 0:
        raise InputError("scores and correct must be non-empty and of equal length")
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    precision = np.cumsum(c[order]) / np.arange(1, s.size + 1)
    group_end = np.append(ranked[1:] != ranked[:-1], True)  # last of each equal score
    ok = np.nonzero((precision >= target_precision) & group_end)[0]
    return float(ranked[ok[-1]]) if ok.size else math.inf
