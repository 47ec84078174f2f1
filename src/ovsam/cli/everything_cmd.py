"""``ovsam everything IMAGE|FOLDER --out DIR``: segment every object (grid of clicks + NMS).

For a folder, every image in it is processed with the model loaded once; each image's results
go to ``DIR/<image stem>/`` and images whose ``masks.json`` already exists are skipped, so an
interrupted batch job resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ovsam.cli.segment_cmd import add_label_arguments, add_model_arguments, label_options

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "everything",
        help="segment every object in an image or a folder of images",
        description="Prompt a grid of points, keep confident and stable masks, remove duplicates; "
        "write overlay.png and masks.json (COCO RLE per mask) into --out (per image for a folder).",
    )
    parser.add_argument("image", type=Path, help="image file or folder of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--points-per-side", type=int, default=32, help="grid size (default 32)")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-thresh", type=float, default=0.95)
    parser.add_argument(
        "--min-area", type=int, default=0, help="drop masks smaller than this (pixels)"
    )
    add_model_arguments(parser)
    add_label_arguments(parser)
    parser.set_defaults(run=run)


def list_jobs(source: Path, out: Path) -> list[tuple[Path, Path]]:
    """``(image, output folder)`` pairs for a file or every image file in a folder."""
    from ovsam.errors import InputError

    if source.is_file():
        return [(source, out)]
    if not source.is_dir():
        raise InputError(f"no such image file or folder: {source}")
    images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"folder {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [(image, out / image.stem) for image in images]


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ovsam.automatic import AutomaticMaskGenerator
    from ovsam.build import build_model
    from ovsam.errors import InputError
    from ovsam.fileio import atomic_write_bytes, atomic_write_json
    from ovsam.image_io import load_image
    from ovsam.outputs import png_bytes
    from ovsam.predictor import SamPredictor
    from ovsam.recognizers import build_labeled_predictor
    from ovsam.visualize import overlay

    jobs = list_jobs(args.image, args.out)
    options = label_options(args)
    if options is None:
        predictor = SamPredictor(
            build_model(args.model, checkpoint=args.checkpoint).to(args.device)
        )
    else:
        predictor = build_labeled_predictor(options, args.model, args.checkpoint, args.device)
    generator = AutomaticMaskGenerator(
        predictor,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
        min_mask_area=args.min_area,
    )
    failures = 0
    for image_path, out in tqdm(jobs, desc="images", disable=len(jobs) == 1):
        if len(jobs) > 1 and (out / "masks.json").is_file():
            continue
        try:
            image = load_image(image_path)
        except InputError as exc:
            if len(jobs) == 1:
                raise
            print(f"skipped: {exc}")
            failures += 1
            continue
        records = generator.generate(image)
        segments = [r["segmentation"] for r in records]
        captions = None
        if options is not None and records:
            named = predictor.recognize_masks(np.stack(segments))
            for record, labels in zip(records, named, strict=True):
                record["label"] = labels.label
                record["labels"] = [{"name": n, "score": round(p, 6)} for n, p in labels.top]
            captions = [f"{labels.label} {labels.top[0][1]:.2f}" for labels in named]
        atomic_write_bytes(
            out / "overlay.png", png_bytes(overlay(image, segments, labels=captions))
        )
        atomic_write_json(
            out / "masks.json",
            {
                "image": str(image_path),
                "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
                "masks": [{k: v for k, v in r.items() if k != "segmentation"} for r in records],
                "recognition_weights": None if options is None else options.describe_weights(),
            },
        )
        print(f"{image_path}: {len(records)} masks -> {out}")
    return 1 if failures else 0
