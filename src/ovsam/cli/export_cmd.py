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


class _Rejected(Exception):
    """The export failed its parity check (its difference from torch in ``args[0]``)."""


def run(args: argparse.Namespace) -> int:
    import torch

    from ovsam.build import build_model, get_model_entry, is_model_file
    from ovsam.errors import OVSamError
    from ovsam.fileio import atomic_path

    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise OVSamError("ONNX export needs the [onnx] extra: pip install 'ovsam[onnx]'") from exc
    from ovsam.export_onnx import PromptDecoderForOnnx, check_opset, export_decoder_onnx

    check_opset(args.opset)  # refused, like a model it cannot export, before any download
    if not is_model_file(args.model):
        with torch.device("meta"):
            PromptDecoderForOnnx(get_model_entry(args.model).builder())
    model = build_model(args.model, checkpoint=args.checkpoint)
    out: Path = args.out
    real = Path(os.path.realpath(out))  # where atomic_path stages: a link's file
    rejected = real.with_name(f"{real.stem}.rejected{real.suffix}")
    try:
        # staged under a name of its own (atomic_path) and checked before it takes --out's
        # place: a rejected export must not replace a good one
        with atomic_path(out) as staged:
            export_decoder_onnx(model, staged, args.opset)
            difference, unchecked = _parity(model, staged)
            if difference is not None and not difference <= PARITY_TOLERANCE:  # NaN too
                os.replace(staged, rejected)
                raise _Rejected(difference)
    except _Rejected as rejection:
        print(
            f"ovsam export-onnx: error: the export disagrees with torch by {rejection.args[0]:.2e} "
            f"(more than {PARITY_TOLERANCE:g}): {out} is left as it was; the export is kept "
            f"as {rejected} for a look (do not use it); try another --opset",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if difference is None:
        print(f"{unchecked}: parity not checked")
    else:
        print(f"ONNX Runtime vs torch: max abs difference {difference:.2e}")
    return 0


def _parity(model: object, path: Path) -> tuple[float | None, str]:
    """``(difference from torch, "")``, or ``(None, why)`` when onnxruntime cannot run."""
    from ovsam.export_onnx import onnx_parity

    try:
        return onnx_parity(model, path), ""
    except ImportError as exc:  # not installed, or installed but failing to import
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            return None, "onnxruntime is not installed"
        return None, f"onnxruntime cannot be imported ({exc})"
