"""SAM's prompt encoder: points, boxes and low-resolution masks -> sparse / dense embeddings.

Coordinates are XY pixels in the model's input frame (the image resized so its long side is
1024, before padding); point labels are 1 (foreground), 0 (background), -1 (padding). Boxes
are XYXY. Key names equal ``segment_anything.modeling.prompt_encoder``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ovsam.modeling.common import DerivedTensorCache, LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features: ``[sin(2*pi*u@G), cos(2*pi*u@G)]``, u in [-1, 1]^2, G 2xF."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _work_dtype(self) -> torch.dtype:
        """float32 at least: sin and cos of arguments up to about 30 rad lose about 0.1 rad in
        bfloat16 (a bf16 model's point masks fell to IoU 0.46 with its float32 twin's)."""
        return torch.promote_types(self.positional_encoding_gaussian_matrix.dtype, torch.float32)

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """``...x2`` XY normalised to [0, 1] -> ``...x(2F)`` in the matrix's dtype (computed in
        :meth:`_work_dtype`)."""
        matrix = self.positional_encoding_gaussian_matrix
        work = self._work_dtype()
        coords = (2 * coords.to(work) - 1) @ matrix.to(work)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).to(matrix.dtype)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """Encoding of the pixel centres of an ``h x w`` grid: ``(2F)xhxw``."""
        h, w = size
        device, work = self.positional_encoding_gaussian_matrix.device, self._work_dtype()
        y = (torch.arange(h, device=device, dtype=work) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=work) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``BxNx2`` XY pixel coordinates in an ``image_size`` (H, W) frame -> ``BxNx(2F)``."""
        coords = coords_input.to(self._work_dtype())
        scale = coords.new_tensor([1.0 / image_size[1], 1.0 / image_size[0]])
        return self._pe_encoding(coords * scale)


class PromptEncoder(nn.Module):
    """Encodes prompts for SAM's mask decoder."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # negative point, positive point, 2 box corners
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe_cache = DerivedTensorCache()

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid: ``1x(embed_dim)xhxw``.

        Cached while autograd is off (it depends only on the Gaussian matrix).
        """
        return self._dense_pe_cache.get(
            self.pe_layer.positional_encoding_gaussian_matrix,
            lambda: self.pe_layer(self.image_embedding_size).unsqueeze(0),
        )

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """``BxNx2`` XY + ``BxN`` labels -> ``Bx(N+pad)xC``; a padding point is appended if asked.

        Labels: -1 padding, 0 background, 1 object, 2 / 3 top-left / bottom-right box corner
        (SAM's ONNX convention; :meth:`_embed_boxes` gives the same embedding for a box).
        """
        points = points.to(torch.float32) + 0.5  # centre of the pixel
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        for kind, learned in enumerate(self.point_embeddings):  # 0/1 points, 2/3 box corners
            embedding = embedding + torch.where(
                labels == kind, learned.weight, embedding.new_zeros(())
            )
        return embedding

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """``Bx4`` XYXY -> ``Bx2xC`` (top-left and bottom-right corner embeddings)."""
        coords = (boxes.to(torch.float32) + 0.5).reshape(-1, 2, 2)
        corners = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return corners + corner_types

    def no_mask_dense(self) -> Tensor:
        """The dense embedding of "no mask prompt": ``1xCx1x1``, broadcast over the grid."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Embed prompts.

        ``points`` = (``BxNx2`` XY coords, ``BxN`` labels), ``boxes`` ``Bx4`` XYXY, ``masks``
        ``Bx1x256x256`` logits. Returns ``(sparse BxKx(embed_dim), dense Bx(embed_dim)x64x64)``
        with K = N (+1 padding point when there is no box) + 2 per box. Point labels 2 / 3 (a
        box's corners, in every row) count as a box, as in segment-anything's ONNX model: no
        padding point. Without a mask the dense output is the ``no_mask`` embedding, an
        expanded view (no copy per prompt).
        """
        batch = next(
            (t.shape[0] for t in (points[0] if points else None, boxes, masks) if t is not None),
            1,
        )
        weight = self.no_mask_embed.weight
        parts = [weight.new_empty((batch, 0, self.embed_dim))]
        if points is not None:
            corners = bool((points[1] >= 2).any(dim=1).all()) if points[1].numel() else False
            pad = boxes is None and not corners
            parts.append(self._embed_points(points[0], points[1], pad=pad))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_dense().expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
