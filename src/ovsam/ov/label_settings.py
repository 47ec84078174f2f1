"""Settings of the labelled predictors (OV-SAM and the crop baselines), checked when built.

Checking them in the constructor means a wrong setting is an :class:`InputError` at once, not
after the first image has been embedded and its masks decoded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING

from ovsam.clip.config import CLIPConfig, canonical_name, registered_names_of
from ovsam.clip.text_bank import TextBank, check_templates
from ovsam.errors import InputError, NotReadyError
from ovsam.input_values import check_count
from ovsam.vocab import prompt_templates

if TYPE_CHECKING:
    from ovsam.image_state import ImageState


@dataclass(frozen=True)
class LabelSettings:
    """``templates``: prompt templates, each with one ``{}``; ``top_k`` (>= 1) labels per mask;
    a best probability below ``unknown_threshold`` (in [0, 1], or ``math.inf``: always) is
    reported as unknown."""

    templates: tuple[str, ...]
    top_k: int
    unknown_threshold: float


def check_label_settings(
    templates: str | Sequence[str], top_k: int, unknown_threshold: float
) -> LabelSettings:
    """The settings with a named template set (``"vild"``...) expanded, as plain Python values;
    :class:`InputError` naming the first one no prediction can use."""
    top_k = check_count("top_k", top_k)
    if (
        isinstance(unknown_threshold, bool)
        or not isinstance(unknown_threshold, Real)
        or not (0.0 <= unknown_threshold <= 1.0 or unknown_threshold == math.inf)
    ):
        raise InputError(
            f"unknown_threshold must be a probability in [0, 1] (or inf: every label unknown),"
            f" got {unknown_threshold!r}"
        )
    if isinstance(templates, str):
        names = prompt_templates(templates)
    elif isinstance(templates, Sequence) and all(isinstance(t, str) for t in templates):
        names = check_templates(templates)
    else:
        raise InputError(
            f"templates must be a template set's name or a list of strings, got {templates!r:.80}"
        )
    return LabelSettings(names, int(top_k), float(unknown_threshold))


def require_bank(bank: TextBank | None) -> TextBank:
    """``bank``, or :class:`NotReadyError` when no vocabulary has been set yet (checked before
    any mask is decoded, so that nothing is computed in vain)."""
    if bank is None:
        raise NotReadyError(
            "no vocabulary is set: call set_vocabulary(...) before predicting labels"
        )
    return bank


def require_extras(state: ImageState, names: Sequence[str], user: str, makers: str) -> None:
    """:class:`NotReadyError` when ``state`` (a loaded or restored image state) lacks any of
    the ``extras`` ``names`` that ``user`` labels with; ``makers`` says which states do."""
    missing = [name for name in names if name not in state.extras]
    if missing:
        raise NotReadyError(
            f"the {user} needs the image's {', '.join(map(repr, missing))}: call set_image on "
            f"this predictor ({makers} lack it)"
        )


def check_text_model(trained_with: str, text_model: object | None) -> None:
    """An OV-SAM trained with CLIP ``trained_with`` names regions only against class names its
    architecture's text tower embedded: another CLIP, even one of the same width (RN101 and
    ViT-B-32 are both 512-d), gives meaningless labels, so it is an :class:`InputError` naming
    the one to pass. None (no text model: banks are given directly) and a CLIP of no registered
    architecture (one's own, e.g. a tiny test model: nothing to compare) pass."""
    if text_model is None:
        return
    config = getattr(text_model, "config", None)
    if not isinstance(config, CLIPConfig):
        raise InputError(
            f"text_model must be a CLIP of ovsam.clip.create_model, not a {type(text_model).__name__}"
        )
    names = registered_names_of(config)
    if names and canonical_name(trained_with) not in names:
        raise InputError(
            f"this OV-SAM was trained with CLIP {trained_with}, but text_model is CLIP "
            f"{names[0]}: pass "
            f"text_model=ovsam.clip.create_model({trained_with!r}, pretrained=...)"
        )
