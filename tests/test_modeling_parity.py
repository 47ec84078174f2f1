"""Numerical parity of our MobileSAM with the upstream code on the real weights.

Needs the real ``mobile_sam.pt`` (``mobilesam_checkpoint`` fixture) and PyPI
``mobilesam-mirror==1.0.0`` (skipped when absent). Tolerances cover float reordering only
(fused BatchNorm, SDPA, folded attention products): observed differences are ~3e-6 on the
embedding and ~1e-4 on mask logits of magnitude ~10-30.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.build import build_model
from ovsam.checkpoint import read_state_dict
from ovsam.transforms import ResizeLongestSide
from upstream_mobilesam import INSTALL_HINT, build_upstream_mobilesam, decode, stand_ins

ASSET = Path(__file__).resolve().parents[1] / "src" / "ovsam" / "assets" / "coffee.jpg"


@pytest.fixture(scope="module")
def upstream(mobilesam_checkpoint: Path) -> torch.nn.Module:
    with stand_ins():
        pytest.importorskip("mobile_sam", reason=INSTALL_HINT)
    return build_upstream_mobilesam(mobilesam_checkpoint)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """The packaged photo resized to a 1024 long side: 1x3xhxw float 0..255."""
    array = ResizeLongestSide(1024).apply_image(np.asarray(Image.open(ASSET).convert("RGB")))
    return torch.from_numpy(array).permute(2, 0, 1)[None].float()


@pytest.fixture(scope="module")
def reference_embedding(upstream: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return upstream.image_encoder(upstream.preprocess(image))


def test_real_checkpoint_loads_all_439_tensors(mobilesam_checkpoint: Path) -> None:
    state = read_state_dict(mobilesam_checkpoint)
    model = build_model("mobilesam", mobilesam_checkpoint, fuse=False)
    assert len(state) == 439 and set(model.state_dict()) == set(state)
    for key in (
        "image_encoder.layers.1.blocks.0.attn.attention_biases",
        "mask_decoder.iou_token.weight",
    ):
        assert torch.equal(model.state_dict()[key], state[key])


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_image_embedding_matches_upstream(
    fuse: bool,
    mobilesam_checkpoint: Path,
    image: torch.Tensor,
    reference_embedding: torch.Tensor,
) -> None:
    model = build_model("mobilesam", mobilesam_checkpoint, fuse=fuse)
    with torch.inference_mode():
        x = model.preprocess(image)
        embedding = model.image_encoder(x)
    assert embedding.shape == (1, 256, 64, 64)
    torch.testing.assert_close(embedding, reference_embedding, atol=5e-5, rtol=1e-4)


PROMPTS = {
    "fg+bg points, 3 masks": (
        True,
        {"points": (torch.tensor([[[520.0, 300.0], [100.0, 700.0]]]), torch.tensor([[1, 0]]))},
    ),
    "box, 1 mask": (False, {"boxes": torch.tensor([[250.0, 120.0, 800.0, 560.0]])}),
    "box + point, 1 mask": (
        False,
        {
            "points": (torch.tensor([[[520.0, 300.0]]]), torch.tensor([[1]])),
            "boxes": torch.tensor([[250.0, 120.0, 800.0, 560.0]]),
        },
    ),
    "5 boxes, 3 masks": (
        True,
        {
            "boxes": torch.tensor(
                [
                    [250.0, 120.0, 800.0, 560.0],
                    [0.0, 0.0, 1023.0, 700.0],
                    [400.0, 300.0, 450.0, 330.0],
                    [10.0, 500.0, 300.0, 690.0],
                    [600.0, 50.0, 1000.0, 400.0],
                ]
            )
        },
    ),
}


@pytest.mark.parametrize("case", list(PROMPTS))
def test_masks_and_iou_match_upstream(
    case: str,
    mobilesam_model: torch.nn.Module,
    upstream: torch.nn.Module,
    reference_embedding: torch.Tensor,
) -> None:
    multimask, prompts = PROMPTS[case]
    with torch.inference_mode():
        masks, iou = decode(mobilesam_model, reference_embedding, multimask, **prompts)
        ref_masks, ref_iou = decode(upstream, reference_embedding, multimask, **prompts)
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    assert ref_masks.abs().max() > 5  # real, confident logits
    torch.testing.assert_close(masks, ref_masks, atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-4, rtol=1e-4)


def test_mask_prompt_and_full_pipeline_match_upstream(
    mobilesam_model: torch.nn.Module,
    upstream: torch.nn.Module,
    image: torch.Tensor,
    reference_embedding: torch.Tensor,
) -> None:
    multimask, prompts = PROMPTS["box, 1 mask"]
    with torch.inference_mode():
        embedding = mobilesam_model.image_encoder(mobilesam_model.preprocess(image))
        low_res, _ = decode(mobilesam_model, embedding, multimask, **prompts)
        again = {**prompts, "masks": low_res}
        masks, iou = decode(mobilesam_model, embedding, multimask, **again)
        ref_masks, ref_iou = decode(upstream, reference_embedding, multimask, **again)
        size = tuple(image.shape[-2:])
        full = mobilesam_model.postprocess_masks(masks, size, (480, 640))
        ref_full = upstream.postprocess_masks(ref_masks, size, (480, 640))
    torch.testing.assert_close(masks, ref_masks, atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-4, rtol=1e-4)
    agreement = ((full > 0) == (ref_full > 0)).float().mean().item()
    assert agreement > 0.9999
    assert 0.05 < (full > 0).float().mean().item() < 0.95  # a real, non-trivial mask
