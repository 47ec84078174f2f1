"""``ovsam demo``: segment the cup in the shipped sample photo with the default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ovsam.cli.arg_types import output_path
from ovsam.cli.segment_cmd import add_model_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a box prompt on the shipped sample photo",
        description="Download the default weights if needed, segment the coffee cup in the "
        "sample photo from a box prompt, and print where the outputs are.",
    )
    parser.add_argument(
        "--out",
        type=output_path,
        default=Path("ovsam-demo"),
        help="output folder (default ovsam-demo)",
    )
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
    from ovsam.segment_job import segment_image

    print(f"sample photo: {SAMPLE_PHOTO} (box XYXY {', '.join(f'{v:g}' for v in SAMPLE_BOX)})")
    paths, summary = segment_image(
        SAMPLE_PHOTO, out_dir=args.out, box=SAMPLE_BOX, model_name=args.model,
        checkpoint=args.checkpoint, device=args.device,
    )  # fmt: skip
    print(summary)
    for kind, path in paths.items():
        print(f"{kind:8s} {path.resolve()}")
    return 0
