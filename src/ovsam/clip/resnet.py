"""OpenAI CLIP's ModifiedResNet image tower (RN50, RN101, RN50x4, RN50x16, RN50x64).

Differences from torchvision's ResNet (as in OpenAI's release): a three-convolution stem with
average pooling, anti-aliased strided convolutions (an average pool before the strided 1x1),
and an attention-pooling head in place of global average pooling. Key names are OpenAI's
(``visual.conv1``, ``visual.layer3.5.bn2``, ``visual.attnpool.c_proj`` ...).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ovsam.clip.layers import resize_positional_grid


class Bottleneck(nn.Module):
    """1x1 → 3x3 → (avgpool) → 1x1 residual block with 4x expansion."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the mean token over a ``BxCxHxW`` map → ``BxD``.

    The positional table is learned for ``spacial_dim``² positions; other map sizes are
    handled by bicubic resampling of the table.
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # B x HW x C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        pos = resize_positional_grid(self.positional_embedding, (height, width))
        x = x + pos[None].to(x.dtype)
        batch, length, channels = x.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        q = F.linear(x[:, :1], self.q_proj.weight, self.q_proj.bias)
        k = F.linear(x, self.k_proj.weight, self.k_proj.bias)
        v = F.linear(x, self.v_proj.weight, self.v_proj.bias)
        q = q.view(batch, 1, heads, head_dim).transpose(1, 2)
        k = k.view(batch, length, heads, head_dim).transpose(1, 2)
        v = v.view(batch, length, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, channels)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """CLIP ResNet: ``BxCxHxW`` image (stride 32 overall) → ``BxD`` embedding.

    ``forward_features`` returns the four stage maps (strides 4, 8, 16, 32; channels
    ``4*width, 8*width, 16*width, 32*width`` — 384/768/1536/3072 for RN50x16).
    """

    def __init__(
        self, layers: tuple[int, ...], output_dim: int, heads: int, image_size: int, width: int
    ) -> None:
        super().__init__()
        self.image_size = image_size
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(image_size // 32, embed_dim, heads, output_dim)
        self.stage_channels = tuple(width * 4 * 2**i for i in range(4))
        self.stage_strides = (4, 8, 16, 32)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage maps ``[BxC_i x H/s_i x W/s_i]`` for strides ``s = 4, 8, 16, 32``.

        Computed, and returned, in channels-last memory layout: the convolutions run 1.2-1.35x
        faster so on CPU (RN50 / RN50x16 at 1024x1024, 2 threads); values equal the default
        layout's to fp32 rounding (~1e-6 relative).
        """
        x = self.stem(x.to(self.conv1.weight.dtype, memory_format=torch.channels_last))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features

    def pool(self, last_stage: torch.Tensor) -> torch.Tensor:
        """Attention-pool a stride-32 map (or a RoI of it) to the joint-space embedding."""
        return self.attnpool(last_stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)[-1])
