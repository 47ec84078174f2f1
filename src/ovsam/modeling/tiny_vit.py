"""MobileSAM's TinyViT image encoder (``vit_t``), written for fast CPU inference.

Stages: conv patch embedding (/4), MBConv stage, then three stages of windowed attention
blocks (each with a depthwise "local" conv and an MLP) joined by conv patch merging, then
SAM's neck -> ``Bx256x64x64`` for a ``Bx3x1024x1024`` input. Parameter names equal MobileSAM's
``tiny_vit_sam`` (439 tensors with ``norm_head``/``head``, the unused ImageNet classifier kept
so the official checkpoint loads strictly).

Between stages tokens are kept as ``BxHxWxC`` tensors; convolutions see them through a
channels-last view, so no layout copies are made. Attention uses
``F.scaled_dot_product_attention`` with the learned relative-offset bias as ``attn_mask``;
the gathered ``heads x N x N`` bias is cached while gradients are off and refreshed whenever
``attention_biases`` changes. :func:`fuse_conv_bn` folds every BatchNorm into its conv.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ovsam.modeling.common import DerivedTensorCache, LayerNorm2d, cache_block
from ovsam.modeling.image_encoder import window_partition, window_unpartition

# Hidden activations per band of rows in the fused MBConv on the CPU (~2 MB of float32).
_BAND_ELEMENTS = 1 << 19


class Conv2dBN(nn.Sequential):
    """``Conv2d`` (no bias) followed by ``BatchNorm2d`` (keys ``c.*`` and ``bn.*``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chans, out_chans, ks, stride, pad, groups=groups, bias=False)
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """An equivalent single ``Conv2d`` with the (eval-mode) BatchNorm folded in."""
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        out = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            groups=conv.groups,
            bias=True,
        ).to(conv.weight.device, conv.weight.dtype)
        out.weight.copy_(conv.weight * scale[:, None, None, None])
        out.bias.copy_(bn.bias - bn.running_mean * scale)
        return out


def fuse_conv_bn(module: nn.Module) -> int:
    """Replace every :class:`Conv2dBN` inside ``module`` by its fused conv; returns the count.

    Inference only: the result has ``...c.weight``-less keys (``.weight``/``.bias`` directly),
    so load official checkpoints before fusing.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, Conv2dBN):
            setattr(module, name, child.fused())
            count += 1
        else:
            count += fuse_conv_bn(child)
    return count


def _chw(x: Tensor) -> Tensor:
    """``BxHxWxC`` tokens -> a ``BxCxHxW`` channels-last view (no copy)."""
    return x.permute(0, 3, 1, 2)


def _hwc(x: Tensor) -> Tensor:
    """``BxCxHxW`` (channels-last in memory) -> ``BxHxWxC`` view."""
    return x.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convs: ``Bx3xHxW -> Bx(embed_dim)x(H/4)x(W/4)`` (channels last)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``Bx3xHxW -> BxDx(H/4)x(W/4)``."""
        return self.seq(x.contiguous(memory_format=torch.channels_last))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, ks=1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, ks=1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """``BxCxHxW -> BxCxHxW`` (channels last).

        Once fused (plain convs) and without autograd, runs on the CPU in bands of rows so
        that the 4x-wide hidden activations stay in cache; otherwise layer by layer.
        """
        if torch.is_grad_enabled() or isinstance(self.conv2, Conv2dBN):
            y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
            return self.act3(y + x)
        out = torch.empty_like(x)
        height = x.shape[2]
        row = x.shape[0] * x.shape[3] * self.conv1.out_channels
        band = max(1, cache_block(_BAND_ELEMENTS, x.device) // row)
        for top in range(0, height, band):
            bottom = min(height, top + band)
            out[:, :, top:bottom] = self._band(x, top, bottom)
        return out

    def _band(self, x: Tensor, top: int, bottom: int) -> Tensor:
        """Output rows ``top:bottom``; the 3x3 depthwise conv needs one hidden row either side."""
        lo, hi = max(0, top - 1), min(x.shape[2], bottom + 1)
        hidden = self.act1(self.conv1(x[:, :, lo:hi]))
        # Rows beyond the image are the depthwise conv's zero padding.
        hidden = F.pad(hidden, (0, 0, lo - (top - 1), bottom + 1 - hi))
        conv2 = self.conv2
        hidden = self.act2(
            F.conv2d(hidden, conv2.weight, conv2.bias, padding=(0, 1), groups=conv2.groups)
        )
        return self.act3(self.conv3(hidden) + x[:, :, top:bottom])


class PatchMerging(nn.Module):
    """``BxCxHxW`` -> ``BxH'xW'xC'`` tokens; stride 2 except for MobileSAM's last stage."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim, 1, 1, 0)
        # MobileSAM keeps 64x64 for its last stage (out_dim 320; 448/576 for larger TinyViTs).
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        """``BxCxHxW -> BxH'xW'xC'``."""
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return _hwc(self.conv3(x))


class Attention(nn.Module):
    """Window self-attention with a learned bias per (head, |dy|, |dx|) offset."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = [
            offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets))
            for p in points
            for q in points
        ]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer(
            "attention_bias_idxs",
            torch.tensor(idxs, dtype=torch.long).view(len(points), len(points)),
            persistent=False,
        )
        self._bias_cache = DerivedTensorCache()

    def bias(self) -> Tensor:
        """``heads x N x N`` attention bias; cached while autograd is off."""
        return self._bias_cache.get(
            self.attention_biases, lambda: self.attention_biases[:, self.attention_bias_idxs]
        )

    def forward(self, x: Tensor) -> Tensor:
        """``BxNxC -> BxNxC`` (N = window area)."""
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=3)
        # A 4-D (expanded) mask lets torch pick its fused CPU attention kernel.
        mask = self.bias().to(q.dtype).expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """``norm -> fc1 -> GELU -> fc2`` on the last dimension."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """``...xC -> ...xC``."""
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention + depthwise local conv + MLP on ``BxHxWxC`` tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        pad = local_conv_size // 2
        self.local_conv = Conv2dBN(dim, dim, ks=local_conv_size, stride=1, pad=pad, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        """``BxHxWxC -> BxHxWxC``; zero-padded windows attend over the padding as upstream."""
        b, h, w, c = x.shape
        ws = self.window_size
        windows, pad_hw = window_partition(x, ws)
        attn = self.attn(windows.view(-1, ws * ws, c)).view(-1, ws, ws, c)
        x = x + window_unpartition(attn, ws, pad_hw, (h, w))
        x = _hwc(self.local_conv(_chw(x)))
        return x + self.mlp(x)


class TinyViT(nn.Module):
    """TinyViT backbone + SAM neck: ``Bx3xSxS`` normalised image -> ``Bx256x(S/16)x(S/16)``."""

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            out_dim = embed_dims[min(i + 1, len(embed_dims) - 1)]
            downsample = PatchMerging(dim, out_dim) if i < len(embed_dims) - 1 else None
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio) for _ in range(depths[i])]
            else:
                blocks = [
                    TinyViTBlock(dim, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                    for _ in range(depths[i])
                ]
            self.layers.append(TinyViTStage(blocks, downsample, conv_stage=i == 0))
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """``Bx3xSxS -> Bx256x(S/16)x(S/16)`` (``norm_head``/``head`` are not used)."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(_chw(x)).contiguous()


class TinyViTStage(nn.Module):
    """A stage's ``blocks`` then optional ``downsample`` (keys ``blocks.N``, ``downsample``).

    The MBConv stage works on ``BxCxHxW``; attention stages on ``BxHxWxC``. Output: ``BxHxWxC``.
    """

    def __init__(
        self, blocks: list[nn.Module], downsample: nn.Module | None, conv_stage: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.conv_stage = conv_stage

    def forward(self, x: Tensor) -> Tensor:
        """Conv stage: ``BxCxHxW -> BxH'xW'xC'``; attention stage: ``BxHxWxC -> BxH'xW'xC'``."""
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is None:
            return x
        return self.downsample(x if self.conv_stage else _chw(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)
