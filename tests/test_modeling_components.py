"""Unit tests of the SAM-family building blocks against reference maths (random weights)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from ovsam.modeling import mask_decoder, tiny_vit
from ovsam.modeling.common import cache_block
from ovsam.modeling.image_encoder import (
    Attention as VitAttention,
)
from ovsam.modeling.image_encoder import (
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from ovsam.modeling.mask_decoder import MaskDecoder, prompt_chunks
from ovsam.modeling.prompt_encoder import PromptEncoder
from ovsam.modeling.tiny_vit import Attention as TinyAttention
from ovsam.modeling.tiny_vit import MBConv, fuse_conv_bn
from ovsam.modeling.transformer import Attention as TwoWayAttention
from ovsam.modeling.transformer import TwoWayTransformer


@pytest.fixture()
def prompt_encoder() -> PromptEncoder:
    torch.manual_seed(0)
    enc = PromptEncoder(256, (64, 64), (1024, 1024), mask_in_chans=16)
    for p in enc.parameters():
        torch.nn.init.normal_(p)
    return enc.eval()


def test_fourier_pe_of_a_point_is_sin_cos_of_projected_coords(
    prompt_encoder: PromptEncoder,
) -> None:
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    x, y = 300.0, 700.0
    sparse, _ = prompt_encoder(
        points=(torch.tensor([[[x, y]]]), torch.tensor([[1]])), boxes=None, masks=None
    )
    u = torch.tensor([(x + 0.5) / 1024, (y + 0.5) / 1024]) * 2 - 1  # pixel centre in [-1, 1]
    angles = 2 * math.pi * (u @ gaussian)
    expected = (
        torch.cat([angles.sin(), angles.cos()]) + prompt_encoder.point_embeddings[1].weight[0]
    )
    assert sparse.shape == (1, 2, 256)  # the point + a padding point (no box)
    assert torch.allclose(sparse[0, 0], expected, atol=1e-5)
    assert torch.equal(sparse[0, 1], prompt_encoder.not_a_point_embed.weight[0])


def test_point_labels_boxes_and_masks(prompt_encoder: PromptEncoder) -> None:
    coords = torch.tensor([[[10, 20], [30, 40]]])  # integer pixel coordinates are accepted
    pos, _ = prompt_encoder(points=(coords, torch.tensor([[1, 1]])), boxes=None, masks=None)
    neg, _ = prompt_encoder(points=(coords, torch.tensor([[0, -1]])), boxes=None, masks=None)
    diff = prompt_encoder.point_embeddings[1].weight - prompt_encoder.point_embeddings[0].weight
    assert torch.allclose(pos[0, 0] - neg[0, 0], diff[0], atol=1e-6)
    assert torch.equal(neg[0, 1], prompt_encoder.not_a_point_embed.weight[0])

    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    sparse, dense = prompt_encoder(
        points=(coords[:, :1], torch.tensor([[1]])), boxes=box, masks=None
    )
    corners, _ = prompt_encoder(points=None, boxes=box, masks=None)
    assert sparse.shape == (1, 3, 256)  # no padding point when a box is given
    assert torch.allclose(sparse[:, 1:], corners)
    assert torch.allclose(
        corners[0, 1] - prompt_encoder.point_embeddings[3].weight[0],
        pos[0, 1] - prompt_encoder.point_embeddings[1].weight[0],
        atol=1e-6,
    )  # bottom-right corner (30, 40) is encoded like the point (30, 40)
    as_points, _ = prompt_encoder(  # ONNX's convention: corners labelled 2/3 are the box
        points=(box.reshape(1, 2, 2), torch.tensor([[2, 3]])), boxes=None, masks=None
    )
    assert torch.equal(as_points, corners)  # no padding point after them
    assert dense.shape == (1, 256, 64, 64)
    assert torch.equal(dense[0, :, 5, 7], prompt_encoder.no_mask_embed.weight[0])

    _, from_mask = prompt_encoder(points=None, boxes=None, masks=torch.randn(2, 1, 256, 256))
    assert from_mask.shape == (2, 256, 64, 64)


def test_dense_pe_is_grid_of_cell_centres_and_follows_new_weights(
    prompt_encoder: PromptEncoder,
) -> None:
    with torch.no_grad():
        pe = prompt_encoder.get_dense_pe()
        point = prompt_encoder.pe_layer.forward_with_coords(
            torch.tensor([[[2.5 * 16, 7.5 * 16]]]) - 0.0, (1024, 1024)
        )
        assert pe.shape == (1, 256, 64, 64)
        assert torch.allclose(pe[0, :, 7, 2], point[0, 0], atol=1e-5)  # row y=7, column x=2
        state = prompt_encoder.state_dict()
        state["pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)
        prompt_encoder.load_state_dict(state)
        refreshed = prompt_encoder.get_dense_pe()
    assert torch.equal(refreshed[0, :128], torch.zeros(128, 64, 64))  # sin(0)
    assert torch.equal(refreshed[0, 128:], torch.ones(128, 64, 64))  # cos(0)


def _reference_rel_pos_attention(attn: VitAttention, x: torch.Tensor) -> torch.Tensor:
    """SAM's explicit formula: softmax(q*scale @ k^T + q.Rh + q.Rw) @ v."""
    b, h, w, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    rh, rw = get_rel_pos(h, h, attn.rel_pos_h), get_rel_pos(w, w, attn.rel_pos_w)
    r_q = q.reshape(b * heads, h, w, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    logits = (logits.view(-1, h, w, h, w) + rel_h[..., None] + rel_w[..., None, :]).view(
        -1, h * w, h * w
    )
    out = (logits.softmax(-1) @ v).view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4)
    return attn.proj(out.reshape(b, h, w, -1))


@pytest.mark.parametrize("size", [(6, 6), (5, 7)])
def test_vit_attention_with_relative_positions_matches_reference(size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    attn = VitAttention(
        32, num_heads=4, use_rel_pos=True, rel_pos_zero_init=False, input_size=(4, 4)
    )
    x = torch.randn(2, *size, 32)  # tables of 7 rows are resized to 2*6-1 / 2*7-1
    with torch.no_grad():
        assert torch.allclose(attn(x), _reference_rel_pos_attention(attn, x), atol=1e-5)


def test_window_partition_round_trip_with_padding() -> None:
    x = torch.randn(2, 9, 11, 3)
    windows, pad_hw = window_partition(x, 4)
    assert windows.shape == (2 * 3 * 3, 4, 4, 3) and pad_hw == (12, 12)
    assert torch.equal(windows[1], x[0, 0:4, 4:8])
    assert torch.equal(window_unpartition(windows, 4, pad_hw, (9, 11)), x)


def test_small_vit_encoder_output_shape() -> None:
    enc = ImageEncoderViT(
        img_size=64,
        embed_dim=32,
        depth=2,
        num_heads=2,
        use_rel_pos=True,
        window_size=3,
        global_attn_indexes=(1,),
        out_chans=16,
    )
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 16, 4, 4)


def _reference_attention(attn: TwoWayAttention, q, k, v) -> torch.Tensor:
    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], attn.num_heads, -1).transpose(1, 2)

    qh, kh, vh = heads(attn.q_proj(q)), heads(attn.k_proj(k)), heads(attn.v_proj(v))
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
    return attn.out_proj((weights @ vh).transpose(1, 2).flatten(2))


@pytest.mark.parametrize("direction", ["token_to_image", "image_to_token"])
def test_folded_cross_attention_equals_plain_attention(direction: str) -> None:
    torch.manual_seed(2)
    attn = TwoWayAttention(64, num_heads=4, downsample_rate=2)  # internal 32, head dim 8
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    tokens, image = torch.randn(3, 5, 64), torch.randn(1, 300, 64)  # 5*4 < 32 < 300
    if direction == "token_to_image":
        args = (tokens, image, image)
    else:
        args = (image, tokens, tokens)
    with torch.no_grad():
        out = attn(*args)  # folded
        expected = _reference_attention(attn, *(a.expand(3, -1, -1) for a in args))
    plain = attn(*args)  # with autograd: projections then SDPA
    assert out.shape == expected.shape == plain.shape
    assert torch.allclose(out, expected, atol=1e-4)
    assert torch.allclose(plain, expected, atol=1e-4)


def test_mask_decoder_tiled_upscaling_and_chunking_match_plain_maths() -> None:
    torch.manual_seed(3)
    transformer = TwoWayTransformer(depth=2, embedding_dim=64, num_heads=4, mlp_dim=128)
    decoder = MaskDecoder(transformer_dim=64, transformer=transformer).eval()
    for p in decoder.parameters():
        torch.nn.init.normal_(p, std=0.1)
    src = torch.randn(3, 64, 40, 40)
    tokens_out = torch.randn(3, 2, 64)
    with torch.no_grad():
        masks = decoder.predict_mask_logits(tokens_out, src, [3, 1])
        upscaled = decoder.output_upscaling(src)
        hyper = torch.stack(
            [decoder.output_hypernetworks_mlps[t](tokens_out[:, i]) for i, t in enumerate([3, 1])],
            dim=1,
        )
        expected = torch.einsum("bmc,bchw->bmhw", hyper, upscaled)
        assert torch.allclose(masks, expected, atol=1e-4)

        image, pe = torch.randn(1, 64, 16, 16), torch.randn(1, 64, 16, 16)
        sparse, dense = torch.randn(5, 3, 64), torch.randn(5, 64, 16, 16)
        assert len(prompt_chunks(5)) == 3
        batched = decoder(image, pe, sparse, dense, multimask_output=True)
        singles = [decoder(image, pe, sparse[i : i + 1], dense[i : i + 1], True) for i in range(5)]
        none = decoder(image, pe, sparse[:0], dense[:0], multimask_output=False)
    assert none[0].shape == (0, 1, 64, 64) and none[1].shape == (0, 1)
    assert batched[0].shape == (5, 3, 64, 64) and batched[1].shape == (5, 3)
    assert torch.allclose(batched[0], torch.cat([m for m, _ in singles]), atol=1e-4)
    assert torch.allclose(batched[1], torch.cat([i for _, i in singles]), atol=1e-5)


def test_fused_banded_mbconv_equals_conv_bn_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny_vit, "_BAND_ELEMENTS", 7 * 17 * 32)  # bands of 7 rows
    torch.manual_seed(4)
    block = MBConv(8, expand_ratio=4.0).eval()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.normal_(m.weight)
    x = torch.randn(1, 8, 300, 17).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x)
        assert fuse_conv_bn(block) == 3
        banded = block(x)  # 43 bands of 7 rows (the last one 6) with halos
    assert torch.allclose(banded, expected, atol=1e-4)


def test_work_is_split_into_cache_blocks_on_the_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the CPU (here the shapes-only meta device) MBConv runs in one band and the decoder
    decodes all prompts, and upscales all tokens, in one go: splits would only add launches."""
    assert cache_block(7, torch.device("cpu")) == 7
    assert cache_block(7, torch.device("meta")) == cache_block(7, torch.device("cuda")) > 2**60
    monkeypatch.setattr(tiny_vit, "_BAND_ELEMENTS", 7 * 17 * 32)  # CPU: bands of 7 rows
    monkeypatch.setattr(mask_decoder, "_TILE_TOKENS", 64)  # CPU: tiles of 2 rows x 2 prompts
    block = MBConv(8, expand_ratio=4.0).eval()
    decoder = MaskDecoder(
        transformer_dim=64,
        transformer=TwoWayTransformer(depth=2, embedding_dim=64, num_heads=2, mlp_dim=128),
    ).eval()
    calls: dict[str, list[int]] = {"band": [], "chunk": [], "tile": []}
    band, predict, upscale = block._band, decoder.predict_masks, decoder._upscaled_masks
    monkeypatch.setattr(
        block, "_band", lambda x, t, b: calls["band"].append(b - t) or band(x, t, b)
    )
    monkeypatch.setattr(
        decoder,
        "predict_masks",
        lambda *a, **k: calls["chunk"].append(len(a[2])) or predict(*a, **k),
    )
    monkeypatch.setattr(
        decoder, "_upscaled_masks", lambda x, *a: calls["tile"].append(len(x)) or upscale(x, *a)
    )
    seen = {}
    with torch.no_grad():
        fuse_conv_bn(block)
        for device in ("cpu", "meta"):
            x = torch.zeros(1, 8, 300, 17, device=device)
            block.to(device)(x.contiguous(memory_format=torch.channels_last))
            zeros = [(1, 64, 16, 16), (1, 64, 16, 16), (5, 3, 64), (5, 64, 16, 16)]
            decoder.to(device)(*[torch.zeros(s, device=device) for s in zeros], True)
            seen[device] = {k: list(v) for k, v in calls.items()}
            for recorded in calls.values():
                recorded.clear()
    assert seen["cpu"]["band"] == [7] * 42 + [6] and seen["meta"]["band"] == [300]
    assert seen["cpu"]["chunk"] == [2, 2, 1] and seen["meta"]["chunk"] == [5]
    assert len(seen["cpu"]["tile"]) == 8 + 8 + 4 and seen["meta"]["tile"] == [5 * 16 * 16]


def test_tinyvit_attention_bias_cache_follows_loaded_weights() -> None:
    torch.manual_seed(5)
    attn = TinyAttention(16, key_dim=8, num_heads=2, resolution=(3, 3)).eval()
    x = torch.randn(4, 9, 16)
    with torch.no_grad():
        before = attn(x)
        state = attn.state_dict()
        state["attention_biases"] = torch.randn(2, 9)
        attn.load_state_dict(state)
        after = attn(x)
        qkv = attn.qkv(attn.norm(x)).view(4, 9, 2, 24).transpose(1, 2)
        q, k, v = qkv.split(8, dim=3)
        bias = state["attention_biases"][:, attn.attention_bias_idxs]
        ref = ((q @ k.transpose(-1, -2)) * 8**-0.5 + bias).softmax(-1) @ v
        ref = attn.proj(ref.transpose(1, 2).reshape(4, 9, 16))
    assert not torch.allclose(before, after)
    assert torch.allclose(after, ref, atol=1e-5)
    assert F.mse_loss(attn(x), ref).item() < 1e-10  # autograd on: computed directly


def test_a_bfloat16_positional_encoding_is_computed_in_float32() -> None:
    """sin/cos of arguments up to ~30 rad in bfloat16 were off by ~0.1 rad: a bf16 model's
    point masks fell to IoU 0.46 with its float32 twin's."""
    torch.manual_seed(5)
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                       mask_in_chans=16).pe_layer  # fmt: skip
    half = pe.to(torch.bfloat16)
    full = copy.deepcopy(half).float()  # the same (bf16-rounded) matrix, computed in float32
    coords = torch.rand(1, 50, 2) * 1024
    got = half.forward_with_coords(coords, (1024, 1024))
    assert got.dtype == torch.bfloat16
    exact = full.forward_with_coords(coords, (1024, 1024))
    assert (got.float() - exact).abs().max() < 5e-3  # the result's own rounding only
    assert (half((64, 64)).float() - full((64, 64))).abs().max() < 5e-3
