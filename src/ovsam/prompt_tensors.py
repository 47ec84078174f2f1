"""Checks of the tensor tier's inputs (``SamPredictor.set_torch_image`` / ``predict_torch``).

The numpy tier validates each prompt in pixels; the tensor tier takes prompts already in the
model's input frame, batched, and is checked here for type, shape and batch agreement, so that a
wrong tensor is an :class:`InputError` naming it rather than an error deep inside torch.
"""

from __future__ import annotations

import operator

import torch

from ovsam.errors import InputError
from ovsam.input_values import check_mask_logits
from ovsam.transforms import preprocess_shape

# SAM's point labels: -1 padding, 0 background, 1 object, 2/3 box corners.
POINT_LABELS = (-1, 0, 1, 2, 3)


def _tensor(
    name: str, value: object, ndim: int, layout: str, where: str = "predict_torch"
) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        numpy_tier = "set_image" if where == "set_torch_image" else "predict"
        raise InputError(
            f"{name} must be a torch.Tensor ({layout}) in {where}, got "
            f"{type(value).__name__} ({numpy_tier} takes numpy arrays)"
        )
    if value.is_meta:
        raise InputError(f"{name} is a meta tensor: it holds no values")
    if value.is_complex() or value.dtype == torch.bool:
        raise InputError(f"{name} must be real numbers ({layout}), got {value.dtype}")
    if value.ndim != ndim:
        raise InputError(f"{name} must be {layout}, got shape {tuple(value.shape)}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    return value


def _image_size(original_size: object) -> tuple[int, int]:
    """``original_size`` (any pair of positive integers: ints, numpy or 0-d torch integers, a
    ``torch.Size``, an array) as ``(H, W)`` ints."""
    try:
        values = list(original_size)  # type: ignore[call-overload]
        if len(values) == 2 and not any(isinstance(v, bool) for v in values):
            height, width = (operator.index(v) for v in values)
            if height > 0 and width > 0:
                return height, width
    except TypeError:
        pass
    raise InputError(f"original_size must be (H, W), two positive integers, got {original_size!r}")


def check_image_tensor(
    image: object, original_size: object, target_length: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check ``set_torch_image``'s inputs; returns ``(original_size, input_size)``.

    ``image`` ``1x3xhxw`` real values (0..255, any real dtype but bool) resized from an
    ``original_size`` ``(H, W)`` image (positive integers) by ``ResizeLongestSide(
    target_length)``: ``(h, w)`` must be exactly that resize's size (the masks are mapped back
    by it).
    """
    tensor = _tensor("image", image, 4, "1x3xHxW", "set_torch_image")
    if tensor.shape[:2] != (1, 3):
        raise InputError(f"expected a 1x3xHxW image tensor, got {tuple(tensor.shape)}")
    height, width = _image_size(original_size)
    input_size = (int(tensor.shape[2]), int(tensor.shape[3]))
    expected = preprocess_shape(height, width, target_length)
    if input_size != expected:
        raise InputError(
            f"the {height}x{width} image resized by ResizeLongestSide({target_length}) is "
            f"{expected[0]}x{expected[1]}, got a {input_size[0]}x{input_size[1]} tensor (resize "
            "it with predictor.transform.apply_image_torch)"
        )
    return (height, width), input_size


def check_prompt_tensors(
    point_coords: object, point_labels: object, boxes: object, mask_input: object, low_res: int
) -> int:
    """Raise :class:`InputError` unless the prompts form one batch; returns its size B.

    ``point_coords`` ``BxNx2``, ``point_labels`` ``BxN`` (values in :data:`POINT_LABELS`),
    ``boxes`` ``Bx4``, ``mask_input`` ``Bx1x{low_res}x{low_res}`` (or ``1x1x...``: one mask
    shared by all B prompts, as segment-anything broadcasts it); any may be None, not all.
    """
    batches = {}
    if point_coords is not None or point_labels is not None:
        if point_coords is None or point_labels is None:
            raise InputError("point_coords and point_labels go together")
        coords = _tensor("point_coords", point_coords, 3, "BxNx2")
        labels = _tensor("point_labels", point_labels, 2, "BxN")
        if coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
            raise InputError(
                f"point_coords BxNx2 and point_labels BxN disagree: {tuple(coords.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if not bool(torch.isin(labels, torch.tensor(POINT_LABELS, device=labels.device)).all()):
            raise InputError(f"point_labels must be in {POINT_LABELS}")
        corners = (labels >= 2).any(dim=1)
        if boxes is None and bool(corners.any()) and not bool(corners.all()):
            raise InputError(
                "point_labels: some rows hold box corners (2/3) and others none; rows with "
                "corners get no padding point (as a box), the others one: decode them apart"
            )
        batches["point_coords"] = coords.shape[0]
    if boxes is not None:
        box = _tensor("boxes", boxes, 2, "Bx4")
        if box.shape[1] != 4:
            raise InputError(f"boxes must be Bx4 (XYXY), got shape {tuple(box.shape)}")
        batches["boxes"] = box.shape[0]
    if mask_input is not None:
        mask = _tensor("mask_input", mask_input, 4, f"Bx1x{low_res}x{low_res}")
        if tuple(mask.shape[1:]) != (1, low_res, low_res):
            raise InputError(
                f"mask_input must be Bx1x{low_res}x{low_res}, got shape {tuple(mask.shape)}"
            )
        largest = float(mask.abs().max()) if mask.numel() else 0.0
        check_mask_logits("mask_input", str(mask.dtype), not mask.is_floating_point(), largest)
        if mask.shape[0] != 1 or not batches:  # one mask goes with any batch
            batches["mask_input"] = mask.shape[0]
    if not batches:
        raise InputError("give at least one prompt: points, boxes or a mask_input")
    if boxes is None and mask_input is None:
        _check_every_row_has_points(labels)
    if len(set(batches.values())) > 1:
        sizes = ", ".join(f"{k} {v}" for k, v in batches.items())
        raise InputError(f"prompts must have the same batch size, got {sizes}")
    return next(iter(batches.values()))


def _check_every_row_has_points(labels: torch.Tensor) -> None:
    """Refuse a prompt whose ``BxN`` labels (no box, no mask) hold no point: N = 0, or
    only -1 padding. The decoder would return a confident mask of nothing in particular."""
    empty = ~(labels >= 0).any(dim=1)
    if bool(empty.any()):
        row = int(empty.nonzero()[0, 0])
        raise InputError(
            f"prompt {row} has no points (N = {labels.shape[1]}"
            f"{'' if labels.shape[1] == 0 else ', all -1 padding'}) and no box or mask_input"
        )
