"""open_clip's ConvNeXt image towers: a timm ConvNeXt trunk plus a projection head.

Key names follow open_clip's ``TimmModel`` wrapping timm's ``ConvNeXt``:
``visual.trunk.stem.{0,1}``, ``visual.trunk.stages.S.downsample.{0,1}``,
``visual.trunk.stages.S.blocks.B.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``,
``visual.trunk.head.norm`` (the trunk's pooled-feature LayerNorm; its classifier is removed)
and ``visual.head.proj`` (linear) or ``visual.head.mlp.{fc1,fc2}`` (MLP head, as in
``convnext_large_d``). Pooling is global average, then the norm, then the head.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ovsam.clip.layers import LayerNorm2d


class Mlp(nn.Module):
    """``fc1`` → GELU → ``fc2`` (timm's ``Mlp``)."""

    def __init__(self, dim: int, hidden: int, out: int, bias2: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out, bias=bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 → LayerNorm → MLP (x4) → layer scale ``gamma`` → residual."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm2d + 2x2 stride-2 conv) then ``blocks``."""

    def __init__(self, in_dim: int, dim: int, depth: int, eps: float) -> None:
        super().__init__()
        self.downsample: nn.Module = nn.Identity()
        if in_dim != dim:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=eps), nn.Conv2d(in_dim, dim, 2, stride=2)
            )
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim, eps) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class PooledHead(nn.Module):
    """The trunk's head with its classifier removed: global average pool → LayerNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


class ConvNeXtTrunk(nn.Module):
    """timm ConvNeXt: patchify stem (4x4, stride 4) and four stages (strides 4, 8, 16, 32)."""

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], eps: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=eps))
        in_dims = (dims[0], *dims[:-1])
        self.stages = nn.Sequential(
            *(ConvNeXtStage(i, d, n, eps) for i, d, n in zip(in_dims, dims, depths, strict=True))
        )
        self.head = PooledHead(dims[-1], eps)


class ConvNeXtTower(nn.Module):
    """open_clip ``TimmModel`` for ConvNeXt: ``BxCxHxW`` → ``BxD``; per-stage maps too."""

    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        output_dim: int,
        head: str,
        image_size: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.trunk = ConvNeXtTrunk(depths, dims, eps)
        if head == "mlp":
            layers = OrderedDict(mlp=Mlp(dims[-1], 2 * output_dim, output_dim, bias2=False))
        else:
            layers = OrderedDict(
                drop=nn.Dropout(0.0), proj=nn.Linear(dims[-1], output_dim, bias=False)
            )
        self.head = nn.Sequential(layers)
        self.stage_channels = tuple(dims)
        self.stage_strides = (4, 8, 16, 32)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage maps ``[BxC_i x H/s_i x W/s_i]`` for strides ``s = 4, 8, 16, 32``."""
        x = self.trunk.stem(x.to(self.trunk.stem[0].weight.dtype))
        features = []
        for stage in self.trunk.stages:
            x = stage(x)
            features.append(x)
        return features

    def pool(self, last_stage: torch.Tensor) -> torch.Tensor:
        """Global pool + norm + projection of a stride-32 map (or a RoI of it)."""
        return self.head(self.trunk.head(last_stage))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)[-1])
