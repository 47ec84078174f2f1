"""Building blocks shared by the CLIP towers: activations, norms, the residual transformer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as in OpenAI CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(dtype)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``BxCxHxW`` map (timm's ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block; keys ``attn``, ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``."""

    def __init__(self, width: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNorm(width)
        act = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, width * 4), gelu=act, c_proj=nn.Linear(width * 4, width)
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``BxLxD``; ``attn_mask``: additive ``LxL`` (``-inf`` where masked)."""
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under the key ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(
            *(ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers))
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        keep: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run all blocks on ``BxLxD``; also return the outputs of the blocks indexed by ``keep``."""
        kept: list[torch.Tensor] = []
        for index, block in enumerate(self.resblocks):
            x = block(x, attn_mask)
            if index in keep:
                kept.append(x)
        return x, kept


def resize_positional_grid(
    table: torch.Tensor, grid: tuple[int, int], extra_tokens: int = 1
) -> torch.Tensor:
    """Bicubically resample a ``(extra + S*S) x D`` positional table to ``grid`` (rows, cols).

    The first ``extra_tokens`` rows (class / mean token) are kept as they are.
    """
    head, body = table[:extra_tokens], table[extra_tokens:]
    side = int(round(body.shape[0] ** 0.5))
    if (side, side) == tuple(grid):
        return table
    body = body.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    body = F.interpolate(body, size=grid, mode="bicubic", align_corners=False)
    body = body.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(table.dtype)
    return torch.cat([head, body], dim=0)
