"""Build a labelled predictor for the CLI / server: OV-SAM or a SAM + CLIP crop baseline.

Recognition needs CLIP weights (and, for ``ovsam``, the official OV-SAM files), which cannot
be downloaded everywhere. :func:`build_labeled_predictor` fetches them through the weights
registry and, when some are missing, raises :class:`RecognitionWeightsMissing`: one line naming
every missing file and the one ``ovsam download`` command that gets them. Random weights are
used only when the caller opts in (``random_weights=True``), for testing the pipeline; their
labels (and, with ``ovsam``, whose whole model is then random, the masks) are meaningless and
every output says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ovsam.errors import WeightsUnavailableError
from ovsam.vocab import BUILTIN_VOCABULARIES, Vocabulary, builtin_vocabulary

if TYPE_CHECKING:  # torch and the models load on first use: the CLI parser imports this module
    import torch

    from ovsam.ov.model import OVSamConfig

RECOGNIZERS = ("image-crop", "feature-crop", "ovsam")
DEFAULT_CLIP = "RN50x16"  # the official OV-SAM's CLIP, and the crop baselines' default
RANDOM_NOTE = "random recognition weights (testing only): labels are meaningless"
RANDOM_MODEL_NOTE = (
    "random OV-SAM and CLIP weights (testing only): masks and labels are meaningless"
)


class RecognitionWeightsMissing(WeightsUnavailableError):
    """Recognition was asked for but its weights are not available."""


@dataclass(frozen=True)
class LabelOptions:
    """How masks get names: ``recognizer`` (see ``RECOGNIZERS``), ``vocabulary`` (built-in name,
    file or names), ``top_k``, the CLIP architecture + weights (registered tag such as
    ``"openai"`` or a file) for the baselines and the text bank, ``random_weights`` opt-in,
    prompt ``templates`` (vild/openai/simple/none). ``checkpoint_given``: the segmenting model
    loads a checkpoint the caller named, so with ``random_weights`` and the ``ovsam``
    recognizer only the CLIP text side is random (its masks are real)."""

    vocabulary: str | Path | list[str] | Vocabulary = "coco"
    top_k: int = 5
    recognizer: str = "image-crop"
    clip_model: str = DEFAULT_CLIP
    clip_weights: str | Path = "openai"
    random_weights: bool = False
    templates: str = "vild"
    checkpoint_given: bool = False

    def __post_init__(self) -> None:
        """An unknown CLIP architecture is named here (it read as missing weights), and an
        alias is written as registered (``ViT-B/32`` is ``ViT-B-32``: its weights are found)."""
        from ovsam.clip.config import canonical_name, get_clip_config

        get_clip_config(self.clip_model)
        suffix = "-quickgelu" if self.clip_model.endswith("-quickgelu") else ""
        object.__setattr__(self, "clip_model", canonical_name(self.clip_model) + suffix)

    @property
    def random_masks(self) -> bool:
        """Whether the masks, too, come from random weights (a random OV-SAM model)."""
        return self.random_weights and self.recognizer == "ovsam" and not self.checkpoint_given

    def describe_weights(self) -> str:
        """The weights that name (with ``ovsam``: also segment) the masks, or the note that
        they are random and which outputs are therefore meaningless."""
        if not self.random_weights:
            return f"CLIP {self.clip_model} ({self.clip_weights})"
        return RANDOM_MODEL_NOTE if self.random_masks else RANDOM_NOTE

    def caption_note(self) -> str:
        """What a caption appends: which of its outputs come from random weights ('' if none)."""
        if not self.random_weights:
            return ""
        return " (random weights: mask and label)" if self.random_masks else " (random weights)"

    def describe_vocabulary(self) -> str | list[str]:
        """The vocabulary for a JSON record: a built-in name or file path as given, else the
        stripped class entries (``"saucer, plate"`` keeps its synonyms)."""
        vocabulary = self.vocabulary
        if isinstance(vocabulary, Vocabulary):  # a built-in's name only for its very classes
            if vocabulary.name in BUILTIN_VOCABULARIES and (
                vocabulary.fingerprint() == builtin_vocabulary(vocabulary.name).fingerprint()
            ):
                return vocabulary.name
            return [", ".join(names) for names in vocabulary.synonyms]
        if isinstance(vocabulary, (str, Path)):
            return str(vocabulary)
        return [entry.strip() for entry in vocabulary]


def recognition_record(options: LabelOptions | None) -> dict[str, object]:
    """The ``recognizer``, ``recognition_weights`` and ``vocabulary`` keys of a result JSON
    (``segment``'s ``result.json``, ``everything``'s ``masks.json``); None without labels."""
    return {
        "recognizer": None if options is None else options.recognizer,
        "recognition_weights": None if options is None else options.describe_weights(),
        "vocabulary": None if options is None else options.describe_vocabulary(),
    }


def required_weights(
    options: LabelOptions, sam_model: str = "mobilesam", checkpoint: str | Path | None = None
) -> list[str]:
    """The registered weights :func:`build_labeled_predictor` needs (none with random weights;
    local files are not listed)."""
    from ovsam.clip.pretrained import clip_weights_file, pretrained_weights_name
    from ovsam.ov import official_weights

    if options.random_weights:
        return []
    names: list[str] = []
    if clip_weights_file(options.clip_model, options.clip_weights) is None:
        names.append(pretrained_weights_name(options.clip_model, str(options.clip_weights)))
    if options.recognizer == "ovsam" and checkpoint is None:
        names += official_weights(segmentation_model_name(options, sam_model))
    return list(dict.fromkeys(names))


def is_ovsam_model(model: str) -> bool:
    """Whether ``model`` names an Open-Vocabulary SAM: a registered ``ovsam_*`` name or a file
    written by :func:`~ovsam.ov.save_ovsam` (read from its header)."""
    from ovsam.ov.checkpoints import is_ovsam_checkpoint

    return model.startswith("ovsam") or is_ovsam_checkpoint(model)


def checkpoint_given(sam_model: str, checkpoint: str | Path | None) -> bool:
    """:attr:`LabelOptions.checkpoint_given`: a checkpoint, or a model file (``build_model``
    loads it, random weights or not)."""
    from ovsam.ov.checkpoints import is_ovsam_checkpoint

    return checkpoint is not None or is_ovsam_checkpoint(sam_model)


def _check_model_and_checkpoint(name: str, checkpoint: str | Path | None) -> None:
    """Name an unknown model or a missing checkpoint file at once, as ``build_model`` would
    after the (hundreds of MB of) recognition weights were fetched."""
    from ovsam.build import get_model_entry, is_model_file
    from ovsam.checkpoint import checkpoint_file, looks_like_path
    from ovsam.weights import find_weights_spec

    if not is_model_file(name):
        get_model_entry(name)
    if checkpoint is None or (isinstance(checkpoint, str) and find_weights_spec(checkpoint)):
        return
    if not isinstance(checkpoint, str) or looks_like_path(checkpoint):
        checkpoint_file(checkpoint)


def segmentation_model_name(options: LabelOptions | None, sam_model: str) -> str:
    """The model that segments: ``sam_model``, except that the ``ovsam`` recognizer needs an
    OV-SAM model (``ovsam_coco`` unless ``sam_model`` is one: a registered name or a file
    written by :func:`~ovsam.ov.save_ovsam`)."""
    if options is None or options.recognizer != "ovsam" or is_ovsam_model(sam_model):
        return sam_model
    from ovsam.build import get_model_entry
    from ovsam.errors import InputError

    if sam_model.endswith(".safetensors"):  # meant as a model file: never the official one
        raise InputError(
            f"--model {sam_model} is not an OV-SAM model file (missing, or not written by "
            "'ovsam train export' / save_ovsam)"
        )
    get_model_entry(sam_model)  # a typo is named, not silently replaced
    return "ovsam_coco"


def ovsam_config(sam_model: str, checkpoint: str | Path | None = None) -> OVSamConfig:
    """The config of the OV-SAM the ``ovsam`` recognizer would build: recorded in a
    self-describing checkpoint (``checkpoint``, or ``sam_model`` given as a file), else the
    official model's (``sam_model``'s, or ``ovsam_coco``'s for a SAM). Read from file headers:
    no weights load."""
    from ovsam.ov import ALIAS_SUFFIX, OFFICIAL_CONFIGS
    from ovsam.ov.checkpoints import ovsam_checkpoint_config

    for path in (checkpoint, sam_model):
        config = None if path is None else ovsam_checkpoint_config(path)
        if config is not None:
            return config
    official = OFFICIAL_CONFIGS.get(sam_model.removesuffix(ALIAS_SUFFIX))
    return official or OFFICIAL_CONFIGS["ovsam_coco"]


def default_clip_model(recognizer: str, sam_model: str, checkpoint: str | Path | None) -> str:
    """The CLIP that embeds class names when none is chosen: for the ``ovsam`` recognizer the
    one its OV-SAM was trained with (:func:`ovsam_config`), else :data:`DEFAULT_CLIP`."""
    if recognizer == "ovsam":
        return ovsam_config(sam_model, checkpoint).clip_model
    return DEFAULT_CLIP


def default_clip_weights(recognizer: str, sam_model: str, checkpoint: str | Path | None) -> str:
    """The CLIP weights that embed class names when none are chosen: for the ``ovsam``
    recognizer the registered tag its OV-SAM records (:attr:`OVSamConfig.clip_weights`), else
    ``openai``. (One whose CLIP came from a file records that file, which
    :func:`build_labeled_predictor` then asks for.)"""
    if recognizer == "ovsam":
        config = ovsam_config(sam_model, checkpoint)
        if config.clip_weights and not config.clip_weights_sha256:
            return config.clip_weights
    return "openai"


def build_labeled_predictor(
    options: LabelOptions,
    sam_model: str = "mobilesam",
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    set_vocabulary: bool = True,
):  # noqa: ANN201 - OVSamPredictor | CropBaselinePredictor
    """A predictor whose ``predict`` returns ``(masks, scores, low_res, labels)``, with
    ``options.vocabulary`` set (unless ``set_vocabulary`` is False: the server sets a bank
    per request)."""
    import torch

    from ovsam.build import build_model
    from ovsam.errors import InputError
    from ovsam.ov.checkpoints import WeightsMissing, resolve_all

    if options.recognizer not in RECOGNIZERS:
        raise InputError(
            f"unknown recognizer {options.recognizer!r}; choose one of {', '.join(RECOGNIZERS)}"
        )
    name = segmentation_model_name(options, sam_model)
    _check_model_and_checkpoint(name, checkpoint)  # before recognition weights download
    random = options.random_weights
    if options.recognizer == "ovsam":  # checked before any download: a mismatch needs none
        config, model_name = ovsam_config(name, checkpoint), checkpoint or name
        _check_text_model(config.clip_model, options.clip_model, model_name)
        if not random:
            _check_text_weights(config, options.clip_weights, model_name)
    try:
        resolve_all(required_weights(options, sam_model, checkpoint))
    except WeightsMissing as exc:
        why = f" ({exc.reason})" if exc.reason else ""
        raise RecognitionWeightsMissing(
            f"no recognition weights: {', '.join(exc.missing)} could not be obtained{why}; get them "
            f"with 'ovsam download {' '.join(exc.missing)}' (or pass local files), or add "
            "--random-recognition to test the pipeline with random weights"
        ) from exc
    # random weights from seed 0: reproducible (meaningless) labels; the caller's RNG is kept
    with torch.random.fork_rng(devices=[], enabled=random):
        if random:
            torch.manual_seed(0)
        if options.recognizer == "ovsam":
            from ovsam.ov.predictor import OVSamPredictor

            model = build_model(name, checkpoint, pretrained=not random).to(device)
            predictor = OVSamPredictor(
                model,
                text_model=_text_model(options, device).without_image_tower(),
                templates=options.templates,
                top_k=options.top_k,
                allow_random_weights=random,
            )
        else:
            from ovsam.ov.baselines import CropBaselinePredictor

            sam = build_model(sam_model, checkpoint).to(device)
            predictor = CropBaselinePredictor(
                sam,
                _text_model(options, device),
                options.recognizer,
                templates=options.templates,
                top_k=options.top_k,  # type: ignore[arg-type]
                allow_random_weights=random,
            )
    if set_vocabulary:
        predictor.set_vocabulary(options.vocabulary)
    return predictor


def _text_model(options: LabelOptions, device: str) -> torch.nn.Module:
    """The CLIP model that embeds class names (random with ``options.random_weights``)."""
    from ovsam.clip.factory import create_model

    pretrained = None if options.random_weights else options.clip_weights
    return create_model(options.clip_model, pretrained=pretrained, device=device)


def _check_text_model(trained_with: str, chosen: str, model: str | Path) -> None:
    """An OV-SAM model matches class names embedded by the CLIP it was trained with only:
    another architecture is an :class:`~ovsam.errors.InputError` naming the one to pass."""
    from ovsam.clip.config import canonical_name
    from ovsam.errors import InputError

    if canonical_name(trained_with) != canonical_name(chosen):
        raise InputError(
            f"{model} was trained with CLIP {trained_with}, but the class names would be "
            f"embedded with CLIP {chosen}: pass --clip {trained_with}"
        )


def _check_text_weights(config: OVSamConfig, chosen: str | Path, model: str | Path) -> None:
    """An OV-SAM's class names must be embedded by the text tower of the CLIP weights its
    backbone holds, when its config records them: others (by tag, or by sha256 for a file)
    are an :class:`~ovsam.errors.InputError` naming the ones to pass. A missing file is left
    to the loader to report."""
    from ovsam.clip.config import canonical_name
    from ovsam.clip.pretrained import clip_weights_file, clip_weights_sha256
    from ovsam.errors import InputError

    recorded, digest = config.clip_weights, config.clip_weights_sha256
    if not recorded or (not digest and str(chosen) == recorded):
        return
    arch = canonical_name(config.clip_model)
    actual = clip_weights_sha256(arch, chosen)
    if actual is None and clip_weights_file(arch, chosen) is not None:
        return  # a missing file
    expected = digest or clip_weights_sha256(arch, recorded)
    if expected is not None and actual == expected:
        return
    if digest:
        wanted, hint = f"from the file {recorded} (sha256 {digest[:12]}...)", "that file"
    else:
        wanted, hint = repr(recorded), recorded
    raise InputError(
        f"{model} holds the CLIP {arch} weights {wanted}, but the class names would be "
        f"embedded with {str(chosen)!r}: pass --clip-weights {hint}"
    )
