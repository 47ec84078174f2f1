"""The test session's TinyViT memo (tests/encoder_memo.py) reuses identical passes only."""

from __future__ import annotations

import copy

import pytest
import torch

import encoder_memo
from ovsam.modeling.tiny_vit import TinyViT

PLAIN_FORWARD = getattr(TinyViT.forward, "__wrapped__", TinyViT.forward)


def _small_encoder() -> TinyViT:
    torch.manual_seed(0)
    small = dict(embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    return TinyViT(img_size=128, out_chans=8, **small).eval()


def test_repeated_passes_are_reused_and_anything_else_computed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoder_memo, "passes", {"computed": 0, "reused": 0})
    monkeypatch.setattr(encoder_memo, "_entries", type(encoder_memo._entries)())
    forward = encoder_memo.memoized(PLAIN_FORWARD)
    encoder = _small_encoder()
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        first = forward(encoder, x)
        again = forward(encoder, x.clone())
    assert encoder_memo.passes == {"computed": 1, "reused": 1} and torch.equal(first, again)
    assert again.data_ptr() != first.data_ptr()  # a copy: the caller may change it in place
    other = x.clone()
    other[0, 0, 0, 0] += 1
    changed = copy.deepcopy(encoder)
    changed.neck[0].weight.data[0, 0] += 1  # not seen by a version counter
    with torch.inference_mode():
        forward(encoder, other)
        forward(changed, x)
        forward(encoder, x.contiguous(memory_format=torch.channels_last))
        forward(encoder.double(), x.double())
    assert encoder_memo.passes == {"computed": 5, "reused": 1}
    with torch.no_grad():
        fresh = PLAIN_FORWARD(_small_encoder(), x)
        assert torch.equal(forward(_small_encoder(), x), fresh)  # the same weights rebuilt
    assert encoder_memo.passes == {"computed": 5, "reused": 2}
    forward(encoder.float().train(), x)  # training mode and autograd: never memoized
    forward(encoder.eval(), x.requires_grad_())
    assert encoder_memo.passes == {"computed": 5, "reused": 2}


class _Pyramid(torch.nn.Module):
    """A pass with nested outputs, as ``OVSamImageEncoder.forward_all``'s."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return x * self.scale, [x + 1, x + 2]


def test_nested_outputs_are_copied_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_memo, "passes", {"computed": 0, "reused": 0})
    monkeypatch.setattr(encoder_memo, "_entries", type(encoder_memo._entries)())
    forward_all = encoder_memo.memoized(_Pyramid.forward_all)
    module, x = _Pyramid().eval(), torch.ones(2, 3)
    first = forward_all(module, x)
    first[1][0].zero_()  # a caller changing its answer in place does not change the memo
    embedding, stages = forward_all(module, x)
    assert encoder_memo.passes == {"computed": 1, "reused": 1} and isinstance(stages, list)
    assert embedding.tolist() == [[2.0] * 3] * 2 and [s[0, 0].item() for s in stages] == [2, 3]


def test_passes_on_small_images_are_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_memo, "passes", {"computed": 0, "reused": 0})
    monkeypatch.setattr(encoder_memo, "_entries", type(encoder_memo._entries)())
    forward_all = encoder_memo.memoized(_Pyramid.forward_all, min_pixels=12)
    module = _Pyramid().eval()
    for _ in range(2):
        forward_all(module, torch.ones(1, 3, 3, 3))  # 9 pixels: computed, never stored
    assert encoder_memo.passes == {"computed": 0, "reused": 0} and not encoder_memo._entries
    for _ in range(2):
        forward_all(module, torch.ones(1, 3, 3, 4))
    assert encoder_memo.passes == {"computed": 1, "reused": 1}
