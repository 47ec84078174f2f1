"""Build a labelled predictor for the CLI / server: OV-SAM or a SAM + CLIP crop baseline.

Recognition needs CLIP weights, which cannot be downloaded everywhere. :func:`build_labeled_predictor`
fetches them through the weights registry and, when they are missing, raises
:class:`RecognitionWeightsMissing` saying exactly which file to get and how. Random recognition
weights are used only when the caller opts in (``random_weights=True``), for testing the
pipeline; their labels are meaningless and every output says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ovsam.build import build_model
from ovsam.errors import WeightsUnavailableError
from ovsam.vocab import Vocabulary

RECOGNIZERS = ("image-crop", "feature-crop", "ovsam")
RANDOM_NOTE = "random recognition weights (testing only): labels are meaningless"


class RecognitionWeightsMissing(WeightsUnavailableError):
    """Recognition was asked for but its weights are not available."""


@dataclass(frozen=True)
class LabelOptions:
    """How masks get names: ``recognizer`` (see ``RECOGNIZERS``), ``vocabulary`` (built-in name,
    file or names), ``top_k``, the CLIP architecture + weights (registered tag such as
    ``"openai"`` or a file) for the baselines and the text bank, ``random_weights`` opt-in, prompt ``templates`` (vild/openai/simple/none)."""

    vocabulary: str | Path | list[str] | Vocabulary = "coco"
    top_k: int = 5
    recognizer: str = "image-crop"
    clip_model: str = "RN50x16"
    clip_weights: str | Path = "openai"
    random_weights: bool = False
    templates: str = "vild"

    def describe_weights(self) -> str:
        return (
            RANDOM_NOTE if self.random_weights else f"CLIP {self.clip_model} ({self.clip_weights})"
        )


def _missing(what: str, exc: Exception) -> RecognitionWeightsMissing:
    return RecognitionWeightsMissing(
        f"no recognition weights: {what} could not be loaded.\n{exc}\n"
        f"Get them with 'ovsam download {what}' (or pass a local file), or add "
        "--random-recognition to test the pipeline with random weights (labels meaningless)."
    )


def segmentation_model_name(options: LabelOptions | None, sam_model: str) -> str:
    """The registered model that segments: ``sam_model``, except that the ``ovsam``
    recognizer needs an OV-SAM model (``ovsam_coco`` unless ``sam_model`` is one)."""
    if options is None or options.recognizer != "ovsam" or sam_model.startswith("ovsam"):
        return sam_model
    return "ovsam_coco"


def build_labeled_predictor(
    options: LabelOptions,
    sam_model: str = "mobilesam",
    checkpoint: str | Path | None = None,
    device: str = "cpu",
):  # noqa: ANN201 - OVSamPredictor | CropBaselinePredictor
    """A predictor whose ``predict`` returns ``(masks, scores, low_res, labels)``."""
    from ovsam.clip.factory import create_model
    from ovsam.clip.pretrained import pretrained_weights_name
    from ovsam.errors import InputError

    if options.recognizer not in RECOGNIZERS:
        raise InputError(
            f"unknown recognizer {options.recognizer!r}; choose one of {', '.join(RECOGNIZERS)}"
        )
    pretrained = None if options.random_weights else options.clip_weights
    clip_name = (
        str(options.clip_weights)
        if Path(str(options.clip_weights)).is_file()
        else pretrained_weights_name(options.clip_model, str(options.clip_weights))
    )
    if options.random_weights:
        torch.manual_seed(0)  # reproducible (meaningless) labels
    try:
        clip = create_model(options.clip_model, pretrained=pretrained, device=device)
    except WeightsUnavailableError as exc:
        raise _missing(clip_name, exc) from exc
    if options.recognizer == "ovsam":
        from ovsam.ov.predictor import OVSamPredictor

        name = segmentation_model_name(options, sam_model)
        try:
            model = build_model(name, checkpoint, pretrained=not options.random_weights)
        except WeightsUnavailableError as exc:
            raise _missing(name, exc) from exc
        predictor = OVSamPredictor(
            model.to(device), text_model=clip, templates=options.templates, top_k=options.top_k
        )
    else:
        from ovsam.ov.baselines import CropBaselinePredictor

        sam = build_model(sam_model, checkpoint).to(device)
        predictor = CropBaselinePredictor(
            sam,
            clip,
            options.recognizer,
            templates=options.templates,
            top_k=options.top_k,  # type: ignore[arg-type]
        )
    predictor.set_vocabulary(options.vocabulary)
    return predictor
