"""``ovsam export-onnx --out decoder.onnx``: the prompt decoder as an ONNX graph ([onnx] extra)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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
        "(segment-anything's ONNX inputs less orig_im_size) and check it against torch.",
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
    import torch

    from ovsam.build import build_model, get_model_entry, is_model_file
    from ovsam.errors import OVSamError

    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise OVSamError("ONNX export needs the [onnx] extra: pip install 'ovsam[onnx]'") from exc
    from ovsam.export_onnx import PromptDecoderForOnnx, export_decoder_onnx, onnx_parity

    if not is_model_file(args.model):  # refuse a model it cannot export before any download
        with torch.device("meta"):
            PromptDecoderForOnnx(get_model_entry(args.model).builder())
    model = build_model(args.model, checkpoint=args.checkpoint)
    # checked before it takes --out's place: a rejected export must not replace a good one
    out: Path = args.out
    candidate = export_decoder_onnx(model, out.with_name(f".{out.name}.unchecked"), args.opset)
    unchecked = ""
    try:
        difference = onnx_parity(model, candidate)
    except ImportError as exc:  # not installed, or installed but failing to import
        difference = None
        unchecked = (
            "onnxruntime is not installed"
            if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime"
            else f"onnxruntime cannot be imported ({exc})"
        )
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    if difference is not None and not difference <= PARITY_TOLERANCE:  # NaN too
        rejected = out.with_name(f"{out.stem}.rejected{out.suffix}")
        os.replace(candidate, rejected)
        print(
            f"ovsam export-onnx: error: the export disagrees with torch by {difference:.2e} "
            f"(more than {PARITY_TOLERANCE:g}): {out} is left as it was; the export is kept "
            f"as {rejected} for a look (do not use it); try another --opset",
            file=sys.stderr,
        )
        return 1
    os.replace(candidate, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if difference is None:
        print(f"{unchecked}: parity not checked")
    else:
        print(f"ONNX Runtime vs torch: max abs difference {difference:.2e}")
    return 0
