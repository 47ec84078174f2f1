"""``ovsam everything IMAGE --out DIR``: segment every object (grid of clicks + NMS)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ovsam.cli.segment_cmd import add_model_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "everything",
        help="segment every object in an image",
        description="Prompt a grid of points, keep confident and stable masks, remove duplicates; "
        "write overlay.png and masks.json (COCO RLE per mask) into --out.",
    )
    parser.add_argument("image", type=Path, help="image file")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--points-per-side", type=int, default=32, help="grid size (default 32)")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-thresh", type=float, default=0.95)
    parser.add_argument(
        "--min-area", type=int, default=0, help="drop masks smaller than this (pixels)"
    )
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.automatic import AutomaticMaskGenerator
    from ovsam.build import build_model
    from ovsam.fileio import atomic_write_bytes, atomic_write_json
    from ovsam.image_io import load_image
    from ovsam.outputs import png_bytes
    from ovsam.predictor import SamPredictor
    from ovsam.visualize import overlay

    image = load_image(args.image)
    predictor = SamPredictor(build_model(args.model, checkpoint=args.checkpoint).to(args.device))
    generator = AutomaticMaskGenerator(
        predictor,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
        min_mask_area=args.min_area,
    )
    records = generator.generate(image)
    atomic_write_bytes(
        args.out / "overlay.png", png_bytes(overlay(image, [r["segmentation"] for r in records]))
    )
    atomic_write_json(
        args.out / "masks.json",
        {
            "image": str(args.image),
            "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
            "masks": [{k: v for k, v in r.items() if k != "segmentation"} for r in records],
        },
    )
    print(f"{len(records)} masks")
    print(f"overlay  {args.out / 'overlay.png'}")
    print(f"json     {args.out / 'masks.json'}")
    return 0
