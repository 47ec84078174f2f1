"""The tensor tier's prompt checks: wrong tensors are named, right ones pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovsam.errors import InputError
from ovsam.input_values import MASK_LOGIT_LIMIT
from ovsam.prompt_tensors import check_image_tensor, check_prompt_tensors

COORDS, LABELS = torch.rand(2, 3, 2) * 1024, torch.ones(2, 3, dtype=torch.long)
BOXES, MASKS = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]), torch.zeros(2, 1, 256, 256)


def test_consistent_batches_pass() -> None:
    assert check_prompt_tensors(COORDS, LABELS, BOXES, MASKS, 256) == 2
    assert check_prompt_tensors(COORDS.double(), LABELS.float(), None, None, 256) == 2
    assert check_prompt_tensors(None, None, torch.zeros(0, 4), None, 256) == 0
    assert check_prompt_tensors(None, None, BOXES, MASKS[:1], 256) == 2  # one shared mask
    assert check_prompt_tensors(None, None, None, MASKS[:1], 256) == 1
    assert check_prompt_tensors(COORDS[:, :0], LABELS[:, :0], BOXES, None, 256) == 2  # boxes only
    assert check_prompt_tensors(COORDS, torch.tensor([[2, 3, -1], [3, 2, 1]]), None, None, 256) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, None, None, None), "give at least one prompt"),
        ((COORDS, None, None, None), "point_coords and point_labels go together"),
        ((COORDS[0], LABELS[0], None, None), r"point_coords must be BxNx2, got shape \(3, 2\)"),
        ((COORDS, LABELS[:, :2], None, None), "point_coords BxNx2 and point_labels BxN disagree"),
        ((COORDS, LABELS * 5, None, None), r"point_labels must be in \(-1, 0, 1, 2, 3\)"),
        ((COORDS.numpy(), LABELS, None, None), "must be a torch.Tensor .* got ndarray"),
        ((None, None, BOXES[0], None), r"boxes must be Bx4, got shape \(4,\)"),
        ((None, None, torch.full((1, 4), float("nan")), None), "boxes contains NaN"),
        ((None, None, None, MASKS[:, 0]), r"mask_input must be Bx1x256x256, got shape"),
        ((None, None, None, torch.zeros(2, 1, 128, 128)), "mask_input must be Bx1x256x256"),
        ((COORDS, LABELS, BOXES[:1], None), "same batch size, got point_coords 2, boxes 1"),
        ((COORDS, LABELS, None, MASKS.repeat(2, 1, 1, 1)), "point_coords 2, mask_input 4"),
        ((None, None, None, MASKS.bool()), r"mask_input must be real .* torch.bool"),
        ((None, None, BOXES.to(torch.complex64), None), r"boxes must be real .* torch.complex64"),
        ((COORDS > 5, LABELS, None, None), r"point_coords must be real .* torch.bool"),
        ((COORDS, LABELS.bool(), None, None), r"point_labels must be real .* torch.bool"),
        ((COORDS.to("meta"), LABELS, None, None), "point_coords is a meta tensor"),
        ((None, None, None, MASKS + 1e30), r"within \+-1e\+06 .* magnitude 1e\+30"),
        (
            (None, None, None, MASKS.to(torch.uint8)),
            "mask_input must be float logits .* torch.uint8",
        ),
        (
            (COORDS[:, :0], LABELS[:, :0], None, None),
            r"prompt 0 has no points \(N = 0\) and no box",
        ),
        ((COORDS, LABELS * 0 - 1, None, None), r"prompt 0 has no points \(N = 3, all -1 padding"),
        ((COORDS, torch.tensor([[1, -1, -1], [-1, -1, -1]]), None, None), "prompt 1 has no"),
        (
            (COORDS, torch.tensor([[1, 1, -1], [3, 2, -1]]), None, None),
            r"some rows hold box corners \(2/3\) and others none",
        ),
    ],
)
def test_wrong_prompts_are_named(args: tuple, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_prompt_tensors(*args, 256)


def test_predict_torch_checks_before_decoding(mobilesam_model: torch.nn.Module) -> None:
    from ovsam.predictor import SamPredictor

    predictor = SamPredictor(mobilesam_model)
    predictor.set_image(np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"boxes must be Bx4, got shape \(4,\)"):
        predictor.predict_torch(None, None, torch.tensor([1.0, 2, 30, 40]))


def test_one_mask_input_goes_with_every_prompt(mobilesam_model: torch.nn.Module) -> None:
    """As in segment-anything, a ``1x1x256x256`` mask_input is shared by a batch of prompts."""
    from ovsam.predictor import SamPredictor

    predictor = SamPredictor(mobilesam_model)
    predictor.set_image(np.full((64, 96, 3), 90, dtype=np.uint8))
    boxes = torch.tensor([[0.0, 0, 500, 300], [200, 100, 900, 600], [10, 10, 100, 100]])
    mask = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0)) * 5
    shared = predictor.predict_torch(None, None, boxes, mask, multimask_output=False)
    each = predictor.predict_torch(None, None, boxes, mask.expand(3, -1, -1, -1), False)
    assert shared[0].shape == (3, 1, 64, 96)
    for ours, reference in zip(shared, each, strict=True):
        assert torch.equal(ours, reference)


def test_mask_logits_up_to_the_limit_pass() -> None:
    assert check_prompt_tensors(None, None, None, MASKS - MASK_LOGIT_LIMIT, 256) == 2


IMAGE = torch.zeros(1, 3, 768, 1024)


def test_image_tensor_of_the_resize_passes() -> None:
    assert check_image_tensor(IMAGE, (60, 80), 1024) == ((60, 80), (768, 1024))
    assert check_image_tensor(IMAGE.to(torch.uint8), [np.int64(600), 800], 1024)[0] == (600, 800)
    for size in (np.array([60, 80]), torch.tensor([60, 80]), torch.Size([60, 80])):
        assert check_image_tensor(IMAGE, size, 1024)[0] == (60, 80)


@pytest.mark.parametrize(
    ("image", "size", "message"),
    [
        (IMAGE.numpy(), (60, 80), "must be a torch.Tensor .* got ndarray .*set_image takes numpy"),
        (IMAGE.bool(), (60, 80), "image must be real numbers .* torch.bool"),
        (IMAGE + float("nan"), (60, 80), "image contains NaN"),
        (IMAGE[0], (60, 80), r"image must be 1x3xHxW, got shape \(3, 768, 1024\)"),
        (IMAGE[:, :1], (60, 80), r"expected a 1x3xHxW image tensor, got \(1, 1, 768, 1024\)"),
        (IMAGE, (0, 0), r"original_size must be \(H, W\), two positive integers, got \(0, 0\)"),
        (IMAGE, (-5, 10), "two positive integers"),
        (IMAGE, None, "two positive integers, got None"),
        (IMAGE, (60.7, 80.2), "two positive integers"),
        (IMAGE, (True, 80), "two positive integers"),
        (IMAGE, (60, 80, 3), "two positive integers"),
        (
            IMAGE,
            (100, 100),
            "the 100x100 image resized by ResizeLongestSide.1024. is 1024x1024, got",
        ),
        (torch.zeros(1, 3, 1024, 0), (60, 80), "is 768x1024, got a 1024x0 tensor"),
    ],
)
def test_wrong_image_tensors_are_named(image: object, size: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_image_tensor(image, size, 1024)


def test_a_refused_torch_image_keeps_the_current_one(mobilesam_model: torch.nn.Module) -> None:
    from ovsam.predictor import SamPredictor

    predictor = SamPredictor(mobilesam_model)
    predictor.set_image(np.zeros((60, 80, 3), dtype=np.uint8))
    before = predictor.export_state()
    with pytest.raises(InputError, match="is 768x1024, got a 1024x1024 tensor"):
        predictor.set_torch_image(torch.zeros(1, 3, 1024, 1024), (60, 80))
    assert predictor.export_state() is before and predictor.original_size == (60, 80)
