"""SAM's mask decoder, split so that variants reuse the trunk.

:class:`TwoWayMaskDecoder` holds what every SAM-style decoder shares: the two-way
transformer, ``mask_tokens``, the ``output_upscaling`` convolutions and one hypernetwork MLP
per mask token, with :meth:`TwoWayMaskDecoder.run_transformer` and
:meth:`TwoWayMaskDecoder.predict_mask_logits`. :class:`MaskDecoder` is SAM's decoder (IoU
token + 4 mask tokens + IoU head). OV-SAM's decoder (one mask token, no IoU head, a label
token prepended) subclasses :class:`TwoWayMaskDecoder` with ``num_mask_tokens=1``.
Key names equal ``segment_anything.modeling.mask_decoder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ovsam.modeling.common import LayerNorm2d, cache_block
from ovsam.modeling.image_token_cache import (
    ImageTokenCache,
    build_image_token_cache,
    run_transformer_cached,
)
from ovsam.modeling.prompt_workers import map_prompt_chunks, prompt_workers


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.N`` keys)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim], strict=True)
        )
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        """``...xinput_dim -> ...xoutput_dim``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


# CPU block sizes (``cache_block``; a GPU decodes a whole batch and tile at once).
# Tokens (x prompts) upscaled per tile in ``predict_mask_logits``: ~4 MB of features.
_TILE_TOKENS = 2048
# Prompts decoded together by ``MaskDecoder.forward`` (see ``prompt_chunks``).
PROMPTS_PER_CHUNK = 2
# Prompts decoded together by ``TwoWayMaskDecoder.decode_cached`` (fewer when that leaves
# a parallel worker idle; see ``ovsam.modeling.prompt_workers``).
CACHED_PROMPTS_PER_CHUNK = 2


def prompt_chunks(batch: int, chunk: int = PROMPTS_PER_CHUNK) -> list[slice]:
    """Slices of ``range(batch)`` of at most ``chunk`` prompts.

    Decoding a few prompts at a time keeps each prompt's 4096x256 image tokens in cache;
    per-prompt results do not depend on the chunking.
    """
    return [slice(i, min(batch, i + chunk)) for i in range(0, batch, chunk)]


def prompt_rows(x: Tensor, rows: slice) -> Tensor:
    """``x[rows]``, or ``x`` itself when it has batch 1 (shared by all prompts)."""
    return x if x.shape[0] == 1 else x[rows]


def _share_broadcast_batch(x: Tensor) -> Tensor:
    """``x[:1]`` when every batch entry is the same memory (an ``expand``-ed view), else ``x``."""
    return x[:1] if x.shape[0] > 1 and x.stride(0) == 0 else x


def _per_pixel_map(conv: nn.ConvTranspose2d) -> tuple[Tensor, Tensor]:
    """A 2x2 stride-2 transposed conv as a per-pixel linear map ``(weight Cx4C', bias 4C')``.

    Outputs are ordered ``(i, j, c')`` with ``(i, j)`` the row/column offset of the output pixel.
    """
    return conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1), conv.bias.repeat(4)


def _empty_outputs(like: Tensor, masks: int, grid: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(0xMx4hx4w masks, 0xM scores)`` for an empty prompt batch."""
    empty = like.new_zeros((0, masks))
    return empty.new_zeros((0, masks, 4 * grid[0], 4 * grid[1])), empty


class TwoWayMaskDecoder(nn.Module):
    """Shared trunk of SAM-style decoders: transformer, upscaling and hypernetwork MLPs."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_mask_tokens: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = num_mask_tokens
        self.mask_tokens = nn.Embedding(num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(num_mask_tokens)
        )

    def run_transformer(
        self,
        output_tokens: Tensor,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Two-way attention between ``[output_tokens, prompts]`` and the image.

        ``output_tokens`` ``KxC`` (learned tokens, same for every prompt),
        ``image_embeddings`` ``1xCxhxw`` (shared by all prompts) or ``BxCxhxw``,
        ``image_pe`` ``1xCxhxw``, ``sparse_prompt_embeddings`` ``BxNxC``,
        ``dense_prompt_embeddings`` ``BxCxhxw`` (or an expanded ``1xCxhxw``).
        Returns ``(hs Bx(K+N)xC, src BxCxhxw)``.
        """
        batch = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat(
            (output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings), dim=1
        )
        src = _share_broadcast_batch(image_embeddings) + _share_broadcast_batch(
            dense_prompt_embeddings
        )
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        src = keys.transpose(1, 2).reshape(-1, c, h, w).expand(batch, -1, -1, -1)
        return hs, src

    def build_image_cache(
        self, image_embeddings: Tensor, image_pe: Tensor, dense_embedding: Tensor
    ) -> ImageTokenCache:
        """Precompute the prompt-independent image side (see ``forward_cached``).

        ``image_embeddings`` / ``image_pe`` ``1xCxhxw``; ``dense_embedding`` the ``no_mask``
        dense prompt (``1xCxhxw`` or broadcastable).
        """
        return build_image_token_cache(self, image_embeddings, image_pe, dense_embedding)

    def decode_cached(
        self,
        cache: ImageTokenCache,
        output_tokens: Tensor,
        sparse_prompt_embeddings: Tensor,
        query_rows: Sequence[int],
        token_indices: Sequence[int],
    ) -> tuple[Tensor, Tensor]:
        """Transformer + masks for B prompts on the image behind ``cache``.

        ``output_tokens`` ``KxC``; ``query_rows`` the tokens whose outputs are needed, the
        mask tokens ``token_indices`` last and in that order. Returns ``(hs
        Bxlen(query_rows)xC, masks Bxlen(token_indices)x4hx4w logits)``.
        """
        batch = sparse_prompt_embeddings.shape[0]
        h, w = cache.grid_size
        if batch == 0:
            hs = output_tokens.new_zeros((0, len(query_rows), output_tokens.shape[-1]))
            return hs, _empty_outputs(hs, len(token_indices), (h, w))[0]

        def decode(rows: slice) -> tuple[Tensor, Tensor]:
            prompts = sparse_prompt_embeddings[rows]
            hs, keys = run_transformer_cached(self, cache, output_tokens, prompts, query_rows)
            mask_tokens_out = hs[:, len(query_rows) - len(token_indices) :]
            masks = self.masks_from_first_upscale(
                keys.linear(cache.levels[-1]["upscale"]),
                self.hypernetwork_inputs(mask_tokens_out, token_indices),
                (prompts.shape[0], h, w),
            )
            return hs, masks

        workers = prompt_workers(output_tokens.device)
        chunk = min(
            cache_block(CACHED_PROMPTS_PER_CHUNK, output_tokens.device), -(-batch // workers)
        )
        outputs = map_prompt_chunks(decode, prompt_chunks(batch, chunk), workers)
        return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])

    def hypernetwork_inputs(self, mask_tokens_out: Tensor, token_indices: Sequence[int]) -> Tensor:
        """``BxMxC`` outputs of the mask tokens in ``token_indices`` -> ``BxC/8xM`` weights."""
        return torch.stack(
            [
                self.output_hypernetworks_mlps[t](mask_tokens_out[:, i, :])
                for i, t in enumerate(token_indices)
            ],
            dim=2,
        )

    def first_upscale_map(self) -> tuple[Tensor, Tensor]:
        """The first transposed conv as a per-token ``(weight Cx4C', bias 4C')`` map, C' = C/4
        (see :func:`_per_pixel_map`)."""
        return _per_pixel_map(self.output_upscaling[0])

    def predict_mask_logits(
        self, mask_tokens_out: Tensor, src: Tensor, token_indices: Sequence[int]
    ) -> Tensor:
        """Masks from transformer outputs.

        ``mask_tokens_out`` ``BxMxC`` (outputs of the mask tokens listed in
        ``token_indices``, in that order), ``src`` ``BxCxhxw``. Returns ``BxMx4hx4w`` logits:
        ``hypernetwork(token) . output_upscaling(src)`` per pixel.
        """
        b, c, h, w = src.shape
        tokens = src.flatten(2).transpose(1, 2)  # B x hw x C
        weight, bias = self.first_upscale_map()
        return self.masks_from_first_upscale(
            lambda rows: torch.addmm(bias, tokens[:, rows].reshape(-1, c), weight),
            self.hypernetwork_inputs(mask_tokens_out, token_indices),
            (b, h, w),
        )

    def masks_from_first_upscale(
        self,
        first_upscale: Callable[[slice], Tensor],
        hyper_in: Tensor,
        size: tuple[int, int, int],
    ) -> Tensor:
        """The rest of ``output_upscaling`` and the hypernetwork dot product, tile by tile.

        ``first_upscale(rows)`` gives the first transposed conv of the token rows ``rows``
        of a ``(B, h, w)`` token grid as ``(B*n)x4C'`` or ``Bxnx4C'``; ``hyper_in``
        ``BxC/8xM``. Returns ``BxMx4hx4w`` logits.
        """
        b, h, w = size
        rows = max(1, cache_block(_TILE_TOKENS, hyper_in.device) // max(1, b * w))
        second = _per_pixel_map(self.output_upscaling[3])
        tiles = [
            self._upscaled_masks(first_upscale(slice(r * w, (r + rows) * w)), hyper_in, second)
            for r in range(0, h, rows)
        ]
        masks = torch.cat(tiles, dim=2).view(b, -1, h, w, 2, 2, 2, 2)
        return masks.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, -1, 4 * h, 4 * w)

    def _upscaled_masks(self, x: Tensor, hyper_in: Tensor, second: tuple[Tensor, Tensor]) -> Tensor:
        """Second half of ``output_upscaling`` on first-conv outputs, dotted with ``hyper_in``.

        SAM's upscaling is two 2x2 stride-2 transposed convs, i.e. per-pixel linear maps:
        each token becomes 4x4 output pixels ordered ``(i1, j1, i2, j2)`` (row offset
        ``2*i1 + i2``, column offset ``2*j1 + j2``). ``x`` holds ``B*T`` tokens' first-conv
        outputs (``4C'`` each); ``second`` the second transposed conv as ``(weight C'x4C'',
        bias 4C'')``. Returns ``BxMx(T*16)``. Works on a tile of tokens at a time so that the
        32-channel upscaled features stay in cache.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        x = act1(
            F.layer_norm(
                x.reshape(-1, up1.out_channels), norm.weight.shape, norm.weight, norm.bias, norm.eps
            )
        )
        x = act2(torch.addmm(second[1], x, second[0]))
        return _hypernetwork_dot(x.view(hyper_in.shape[0], -1, up2.out_channels), hyper_in)


def _hypernetwork_dot(features: Tensor, hyper_in: Tensor) -> Tensor:
    """``BxPxC`` features . ``BxCxM`` hypernetwork weights -> ``BxMxP`` logits.

    On the CPU one matrix-vector product per prompt and mask: ``bmm`` with M <= 4 columns
    runs about 6x slower there (2-core CI machine, P = 16384, C = 32).
    """
    b, _, m = hyper_in.shape
    if features.device.type != "cpu":
        return torch.bmm(hyper_in.transpose(1, 2), features.transpose(1, 2))
    rows = [torch.mv(features[i], hyper_in[i, :, j]) for i in range(b) for j in range(m)]
    return torch.stack(rows).view(b, m, -1)


class MaskDecoder(TwoWayMaskDecoder):
    """SAM's mask decoder: IoU token + ``num_multimask_outputs + 1`` mask tokens + IoU head."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_mask_tokens=num_multimask_outputs + 1,
            activation=activation,
        )
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks for B prompts.

        ``image_embeddings`` ``1x256x64x64`` (shared) or ``Bx256x64x64``, ``image_pe``
        ``1x256x64x64``, ``sparse_prompt_embeddings`` ``BxNx256``,
        ``dense_prompt_embeddings`` ``Bx256x64x64``. Returns ``(masks Bx(3|1)x256x256
        logits, iou_pred Bx(3|1))``: masks 1..3 when ``multimask_output`` else mask 0.
        """
        indices = range(1, self.num_mask_tokens) if multimask_output else range(1)
        if sparse_prompt_embeddings.shape[0] == 0:
            return _empty_outputs(
                sparse_prompt_embeddings, len(indices), image_embeddings.shape[-2:]
            )
        outputs = [
            self.predict_masks(
                prompt_rows(image_embeddings, rows),
                image_pe,
                sparse_prompt_embeddings[rows],
                prompt_rows(dense_prompt_embeddings, rows),
                token_indices=indices,
            )
            for rows in prompt_chunks(
                sparse_prompt_embeddings.shape[0],
                cache_block(PROMPTS_PER_CHUNK, sparse_prompt_embeddings.device),
            )
        ]
        if len(outputs) == 1:
            return outputs[0]
        return torch.cat([m for m, _ in outputs]), torch.cat([i for _, i in outputs])

    def forward_cached(
        self, cache: ImageTokenCache, sparse_prompt_embeddings: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for prompts without a mask prompt on the image behind ``cache``.

        ``cache`` from :meth:`build_image_cache` (with the ``no_mask`` dense embedding);
        ``sparse_prompt_embeddings`` ``BxNx256``. Same outputs as :meth:`forward` up to fp32
        rounding, with the prompt-independent image work done once per image.
        """
        indices = list(range(1, self.num_mask_tokens) if multimask_output else range(1))
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        hs, masks = self.decode_cached(
            cache, output_tokens, sparse_prompt_embeddings, [0] + [1 + i for i in indices], indices
        )
        return masks, self.iou_prediction_head(hs[:, 0, :])[:, indices]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        token_indices: Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Masks and IoU predictions for the mask tokens in ``token_indices`` (default all)."""
        indices = list(range(self.num_mask_tokens) if token_indices is None else token_indices)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        hs, src = self.run_transformer(
            output_tokens,
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
        )
        mask_tokens_out = hs[:, [1 + i for i in indices], :]
        masks = self.predict_mask_logits(mask_tokens_out, src, indices)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, indices]
        return masks, iou_pred
