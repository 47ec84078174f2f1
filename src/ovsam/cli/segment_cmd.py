"""``ovsam segment IMAGE --box X0 Y0 X1 Y1 | --point X Y ... --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ovsam.cli.arg_types import StoreOnce, nonempty_text, output_path

if TYPE_CHECKING:  # the parser must import nothing heavy (see ovsam.cli.main)
    from ovsam.recognizers import LabelOptions
    from ovsam.vocab import Vocabulary

DEFAULT_MODEL = "mobilesam"


def add_model_arguments(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """``--model``, ``--checkpoint`` and (with ``device``) ``--device``, shared by commands that
    run a model."""
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="registered model name (ovsam models)"
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file or registered weights name (default: the model's)",
    )
    if device:
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment the object at a box or points",
        description="Segment the object marked by a box and/or points; write mask.png, "
        "overlay.png and result.json into --out.",
    )
    parser.add_argument("image", type=Path, help="image file (PNG, JPEG, ...)")
    parser.add_argument(
        "--box",
        nargs=4,
        type=float,
        action=StoreOnce,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="XYXY pixels (once)",
    )
    parser.add_argument(
        "--point", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"),
        help="a point on the object (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--negative", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"),
        help="a point NOT on the object (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=output_path, required=True, help="output folder")
    add_model_arguments(parser)
    add_label_arguments(parser)
    parser.set_defaults(run=run)


def add_clip_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--clip`` (default None: the command picks, see its help), ``--clip-weights`` and
    ``--random-recognition``, which exclude each other: random weights load no file (segment,
    everything, eval and serve)."""
    group.add_argument(
        "--clip", default=None, type=nonempty_text,
        help="CLIP architecture for recognition (default: with --recognizer ovsam the one its "
        "model was trained with, else RN50x16)",
    )  # fmt: skip
    weights = group.add_mutually_exclusive_group()
    weights.add_argument(
        "--clip-weights", default=None, type=nonempty_text,
        help="pretrained tag (openai, ...) or checkpoint file (default: with --recognizer ovsam "
        "the tag its model records, else openai; a model trained on a CLIP file asks for it)",
    )  # fmt: skip
    weights.add_argument(
        "--random-recognition", action="store_true",
        help="test the pipeline with random recognition weights (labels are meaningless)",
    )  # fmt: skip


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that name the mask (recognition)."""
    from ovsam.recognizers import RECOGNIZERS
    from ovsam.vocab import BUILTIN_VOCABULARIES

    group = parser.add_argument_group("labels (recognition)")
    group.add_argument(
        "--labels", action="store_true",
        help="name the mask as well (from coco unless --vocab; implied by every option below)",
    )  # fmt: skip
    group.add_argument(
        "--vocab", default=None,
        help=f"{' | '.join(BUILTIN_VOCABULARIES)} | FILE (.txt: one class per line, commas "
        "separate synonyms, '#' comments) | 'cat; dog, puppy; mug' (classes split at ';', "
        "else at ',')",
    )  # fmt: skip
    group.add_argument(
        "--top-k", type=int, default=None, help="labels reported per mask (default 5)"
    )
    group.add_argument(
        "--recognizer", choices=RECOGNIZERS, default=None, help="default image-crop"
    )  # fmt: skip
    group.add_argument(
        "--templates", default=None, choices=["vild", "openai", "simple", "none"],
        help="prompt templates for class names (default vild: 14; simple/none are faster)",
    )  # fmt: skip
    add_clip_arguments(group)


# What add_label_arguments' options default to once labels are on (None: not given).
_LABEL_DEFAULTS = {"top_k": 5, "recognizer": "image-crop", "templates": "vild"}


def label_options(args: argparse.Namespace) -> LabelOptions | None:
    """:class:`~ovsam.recognizers.LabelOptions` from the parsed flags (None without labels).

    Any option of :func:`add_label_arguments` turns labels on, as ``--recognizer`` does for
    ``ovsam serve``: given alone, they were silently ignored."""
    from ovsam.errors import InputError
    from ovsam.vocab import parse_vocabulary_argument

    options = ("vocab", "clip", "clip_weights", *_LABEL_DEFAULTS)
    given = any(getattr(args, name) is not None for name in options)
    if not (args.labels or given or args.random_recognition):
        return None
    for name, default in _LABEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.top_k < 1:  # checked before any model is loaded
        raise InputError(f"--top-k must be at least 1, got {args.top_k}")
    vocabulary = parse_vocabulary_argument("coco" if args.vocab is None else args.vocab)
    return recognition_options(args, vocabulary, top_k=args.top_k)


def recognition_options(
    args: argparse.Namespace, vocabulary: str | Path | list[str] | Vocabulary, top_k: int = 5
) -> LabelOptions:
    """:class:`~ovsam.recognizers.LabelOptions` naming masks from ``vocabulary`` with the
    recognition flags (``--recognizer``, ``--templates``, :func:`add_clip_arguments`) and
    ``--checkpoint`` (segment, everything and eval)."""
    from ovsam.recognizers import (
        LabelOptions,
        checkpoint_given,
        default_clip_model,
        default_clip_weights,
    )

    chosen = (args.recognizer, args.model, args.checkpoint)
    clip = args.clip or default_clip_model(*chosen)
    options = LabelOptions(
        vocabulary=vocabulary,
        top_k=top_k,
        recognizer=args.recognizer,
        clip_model=clip,
        clip_weights=args.clip_weights or default_clip_weights(*chosen),
        random_weights=args.random_recognition,
        templates=args.templates,
        checkpoint_given=checkpoint_given(args.model, args.checkpoint),
    )
    _check_names_fit(options)
    return options


def _check_names_fit(options: LabelOptions) -> None:
    """Refuse now, before any model is loaded, a typed or file vocabulary with a name too long
    for CLIP's text context in some template (the built-ins all fit); the text bank's own
    check then repeats nothing (:func:`~ovsam.clip.text_bank.check_context`)."""
    from ovsam.clip.config import get_clip_config
    from ovsam.clip.text_bank import check_vocabulary_context
    from ovsam.vocab import BUILTIN_VOCABULARIES, load_vocabulary, prompt_templates

    if isinstance(options.vocabulary, str) and options.vocabulary in BUILTIN_VOCABULARIES:
        return
    context = get_clip_config(options.clip_model).text.context_length
    vocabulary = load_vocabulary(options.vocabulary)
    check_vocabulary_context(vocabulary, prompt_templates(options.templates), context)


def run(args: argparse.Namespace) -> int:
    from ovsam.errors import InputError
    from ovsam.segment_job import segment_image

    if args.box is None and not args.point:  # negatives alone mark no object
        raise InputError(
            "give a prompt: --box X0 Y0 X1 Y1 and/or --point X Y (--negative points only mark "
            "what is not the object)"
        )
    paths, summary = segment_image(
        args.image,
        out_dir=args.out,
        box=args.box,
        points=args.point,
        negatives=args.negative,
        model_name=args.model,
        checkpoint=args.checkpoint,
        device=args.device,
        label_options=label_options(args),
    )
    print(summary)
    for kind, path in paths.items():
        print(f"{kind:8s} {path}")
    return 0
