"""``ovsam everything IMAGE|FOLDER --out DIR``: segment every object (grid of clicks + NMS).

For a folder, every image directly in it is processed with the model loaded once; each
image's results go to ``DIR/<image file name>/`` (``a.png`` -> ``DIR/a.png/``). A re-run with
the same settings skips the images already done, so an interrupted batch job resumes where it
stopped; a re-run with other settings is refused unless ``--overwrite`` is given (layout and
resume rules: :mod:`ovsam.cli.everything_jobs`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovsam.cli.arg_types import output_path
from ovsam.cli.segment_cmd import add_label_arguments, add_model_arguments, label_options

if TYPE_CHECKING:
    import numpy as np

    from ovsam.automatic import AutomaticMaskGenerator
    from ovsam.cli.everything_jobs import Job
    from ovsam.recognizers import LabelOptions


# The AutomaticMaskGenerator settings as flags: (field, flag, type, default, help).
GENERATOR_OPTIONS: tuple[tuple[str, str, type, object, str], ...] = (
    ("points_per_side", "--points-per-side", int, 32, "grid size, 1 to 256 (default 32)"),
    (
        "pred_iou_thresh", "--pred-iou-thresh", float, 0.88,
        "keep masks whose predicted IoU is above this (OV-SAM's decoder, which has no IoU head: "
        "the stability of its low-res logits) (default 0.88)",
    ),
    (
        "stability_score_thresh", "--stability-thresh", float, 0.95,
        "keep masks at least this stable (default 0.95)",
    ),
    (
        "min_mask_area", "--min-area", int, 0,
        "drop masks smaller than this many pixels (default 0)",
    ),
    (
        "min_mask_region_area", "--min-region-area", int, 0,
        "in each kept mask, fill holes and remove islands smaller than this many pixels, then "
        "remove duplicates again, as SAM's min_mask_region_area (default 0: off)",
    ),
    (
        "crop_n_layers", "--crop-layers", int, 0,
        "also segment overlapping crops, 4**i of them in layer i, each embedded anew (small "
        "objects get more pixels), as SAM's crop_n_layers; up to 4 (default 0: off)",
    ),
    (
        "crop_overlap_ratio", "--crop-overlap", float, 512 / 1500,
        "crops overlap by this fraction of the image's short side (default 0.341)",
    ),
    (
        "crop_nms_thresh", "--crop-nms-thresh", float, 0.7,
        "drop a mask whose IoU with one of a smaller crop is above this (default 0.7)",
    ),
    (
        "crop_n_points_downscale_factor", "--crop-points-downscale", int, 1,
        "layer i's crops get --points-per-side / this**i points a side (default 1)",
    ),
)  # fmt: skip
# Settings added after the first four: recorded in settings.json only when not at their
# default (which is what earlier versions did), so folders written before them still resume.
LATER_SETTINGS = {field for field, *_ in GENERATOR_OPTIONS[4:]}
# Settings that change nothing without crop layers: not recorded then (nor refused on resume).
CROP_ONLY_SETTINGS = {"crop_overlap_ratio", "crop_n_points_downscale_factor"}


def _dest(flag: str) -> str:
    """The name argparse stores ``flag`` under (``--min-area`` -> ``min_area``)."""
    return flag[2:].replace("-", "_")


def _flag_value(args: argparse.Namespace, flag: str) -> Any:
    """The value ``args`` holds for ``flag`` (``--min-area`` -> ``args.min_area``)."""
    return getattr(args, _dest(flag))


def generator_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The generator's settings from ``args`` and the flag that sets each (for messages)."""
    settings = {f: _flag_value(args, flag) for f, flag, *_ in GENERATOR_OPTIONS}
    return settings, {field: flag for field, flag, *_ in GENERATOR_OPTIONS}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "everything",
        help="segment every object in an image or a folder of images",
        description="Prompt a grid of points, keep confident and stable masks, remove duplicates; "
        "write overlay.png and masks.json (COCO RLE per mask) into --out, or, for a folder, "
        "into --out/<image file name>/ per image (subfolders are not searched; their number is "
        "printed). --out/settings.json records the settings: a re-run with the same settings "
        "skips the images already done, one with other settings is refused unless --overwrite. "
        "Exit status 1 when some images of a folder could not be read or segmented (each is "
        "named).",
    )
    parser.add_argument("image", type=Path, help="image file or folder of images")
    parser.add_argument("--out", type=output_path, required=True, help="output folder")
    for _, flag, kind, default, text in GENERATOR_OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute every image, replacing results in --out made with other settings "
        "(default: skip the images done with the same settings, refuse other settings)",
    )
    add_model_arguments(parser)
    add_label_arguments(parser)
    parser.set_defaults(run=run)


# Layout of the records in ``masks.json``: 2 since ``point_coords`` is SAM's ``[[x, y]]``
# (it was ``[x, y]``). A folder of older results is refused on resume like other settings.
MASKS_FORMAT = 2


def run_settings(args: argparse.Namespace, options: LabelOptions | None) -> dict[str, Any]:
    """What determines the results (not ``--device``): recorded in ``settings.json`` and in
    every ``masks.json``; resuming with other settings is refused. ``model`` is the model that
    segments (``ovsam_coco`` for ``--recognizer ovsam`` with a SAM ``--model``); files (the
    checkpoint, an OV-SAM ``--model``, a vocabulary) count by their absolute path and content
    (sha256), however they are spelled (:mod:`ovsam.run_settings`)."""
    from ovsam.run_settings import (
        checkpoint_record,
        clip_weights_record,
        file_record,
        model_record,
    )

    vocabulary = None if options is None else options.vocabulary
    if isinstance(vocabulary, Path):  # a file by its absolute path and content
        vocabulary_record: object = file_record(vocabulary)
    else:
        vocabulary_record = None if options is None else options.describe_vocabulary()
    return {
        "command": "everything",
        "masks_format": MASKS_FORMAT,
        "model": model_record(options, args.model),
        "checkpoint": checkpoint_record(args.checkpoint, args.model),
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_thresh": args.stability_thresh,
        "min_area": args.min_area,
        **{
            _dest(flag): _flag_value(args, flag)
            for field, flag, _, default, _ in GENERATOR_OPTIONS
            if field in LATER_SETTINGS
            and _flag_value(args, flag) != default
            and (field not in CROP_ONLY_SETTINGS or args.crop_layers)
        },
        "vocabulary": vocabulary_record,
        "top_k": None if options is None else options.top_k,
        "recognizer": None if options is None else options.recognizer,
        "templates": None if options is None else options.templates,
        "clip": None if options is None else options.clip_model,
        "clip_weights": clip_weights_record(options),
        "random_recognition": None if options is None else options.random_weights,
    }


def _plural(count: int, noun: str) -> str:
    """``"1 image"`` / ``"2 images"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def segment_everything(
    image: np.ndarray,
    generator: AutomaticMaskGenerator,
    predictor: Any,
    options: LabelOptions | None,
) -> tuple[list[dict[str, Any]], list[str] | None]:
    """The generator's mask records of ``image`` (named when ``options``) and their overlay
    captions (None without labels)."""
    import numpy as np

    records = generator.generate(image)
    if options is None or not records:
        return records, None
    named = predictor.recognize_masks(np.stack([r["segmentation"] for r in records]))
    for record, labels in zip(records, named, strict=True):
        record["label"] = labels.label
        record["labels"] = [{"name": n, "score": round(p, 6)} for n, p in labels.top]
    note = options.caption_note()  # " (random weights)" with random weights, as in segment
    return records, [f"{labels.label} {labels.top[0][1]:.2f}{note}" for labels in named]


def run(args: argparse.Namespace) -> int:
    from ovsam.cli.everything_jobs import (
        finished_jobs,
        list_jobs,
        ovsam_outputs,
        subfolder_count,
    )
    from ovsam.generator_settings import check_generator_settings
    from ovsam.output_lock import output_lock

    settings_given, flags = generator_settings(args)
    check_generator_settings(settings_given, flags)  # before any model is built
    jobs = list_jobs(args.image, args.out)
    options = label_options(args)
    settings = run_settings(args, options)
    done, changed = finished_jobs(jobs, args.out, settings, args.overwrite)
    if written := ovsam_outputs(args.image):
        names = ", ".join(p.name for p in written)
        print(f"{names} in {args.image}: written by an earlier ovsam run, not segmented")
    if args.image.is_dir() and (subfolders := subfolder_count(args.image, args.out)):
        print(
            f"{_plural(subfolders, 'subfolder')} of {args.image} not searched: only the images "
            "directly in it are processed"
        )
    if done:
        print(f"{_plural(len(done), 'image')} already done, skipped")
    if changed:
        print(
            f"{_plural(len(changed), 'image')} not the image its results were made from (or "
            "made before ovsam recorded it): redone"
        )
    todo = [job for job in jobs if job not in done]
    if not todo:
        return 0
    with output_lock(args.out, "everything"):  # from here on it writes
        return _segment(args, todo, options, settings_given, settings)


def _segment(
    args: argparse.Namespace,
    todo: list[Job],
    options: LabelOptions | None,
    settings_given: dict[str, Any],
    settings: dict[str, Any],
) -> int:
    """Segment the images of ``todo`` (``(image, output folder)`` pairs) and write their
    results; exit status 1 when some of a folder's images could not be read or segmented."""
    from tqdm import tqdm

    from ovsam.automatic import AutomaticMaskGenerator
    from ovsam.build import build_model
    from ovsam.cli.everything_jobs import (
        OVERLAY_FILE,
        RESULT_FILE,
        SETTINGS_FILE,
        file_sha256,
        forget_results,
    )
    from ovsam.errors import InputError
    from ovsam.fileio import atomic_write_bytes, atomic_write_json
    from ovsam.image_io import load_image
    from ovsam.outputs import png_bytes
    from ovsam.predictor import SamPredictor
    from ovsam.recognizers import build_labeled_predictor, recognition_record
    from ovsam.visualize import overlay

    if options is None:
        predictor = SamPredictor(
            build_model(args.model, checkpoint=args.checkpoint).to(args.device)
        )
    else:
        print(f"labels ({options.recognizer}): {options.describe_weights()}")
        predictor = build_labeled_predictor(options, args.model, args.checkpoint, args.device)
    generator = AutomaticMaskGenerator(predictor, **settings_given)
    failures = 0
    settings_written = False
    for image_path, out in tqdm(todo, desc="images", disable=len(todo) == 1):
        forget_results(out)
        try:
            digest = file_sha256(image_path)
            image = load_image(image_path)
            records, captions = segment_everything(image, generator, predictor, options)
        except InputError as exc:
            if not args.image.is_dir():  # one image file: its error is the command's
                raise
            tqdm.write(f"failed: {exc}", file=sys.stderr)  # on a line of its own, not the bar's
            failures += 1
            continue
        if not settings_written:  # first result: from now on --out holds these settings' work
            atomic_write_json(args.out / SETTINGS_FILE, settings)
            settings_written = True
        segments = [r["segmentation"] for r in records]
        atomic_write_bytes(out / OVERLAY_FILE, png_bytes(overlay(image, segments, labels=captions)))
        atomic_write_json(
            out / RESULT_FILE,
            {
                "image": str(image_path),
                "image_sha256": digest,
                "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
                "masks": [{k: v for k, v in r.items() if k != "segmentation"} for r in records],
                **recognition_record(options),
                "settings": settings,
            },
        )
        print(f"{image_path}: {len(records)} masks -> {out}")
    if failures:
        print(
            f"{_plural(failures, 'image')} of {len(todo)} could not be read or segmented "
            "(listed above); exit status 1",
            file=sys.stderr,
        )
    return 1 if failures else 0
