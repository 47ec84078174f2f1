"""OpenAI CLIP's Vision Transformer image tower (ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336).

Keys are OpenAI's: ``visual.conv1``, ``class_embedding``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks.N.*``, ``ln_post``, ``proj``.
"""

from __future__ import annotations

import torch
from torch import nn

from ovsam.clip.layers import LayerNorm, Transformer, resize_positional_grid


class VisionTransformer(nn.Module):
    """``BxCxHxW`` image → ``BxD`` embedding (class token, ``ln_post``, ``proj``).

    ``forward_features`` returns four maps ``B x width x H/p x W/p`` taken after blocks
    ``L/4, L/2, 3L/4, L`` (all at stride ``p`` = patch size): the per-stage features a dense
    consumer such as the SAM2CLIP adapter needs. Other input sizes than ``image_size``
    resample the positional table bicubically.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        quick_gelu: bool,
    ) -> None:
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        grid = image_size // patch_size
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.stage_indices = tuple(layers * i // 4 - 1 for i in range(1, 5))
        self.stage_channels = (width,) * 4
        self.stage_strides = (patch_size,) * 4

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.conv1(x.to(self.conv1.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_positional_grid(self.positional_embedding, grid).to(x.dtype)
        return self.ln_pre(x), grid

    def _run(self, x: torch.Tensor, keep: tuple[int, ...]) -> tuple[torch.Tensor, list, tuple]:
        tokens, grid = self._tokens(x)
        out, kept = self.transformer(tokens, keep=keep)
        return out, kept, grid

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four ``B x width x H/p x W/p`` maps (see the class docstring)."""
        _, kept, (rows, cols) = self._run(x, self.stage_indices)
        return [t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, rows, cols) for t in kept]

    def pool(self, last_stage: torch.Tensor) -> torch.Tensor:
        """Embed a ``B x width x h x w`` token map (or a RoI of it): mean token, ``ln_post``,
        ``proj`` — the usual dense-CLIP approximation, since ViT pools with its class token."""
        return self.ln_post(last_stage.mean(dim=(2, 3))) @ self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _, _ = self._run(x, ())
        return self.ln_post(out[:, 0]) @ self.proj
