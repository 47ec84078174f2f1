"""``ovsam eval ANNOTATIONS --images DIR --out DIR``: the paper's protocol (IoU_b / IoU_n / Acc).

Run under ``torchrun --nproc_per_node N`` to spread images over processes; re-running the same
command resumes an interrupted evaluation (``--out/settings.json`` records what the records
depend on; resuming with other settings is refused).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovsam.cli.arg_types import output_path
from ovsam.cli.segment_cmd import add_clip_arguments, add_model_arguments, recognition_options

if TYPE_CHECKING:
    from ovsam.data.instances import InstanceDataset
    from ovsam.evaluation.runner import InstancePredictor
    from ovsam.recognizers import LabelOptions


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate masks + labels from ground-truth prompts (the paper's protocol)",
        description="Prompt every ground-truth instance of a COCO / LVIS file with its box (or "
        "centre point); report IoU over base / novel classes and label accuracy; write "
        "metrics.json and table.md into --out. Resumable; torchrun-aware.",
    )
    parser.add_argument("annotations", type=Path, help="COCO instances_*.json or LVIS v1 json")
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--out", type=output_path, required=True, help="output folder")
    parser.add_argument(
        "--split", choices=["coco-ov", "lvis", "all"], default="coco-ov",
        help="base/novel split: OV-COCO 48/17 (other classes skipped), LVIS rare = novel, or all "
        "base (default coco-ov)",
    )  # fmt: skip
    parser.add_argument(
        "--prompt",
        choices=["box", "point"],
        default="box",
        help="ground-truth prompt (default box)",
    )
    parser.add_argument(
        "--recognizer", choices=["image-crop", "feature-crop", "ovsam"], default="image-crop"
    )
    parser.add_argument(
        "--templates", default="vild", choices=["vild", "openai", "simple", "none"],
        help="prompt templates for class names (default vild: 14)",
    )  # fmt: skip
    parser.add_argument(
        "--limit", type=int, default=None,
        help="first N images of the file only (those skipped, e.g. crowd-only, count)",
    )  # fmt: skip
    parser.add_argument("--method", default=None, help="row name in the table")
    parser.add_argument(
        "--detections", type=Path, default=None,
        help="COCO results file of a detector: also report mask AP of masks prompted by its boxes",
    )  # fmt: skip
    add_model_arguments(parser)
    add_clip_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.data.instances import InstanceDataset, read_annotations
    from ovsam.distributed import barrier, init_distributed, shutdown
    from ovsam.evaluation.accounting import select_images, summary_line
    from ovsam.evaluation.runner import (
        LabeledPredictorAdapter,
        check_image_files,
        check_settings,
        coco_ov_splits,
        evaluate_rank,
        lvis_splits,
        write_report,
    )
    from ovsam.output_lock import output_lock
    from ovsam.recognizers import build_labeled_predictor

    data = read_annotations(args.annotations)
    if args.split == "coco-ov":
        splits = coco_ov_splits(data["categories"])
        dataset = InstanceDataset(
            data, args.images, lambda c: splits.get(c["id"], "none") != "none"
        )
    else:
        splits = lvis_splits(data["categories"]) if args.split == "lvis" else {}
        dataset = InstanceDataset(data, args.images)
    selection = select_images(data, dataset, args.limit)
    detections = None
    if args.detections is not None:  # checked now rather than after the evaluation
        from ovsam.errors import InputError
        from ovsam.evaluation.mask_ap import read_detections

        if args.split == "lvis":
            raise InputError(
                "--detections gives COCO mask AP (COCOeval); LVIS is scored with its federated "
                "AP (lvis-api), which ovsam does not compute: mask AP of LVIS files is not "
                "supported"
            )

        detections = read_detections(args.detections, data, selection.image_ids, dataset.categories)
    check_image_files(args.images, _image_paths(data, dataset, selection.indices, detections))
    options = _label_options(args, dataset)
    info = init_distributed(args.device)
    settings = _settings(args, options)
    with output_lock(args.out, "eval", holder=info.is_main):
        legacy = check_settings(args.out, settings, write=info.is_main)
        barrier()  # every rank has checked before any writes records
        if legacy and info.is_main:
            print(
                f"warning: {args.out} has records but no settings.json (an older ovsam): "
                "assuming they were made with these settings",
                file=sys.stderr,
            )
        if info.is_main:
            _warn_ignored(args, dataset, selection.orphan_annotations)
        predictor = build_labeled_predictor(options, args.model, args.checkpoint, str(info.device))
        evaluate_rank(
            LabeledPredictorAdapter(predictor),
            dataset,
            splits,
            args.out,
            args.prompt,
            info.rank,
            info.world,
            selection.indices,
        )
        barrier()
        if info.is_main:
            from ovsam import __version__

            model, checkpoint = settings["model"], settings["checkpoint"]
            method = args.method or (
                f"{args.recognizer} ({_model_label(model, checkpoint)}, {options.describe_weights()})"
            )
            about = {"prompt": args.prompt, "split": args.split, "model": model}
            about |= {"checkpoint": checkpoint, "ovsam": __version__}
            metrics = write_report(args.out, method, selection, about)
            print((args.out / "table.md").read_text(encoding="utf-8"), end="")
            print(f"{summary_line(metrics)} -> {args.out / 'metrics.json'}")
            if detections is None and (args.out / "mask_ap.json").is_file():
                print(
                    f"warning: {args.out / 'mask_ap.json'} is from an earlier run with "
                    "--detections, not updated by this one (pass --detections again to update it)",
                    file=sys.stderr,
                )
            if detections is not None:
                unreadable = {row["image_id"] for row in metrics["unreadable_images"]}
                _report_mask_ap(
                    args, LabeledPredictorAdapter(predictor), data, selection.image_ids,
                    list(dataset.categories), detections, unreadable,
                )  # fmt: skip
    shutdown()
    return 0


def _report_mask_ap(
    args: argparse.Namespace,
    adapter: InstancePredictor,
    data: dict[str, Any],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    detections: list[dict[str, Any]],
    unreadable: set[int],
) -> None:
    """Mask AP of the masks ``adapter`` decodes from the ``detections`` boxes, over the images
    ``image_ids`` and classes ``category_ids`` (``data``: the annotation file). The images the
    evaluation found ``unreadable`` (image or annotations), and those whose file cannot be read
    now, are left out of it (one warning each for the latter)."""
    from ovsam.evaluation.mask_ap import format_stats, mask_ap, segment_detections

    results, failed = segment_detections(
        lambda image, boxes: adapter.predict_instances(image, boxes, None)[0],
        data, args.images, [d for d in detections if d["image_id"] not in unreadable],
    )  # fmt: skip
    for image_id, reason in failed.items():
        print(f"warning: mask AP leaves out image id {image_id}: {reason}", file=sys.stderr)
    left_out = unreadable | set(failed)
    kept = [i for i in image_ids if i not in left_out]
    stats = mask_ap(args.annotations, results, args.out, kept, category_ids)
    skipped = len(image_ids) - len(kept)
    print(
        f"mask AP ({len(kept)} images{f' ({skipped} unreadable left out)' if skipped else ''}, "
        f"{len(category_ids)} classes, {len(results)} detections): {format_stats(stats)}"
    )


def _image_paths(
    data: dict[str, Any],
    dataset: InstanceDataset,
    indices: Sequence[int],
    detections: list[dict[str, Any]] | None,
) -> list[Path]:
    """The image files the evaluation reads: those prompted, and those of the detections
    (``data``: the annotation file)."""
    from ovsam.data.instances import image_file

    paths = [dataset.image_path(index) for index in indices]
    if detections:
        infos = {img["id"]: img for img in data["images"]}
        with_detections = dict.fromkeys(d["image_id"] for d in detections)
        paths += [image_file(dataset.image_root, infos[i]) for i in with_detections]
    return paths


def _label_options(args: argparse.Namespace, dataset: InstanceDataset) -> LabelOptions:
    """How masks are named: the recognizer over the evaluated classes, each embedded with the
    synonyms of the official OV-SAM banks (:func:`~ovsam.vocab.split_synonyms` of its name:
    ``aerosol_can`` -> ``aerosol can``); predictions are the categories' own names."""
    from ovsam.vocab import category_vocabulary

    categories = sorted(dataset.categories.values(), key=lambda c: c["id"])
    vocabulary = category_vocabulary(args.split, [c["name"] for c in categories])
    return recognition_options(args, vocabulary)


def _warn_ignored(args: argparse.Namespace, dataset: InstanceDataset, orphans: int) -> None:
    """One warning line per kind of annotation the evaluation ignores."""
    ignored = {
        "a category_id not among its categories": dataset.unknown_category_annotations,
        "an image_id not among its images": orphans,
        "a box under 1 pixel wide or high or outside its image, or no area (mmdet's rule, as "
        "in the official evaluation)": dataset.too_small_annotations.total(),
    }
    for why, count in ignored.items():
        if count:
            print(
                f"warning: {count} annotations of {args.annotations} have {why}; they are ignored",
                file=sys.stderr,
            )


def _settings(args: argparse.Namespace, options: LabelOptions) -> dict[str, Any]:
    """What determines the records (not ``--method``, ``--limit``, ``--device``): resuming into
    an ``--out`` made with other settings is refused. ``model`` is the model that segments
    (``ovsam_coco`` for ``--recognizer ovsam`` with a SAM ``--model``); the annotation file
    counts by its content, a checkpoint or OV-SAM ``--model`` file by its absolute path and
    content (:mod:`ovsam.run_settings`), each hashed once here; the vocabulary by what is
    embedded (:meth:`~ovsam.vocab.Vocabulary.fingerprint`)."""
    from ovsam.evaluation.runner import PROTOCOL_RULES
    from ovsam.run_settings import checkpoint_record, clip_weights_record, model_record
    from ovsam.weight_sources import sha256_file

    return {
        "annotations_sha256": sha256_file(args.annotations),
        "images": str(args.images.resolve()),
        "split": args.split,
        "prompt": args.prompt,
        # which annotations are instances, and where a point prompt lies (each changed once)
        "protocol_rules": PROTOCOL_RULES,
        "recognizer": args.recognizer,
        "templates": args.templates,
        # the names and synonyms embedded (their rule changed once: results differ)
        "vocabulary_sha256": options.vocabulary.fingerprint(),
        "model": model_record(options, args.model),
        "checkpoint": checkpoint_record(args.checkpoint, args.model),
        "clip": options.clip_model,
        "clip_weights": clip_weights_record(options),
        "random_recognition": args.random_recognition,
    }


def _model_label(model: str | dict[str, str], checkpoint: str | dict[str, str] | None) -> str:
    """The model in a table row: its name, and the checkpoint it loaded when one was given
    (``ovsam_coco + model.safetensors``), so that a trained model and the official one get
    rows of their own."""
    from ovsam.run_settings import record_label

    label = record_label(model)
    return label if checkpoint is None else f"{label} + {record_label(checkpoint)}"
