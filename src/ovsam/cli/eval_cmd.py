"""``ovsam eval ANNOTATIONS --images DIR --out DIR``: the paper's protocol (IoU_b / IoU_n / Acc).

Run under ``torchrun --nproc_per_node N`` to spread images over processes; re-running the same
command resumes an interrupted evaluation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ovsam.cli.segment_cmd import add_clip_arguments, add_model_arguments


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
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--split", choices=["coco-ov", "lvis", "all"], default="coco-ov",
        help="base/novel split: OV-COCO 48/17 (other classes skipped), LVIS rare = novel, or all base",
    )  # fmt: skip
    parser.add_argument("--prompt", choices=["box", "point"], default="box")
    parser.add_argument(
        "--recognizer", choices=["image-crop", "feature-crop", "ovsam"], default="image-crop"
    )
    parser.add_argument("--templates", default="vild", choices=["vild", "openai", "simple", "none"])
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--method", default=None, help="row name in the table")
    parser.add_argument(
        "--detections", type=Path, default=None,
        help="COCO results file of a detector: also report mask AP of masks prompted by its boxes",
    )  # fmt: skip
    add_model_arguments(parser)
    add_clip_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ovsam.data.instances import InstanceDataset
    from ovsam.distributed import barrier, init_distributed, shutdown
    from ovsam.evaluation.runner import (
        LabeledPredictorAdapter,
        coco_ov_splits,
        evaluate_rank,
        lvis_splits,
        write_report,
    )
    from ovsam.recognizers import LabelOptions, build_labeled_predictor
    from ovsam.vocab import Vocabulary

    info = init_distributed(args.device)
    data = json.loads(args.annotations.read_text(encoding="utf-8"))
    if args.split == "coco-ov":
        splits = coco_ov_splits()
        dataset = InstanceDataset(
            data, args.images, lambda c: splits.get(c["id"], "none") != "none"
        )
    else:
        splits = lvis_splits(data["categories"]) if args.split == "lvis" else {}
        dataset = InstanceDataset(data, args.images)
    categories = sorted(dataset.categories.values(), key=lambda c: c["id"])
    synonyms = tuple(tuple(dict.fromkeys([c["name"], *c.get("synonyms", [])])) for c in categories)
    vocabulary = Vocabulary(
        args.split, tuple(c["name"] for c in categories), synonyms, tuple({} for _ in categories)
    )
    options = LabelOptions(
        vocabulary=vocabulary,
        recognizer=args.recognizer,
        clip_model=args.clip,
        clip_weights=args.clip_weights,
        random_weights=args.random_recognition,
        templates=args.templates,
    )
    predictor = build_labeled_predictor(options, args.model, args.checkpoint, str(info.device))
    evaluate_rank(
        LabeledPredictorAdapter(predictor),
        dataset,
        splits,
        args.out,
        args.prompt,
        info.rank,
        info.world,
        args.limit,
    )
    barrier()
    if info.is_main:
        method = args.method or f"{args.recognizer} ({args.model}, {options.describe_weights()})"
        metrics = write_report(args.out, method, info.world)
        print((args.out / "table.md").read_text(encoding="utf-8"), end="")
        print(f"instances: {metrics['instances']} -> {args.out / 'metrics.json'}")
        if args.detections is not None:
            from ovsam.evaluation.mask_ap import mask_ap, segment_detections

            adapter = LabeledPredictorAdapter(predictor)
            detections = json.loads(args.detections.read_text(encoding="utf-8"))
            results = segment_detections(
                lambda image, boxes: adapter.predict_instances(image, boxes, None)[0],
                data, args.images, detections,
            )  # fmt: skip
            stats = mask_ap(args.annotations, results, args.out)
            print("mask AP: " + ", ".join(f"{k} {v:.1f}" for k, v in stats.items()))
    shutdown()
    return 0
