"""ONNX export of the prompt decoder (prompt encoder + mask decoder), as SAM's web demos use it.

The image encoder runs once per image (in Python, or on a server); the exported decoder then
answers clicks anywhere ONNX Runtime runs (a browser with onnxruntime-web, C++, mobile).
The inputs are those of segment-anything's ONNX model, less ``orig_im_size``: the graph
stops at the low-res logits (no ``masks`` output, no mask selection), so code written for
that model must upscale and pick the mask itself:

=====================  ==================  ==============================================
input                  shape               meaning
=====================  ==================  ==============================================
``image_embeddings``   1x256x64x64         ``SamPredictor.get_image_embedding()``
``point_coords``       1xNx2 (N dynamic)   XY in the 1024 input frame (``transform.apply_coords``)
``point_labels``       1xN                 1 object, 0 background, 2/3 box top-left/bottom-right,
                                           -1 padding (add one when there is no box)
``mask_input``         1x1x256x256         low-res logits of an earlier answer (or zeros)
``has_mask_input``     1                   1.0 when ``mask_input`` is used, else 0.0
=====================  ==================  ==============================================

Outputs: ``low_res_masks`` 1x4x256x256 logits (mask 0 = single-mask output, 1..3 = the three
multimask candidates) and ``iou_predictions`` 1x4. Upscale as ``Sam.postprocess_masks`` does.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from ovsam.errors import InputError, OVSamError, first_line
from ovsam.fileio import atomic_path

# The attention layers export as an ONNX op that opset 14 introduced.
MIN_OPSET = 14
# The newest opset torch's TorchScript exporter (used here) writes.
MAX_OPSET: int = getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
OUTPUT_NAMES = ("low_res_masks", "iou_predictions")


class PromptDecoderForOnnx(nn.Module):
    """The exported graph: SAM-family ``model``'s prompt encoder + mask decoder (all tokens).

    Raises :class:`InputError` for a decoder without SAM's IoU head and for weights other
    than float32 (the graph's inputs are float32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model.mask_decoder, "predict_masks"):
            raise InputError(
                f"ONNX export covers SAM's mask decoder (masks + IoU head); this model's "
                f"{type(model.mask_decoder).__name__} (OV-SAM's CLIP2SAM head) is not exported"
            )
        dtypes = {
            p.dtype
            for part in (model.prompt_encoder, model.mask_decoder)
            for p in part.parameters()
        }
        if dtypes - {torch.float32}:
            raise InputError(
                f"ONNX export needs float32 weights (its inputs are float32); this model's "
                f"decoder holds {', '.join(sorted(str(d) for d in dtypes))}: export it before "
                "casting (model.float())"
            )
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        pe = self.prompt_encoder
        sparse = pe._embed_points(point_coords, point_labels, pad=False)
        no_mask = pe.no_mask_dense()
        dense = pe.mask_downscaling(mask_input) * has_mask_input + no_mask * (1 - has_mask_input)
        return self.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)


def example_inputs(points: int = 3) -> tuple[Tensor, ...]:
    """Inputs of the right shapes and dtypes (float32) for tracing or checking, with
    ``points`` (N >= 1) random clicks: ``point_coords`` 1xNx2 and ``point_labels`` 1xN, a lone
    positive click for N = 1, else a positive, N - 2 negatives and a padding point (-1).

    Raises :class:`InputError` for ``points`` below 1."""
    if points < 1:
        raise InputError(f"the example prompt needs at least one point, got {points}")
    coords = torch.rand(1, points, 2) * 1024
    rest = [0.0] * (points - 2) + [-1.0] if points > 1 else []
    labels = torch.tensor([[1.0, *rest]])
    return torch.randn(1, 256, 64, 64), coords, labels, torch.zeros(1, 1, 256, 256), torch.zeros(1)


def parity_inputs(points: int) -> list[tuple[Tensor, ...]]:
    """Inputs that exercise every branch of the graph: :func:`example_inputs` with
    ``points`` clicks, and a click with a box (labels 1, 2, 3) refining a random earlier
    answer (``has_mask_input`` 1)."""
    clicks = example_inputs(points)
    box = torch.sort(torch.rand(1, 2, 2) * 1024, dim=1).values  # top-left, bottom-right
    coords = torch.cat([torch.rand(1, 1, 2) * 1024, box], dim=1)
    refine = (clicks[0], coords, torch.tensor([[1.0, 2.0, 3.0]]), torch.randn(1, 1, 256, 256) * 8)
    return [clicks, (*refine, torch.ones(1))]


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode, every submodule's ``training`` flag restored afterwards."""
    flags = {m: m.training for m in module.modules()}
    try:
        yield module.eval()
    finally:
        for m, training in flags.items():
            m.training = training


def check_opset(opset: int) -> None:
    """Raise :class:`InputError` for an opset outside :data:`MIN_OPSET`..:data:`MAX_OPSET`."""
    if opset < MIN_OPSET:
        raise InputError(f"ONNX opset {opset} is too old: the decoder needs {MIN_OPSET} or newer")
    if opset > MAX_OPSET:
        raise InputError(
            f"ONNX opset {opset} is newer than torch {torch.__version__} exports "
            f"(opsets {MIN_OPSET} to {MAX_OPSET})"
        )


def _declare_output_shapes(model: bytes, shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The serialised ONNX ``model`` with its outputs' fixed ``shapes`` written in (the tracer
    leaves them symbolic, which tools that size buffers from the model cannot use)."""
    import onnx

    proto = onnx.load_from_string(model)
    for output in proto.graph.output:
        for dim, size in zip(output.type.tensor_type.shape.dim, shapes[output.name], strict=True):
            dim.Clear()
            dim.dim_value = size
    return proto.SerializeToString()


@torch.no_grad()
def export_decoder_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Write ``model``'s prompt decoder to ``path`` (atomically); the point axis is dynamic,
    the outputs' shapes are fixed (``1x4x256x256`` and ``1x4`` for SAM).

    Raises :class:`InputError` for an opset outside :data:`MIN_OPSET`..:data:`MAX_OPSET` and
    :class:`OVSamError` when torch's export fails.
    """
    check_opset(opset)
    inputs = example_inputs()
    path = Path(path)
    traced = io.BytesIO()  # finished in memory, written once
    with (
        _eval_mode(PromptDecoderForOnnx(model)) as module,
        atomic_path(path) as tmp,
        warnings.catch_warnings(),
    ):
        shapes = dict(zip(OUTPUT_NAMES, (tuple(t.shape) for t in module(*inputs)), strict=True))
        # tracing notes that shape-dependent Python branches become constants: intended here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(
                module,
                inputs,
                traced,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                opset_version=opset,
                dynamo=False,
            )
        except RuntimeError as exc:  # torch.onnx's errors, e.g. an opset it does not know
            reason = first_line(exc) or type(exc).__name__
            raise OVSamError(f"ONNX export at opset {opset} failed: {reason}") from exc
        tmp.write_bytes(_declare_output_shapes(traced.getvalue(), shapes))
    return path


@torch.no_grad()
def onnx_parity(model: nn.Module, path: str | Path, points: int = 5) -> float:
    """Largest absolute difference between ONNX Runtime and torch over the outputs of
    :func:`parity_inputs` (``points`` clicks; a click, a box and a mask input)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with _eval_mode(PromptDecoderForOnnx(model)) as module:
        for inputs in parity_inputs(points):
            feed = {k: v.numpy() for k, v in zip(INPUT_NAMES, inputs, strict=True)}
            for got, expected in zip(session.run(None, feed), module(*inputs), strict=True):
                worst = max(worst, float(abs(torch.from_numpy(got) - expected).max()))
    return worst
