"""SAM2CLIP adapter: CLIP's four stage maps → SAM's ``256x64x64`` image embedding.

The official ``MultiLayerTransformerNeck`` (checkpoint prefix ``neck_student``): each stage is
brought to the 64x64 grid of a 1024² input with a patch embedding to ``embed_dim`` channels
(conv k=s=4 / 2 / 1 for strides 4 / 8 / 16, transposed conv k=s=2 for stride 32; keys
``patch_embeds.N.projection``), plus a learned per-level vector (``level_encoding``); the sum
gets SAM ViT-H's absolute position table (``pos_embed`` buffer, ``1x64x64x1280``), five SAM ViT
blocks (16 heads, relative positions, 14x14 windows in blocks 0-3, global in block 4) and SAM's
neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) → ``Bx256x64x64``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from ovsam.modeling.common import LayerNorm2d
from ovsam.modeling.image_encoder import Block

EMBED_STRIDE = 16


class PatchEmbed(nn.Module):
    """One stage → ``BxHxWxC`` tokens on the stride-16 grid (key ``projection``)."""

    def __init__(self, in_channels: int, embed_dim: int, stride: int) -> None:
        super().__init__()
        if stride > EMBED_STRIDE:
            factor = stride // EMBED_STRIDE
            self.projection: nn.Module = nn.ConvTranspose2d(in_channels, embed_dim, factor, factor)
        else:
            factor = EMBED_STRIDE // stride
            self.projection = nn.Conv2d(in_channels, embed_dim, factor, factor)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(x).permute(0, 2, 3, 1)


class SAM2CLIPAdapter(nn.Module):
    """Multi-layer transformer neck (see the module docstring).

    ``forward(stages)`` takes the four ``BxC_ixH/s_ixW/s_i`` CLIP maps of a 1024² input and
    returns the ``Bx256x64x64`` embedding SAM's prompt encoder / decoder expect.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (384, 768, 1536, 3072),
        strides: Sequence[int] = (4, 8, 16, 32),
        embed_dim: int = 1280,
        out_channels: int = 256,
        image_size: int = 1024,
        depth: int = 5,
        num_heads: int = 16,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (4,),
    ) -> None:
        super().__init__()
        grid = image_size // EMBED_STRIDE
        self.patch_embeds = nn.ModuleList(
            PatchEmbed(c, embed_dim, s) for c, s in zip(in_channels, strides, strict=True)
        )
        self.register_buffer("pos_embed", torch.zeros(1, grid, grid, embed_dim))
        self.level_encoding = nn.Embedding(len(in_channels), embed_dim)
        nn.init.normal_(self.level_encoding.weight)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=4.0,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                act_layer=nn.GELU,
                use_rel_pos=True,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        x = sum(
            embed(feature) + self.level_encoding.weight[level]
            for level, (embed, feature) in enumerate(zip(self.patch_embeds, stages, strict=True))
        )
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
