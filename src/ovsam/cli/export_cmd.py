"""``ovsam export-onnx --out decoder.onnx``: the prompt decoder as an ONNX graph ([onnx] extra)."""

from __future__ import annotations

import argparse
import sys

from ovsam.cli.arg_types import output_path
from ovsam.cli.segment_cmd import add_model_arguments

# Largest difference from torch (mask logits, IoU scores) an export may show: real exports
# of MobileSAM differ by 1e-5 to 1e-3 depending on the opset.
PARITY_TOLERANCE = 1e-2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export the prompt decoder to ONNX (for browsers / ONNX Runtime)",
        description="Export prompt encoder + mask decoder of a SAM-family model to ONNX "
        "(inputs as segment-anything's ONNX model) and check it against torch.",
    )
    parser.add_argument("--out", type=output_path, required=True, help="output .onnx file")
    parser.add_argument(
        "--opset",
        type=int,
        default=17,
        help="ONNX opset (default 17); one older than the decoder needs or newer than the "
        "installed torch exports is refused, naming the opsets it can write",
    )
    add_model_arguments(parser, device=False)  # exported and checked on the CPU
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovsam.build import build_model
    from ovsam.errors import OVSamError

    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise OVSamError("ONNX export needs the [onnx] extra: pip install 'ovsam[onnx]'") from exc
    from ovsam.export_onnx import export_decoder_onnx, onnx_parity

    model = build_model(args.model, checkpoint=args.checkpoint)
    path = export_decoder_onnx(model, args.out, args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    try:
        difference = onnx_parity(model, path)
    except ImportError:
        print("onnxruntime is not installed: parity not checked")
        return 0
    print(f"ONNX Runtime vs torch: max abs difference {difference:.2e}")
    if not difference <= PARITY_TOLERANCE:  # NaN too
        print(
            f"ovsam export-onnx: error: {path} disagrees with torch by {difference:.2e} "
            f"(more than {PARITY_TOLERANCE:g}): do not use it; try another --opset",
            file=sys.stderr,
        )
        return 1
    return 0
