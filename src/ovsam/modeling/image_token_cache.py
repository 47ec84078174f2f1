"""The prompt-independent half of SAM's mask decoder, computed once per image.

Every prompt on an image starts the two-way transformer from the same image tokens
``k0 = image_embedding + no_mask_embed`` (``NxC``, N = 64*64) and changes them only by
low-rank updates: each image-to-token attention adds ``A @ M`` (``A`` ``Nx(heads*T)``
attention weights, ``M`` ``(heads*T)xC`` from the T tokens), and ``norm4`` then rescales rows
and channels. After ``l`` blocks the tokens therefore are exactly::

    keys_l = diag(s) (k0 * E_l) + L @ R        E_l = product of the norm4 weights so far

with per-row scales ``s`` (N), ``L`` (``Nxr``) and ``R`` (``rxC``), r = l * (heads*(T-1) + 3)
(each head's attention weights sum to 1 over the T tokens, which saves one factor per head).
A linear map W of ``keys_l`` is then ``s * ((k0 * E_l) W^T) + L (R W^T)``: the ``NxCxC'``
product is prompt-independent and kept in an :class:`ImageTokenCache`, built once per image;
per prompt only the rank-r part is left. The attention logits and values of both
cross-attention directions and the first upscaling convolution (a per-pixel linear map) use
it; LayerNorm statistics come from explicitly updated tokens (one ``Nx(heads*(T-1))xC`` product
per block). Exact algebra, fp32 rounding aside; used without autograd and without a mask
prompt (a mask prompt changes ``k0`` per prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ovsam.modeling.common import tensors_nbytes

MAX_CACHED_PROMPT_TOKENS = 16
"""Prompt tokens (points, plus 2 per box) beyond which the plain decoder is faster: the rank
of the factored image tokens grows with the tokens T, and its cost with T squared (MobileSAM
on a 2-core CPU: 26 vs 35 ms at 4 points, 41 vs 42 at 16, 124 vs 49 at 64; 65 s vs 0.4 s and
2.3 GB at 2,000 points)."""


@dataclass
class Projection:
    """A linear map ``W`` (``C'xC``) of one level's image tokens, its image part precomputed.

    ``scaled`` = ``(k0 * E_l) W^T`` (scaled per row by ``s`` at run time); ``fixed`` =
    ``pe W^T + b`` for maps applied to tokens plus positional encoding (None otherwise, or
    folded into ``scaled`` at level 0 where ``s`` = 1); ``bias`` is added last for the other
    maps. Both are laid out for their one use: ``H x d x N`` (attention keys/queries, C' = H*d),
    ``H x N x d`` (attention values) or ``N x C'`` (the upscaling convolution).
    """

    weight: Tensor
    scaled: Tensor
    fixed: Tensor | None
    bias: Tensor | None


@dataclass
class ImageTokenCache:
    """Per-image precomputation for :func:`run_transformer_cached`.

    ``residual`` ``1xNxC``: ``k0`` (N = h*w of ``grid_size``) plus the first image-to-token
    ``out_proj`` bias; ``levels[l]`` maps names to :class:`Projection`: for
    ``l < depth`` ``t2i_k``, ``t2i_v`` (token-to-image keys/values of block l) and ``i2t_q``
    (image-to-token queries of block l); for ``l == depth`` ``final_k``, ``final_v`` and
    ``upscale`` (the first transposed convolution as a ``4C/4 x C`` map). ``source``
    identifies the weights it was built from (see :func:`~ovsam.modeling.common.weights_key`).
    """

    residual: Tensor
    levels: list[dict[str, Projection]]
    grid_size: tuple[int, int]
    source: tuple[object, ...] = ()

    def nbytes(self) -> int:
        """Memory held, in bytes."""
        tensors = [self.residual] + [
            t
            for level in self.levels
            for p in level.values()
            for t in (p.scaled, p.fixed)
            if t is not None
        ]
        return tensors_nbytes(tensors)


# How a precomputed ``NxC'`` product is laid out (see :class:`Projection`).
_SCORES, _VALUES, _ROWS = "scores", "values", "rows"


def _level_maps(decoder: nn.Module, level: int) -> dict[str, tuple[Tensor, Tensor, str, int]]:
    """``name -> (weight C'xC, bias C', layout, heads)`` for one level.

    Maps of the ``scores`` layout take the positional encoding too.
    """
    transformer = decoder.transformer
    if level < transformer.depth:
        block = transformer.layers[level]
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        return {
            "t2i_k": (t2i.k_proj.weight, t2i.k_proj.bias, _SCORES, t2i.num_heads),
            "t2i_v": (t2i.v_proj.weight, t2i.v_proj.bias, _VALUES, t2i.num_heads),
            "i2t_q": (i2t.q_proj.weight, i2t.q_proj.bias, _SCORES, i2t.num_heads),
        }
    final = transformer.final_attn_token_to_image
    weight, bias = decoder.first_upscale_map()
    return {
        "final_k": (final.k_proj.weight, final.k_proj.bias, _SCORES, final.num_heads),
        "final_v": (final.v_proj.weight, final.v_proj.bias, _VALUES, final.num_heads),
        "upscale": (weight.T, bias, _ROWS, 1),
    }


def _laid_out(x: Tensor, layout: str, num_heads: int) -> Tensor:
    """``NxC'`` -> the contiguous layout ``layout`` (see :class:`Projection`)."""
    if layout == _ROWS:
        return x.contiguous()
    heads = x.view(x.shape[0], num_heads, -1)
    order = (1, 2, 0) if layout == _SCORES else (1, 0, 2)
    return heads.permute(order).contiguous()


def _out_bias(transformer: nn.Module, index: int) -> Tensor | None:
    """``out_proj`` bias of block ``index``'s image-to-token attention (None past the end)."""
    if index >= transformer.depth:
        return None
    return transformer.layers[index].cross_attn_image_to_token.out_proj.bias


@torch.inference_mode()
def build_image_token_cache(
    decoder: nn.Module, image_embeddings: Tensor, image_pe: Tensor, dense_embedding: Tensor
) -> ImageTokenCache:
    """Precompute the image side of ``decoder`` (a ``TwoWayMaskDecoder``) for one image.

    ``image_embeddings`` ``1xCxhxw``, ``image_pe`` ``1xCxhxw``, ``dense_embedding``
    ``1xCxhxw`` (or broadcastable: the ``no_mask`` embedding). Costs about as much as
    decoding one prompt the ordinary way.
    """
    tokens = (image_embeddings + dense_embedding).flatten(2).transpose(1, 2)[0].contiguous()
    pe = image_pe.flatten(2).transpose(1, 2)[0]
    transformer = decoder.transformer
    channel_scale = torch.ones_like(tokens[0])
    levels = []
    for level in range(transformer.depth + 1):
        maps = _level_maps(decoder, level)
        scaled_all = tokens @ (torch.cat([m[0] for m in maps.values()]) * channel_scale).T
        pe_maps = [m[0] for m in maps.values() if m[2] == _SCORES]
        pe_all = pe @ torch.cat(pe_maps).T
        projections, start, pe_start = {}, 0, 0
        for name, (weight, bias, layout, num_heads) in maps.items():
            width = weight.shape[0]
            scaled, fixed = scaled_all[:, start : start + width], None
            start += width
            if layout == _SCORES:
                fixed = pe_all[:, pe_start : pe_start + width] + bias
                pe_start += width
                if level == 0:
                    scaled, fixed = scaled + fixed, None
            projections[name] = Projection(
                weight,
                _laid_out(scaled, layout, num_heads),
                None if fixed is None else _laid_out(fixed, layout, num_heads),
                None if layout == _SCORES else bias,
            )
        levels.append(projections)
        if level < transformer.depth:
            channel_scale = channel_scale * transformer.layers[level].norm4.weight
    grid = (int(image_embeddings.shape[-2]), int(image_embeddings.shape[-1]))
    residual = tokens + _out_bias(transformer, 0)
    return ImageTokenCache(residual[None], levels, grid)


@dataclass
class FactoredTokens:
    """Image tokens of B prompts: ``diag(scale) (k0 * E_l) + left @ right`` (see module doc).

    ``residual`` ``B'xNxC``: the tokens written out, plus the ``out_proj`` bias of the next
    image-to-token attention (B' = 1 while all prompts share them; None after the last
    one); ``shared`` when it belongs to the cache. ``scale`` ``BxN`` (None = ones),
    ``left`` ``BxrxN`` (stored transposed: every factor is written as one contiguous row),
    ``right`` ``BxrxC`` (None = rank 0); once set, the last row of ``left`` is all ones.
    """

    residual: Tensor | None
    shared: bool = False
    scale: Tensor | None = None
    left: Tensor | None = None
    right: Tensor | None = None

    def _right_mapped(self, proj: Projection, num_heads: int) -> Tensor:
        """``R W^T`` as ``B x r x heads x C'/heads``."""
        mapped = self.right @ proj.weight.T
        return mapped.view(mapped.shape[0], mapped.shape[1], num_heads, -1)

    def scores(self, proj: Projection, queries: Tensor) -> Tensor:
        """``queries . (W keys_i)`` per head: ``queries`` ``BxHxTxd`` -> ``BxHxTxN``.

        ``proj.scaled`` / ``proj.fixed`` are laid out ``H x d x N`` for this product and read
        once for all B prompts.
        """
        b, num_heads, t, _ = queries.shape
        stacked = _stack_heads(queries)
        out = _unstack_heads(torch.bmm(stacked, proj.scaled), b)
        if self.scale is not None:  # written contiguous (B > 1 makes ``out`` a permuted view)
            out = torch.mul(out, self.scale[:, None, None, :], out=out.new_empty(out.shape))
        else:
            out = out.contiguous()
        if proj.fixed is not None:
            out += _unstack_heads(torch.bmm(stacked, proj.fixed), b)
        if self.left is not None:
            coef = torch.einsum("bhtd,brhd->bhtr", queries, self._right_mapped(proj, num_heads))
            out.view(b, num_heads * t, -1).baddbmm_(coef.reshape(b, num_heads * t, -1), self.left)
        return out

    def weighted_sum(self, proj: Projection, weights: Tensor) -> Tensor:
        """``sum_i weights_i (W keys_i + b)`` per head, rows of ``weights`` summing to 1.

        ``weights`` ``BxHxTxN`` -> ``BxHxTxd``; ``proj.scaled`` is laid out ``H x N x d``
        and read once for all B prompts.
        """
        b, num_heads, t, n = weights.shape
        stacked = _stack_heads(weights, self.scale)
        out = _unstack_heads(torch.bmm(stacked, proj.scaled), b)
        if self.left is not None:
            coef = weights.view(b, num_heads * t, n) @ self.left.transpose(1, 2)
            coef = coef.view(b, num_heads, t, -1)
            out = out + torch.einsum("bhtr,brhd->bhtd", coef, self._right_mapped(proj, num_heads))
        return out + proj.bias.view(num_heads, 1, -1)

    def linear(self, proj: Projection) -> Callable[[slice], Tensor]:
        """``rows -> W keys_i + b`` for the token rows ``rows`` (``B x n x C'``).

        The bias rides on the last factor, whose ``left`` row is all ones.
        """
        right = self.right @ proj.weight.T
        right[:, -1] += proj.bias

        def rows_out(rows: slice) -> Tensor:
            out = torch.mul(proj.scaled[rows], self.scale[:, rows, None])
            return out.baddbmm_(self.left[:, :, rows].transpose(1, 2), right)

        return rows_out


def _stack_heads(x: Tensor, scale: Tensor | None = None) -> Tensor:
    """``BxHxTxK`` (times ``scale`` ``BxK`` along K when given) -> ``Hx(B*T)xK``.

    One product per head then covers every prompt; a copy only for B > 1 or a scale.
    """
    b, num_heads, t, k = x.shape
    if b == 1 and scale is None:
        return x[0]
    out = x.new_empty(num_heads, b, t, k)
    if scale is None:
        out.copy_(x.transpose(0, 1))
    else:
        torch.mul(x.transpose(0, 1), scale[:, None, :], out=out)
    return out.view(num_heads, b * t, k)


def _unstack_heads(x: Tensor, b: int) -> Tensor:
    """``Hx(B*T)xM`` -> a ``BxHxTxM`` view."""
    num_heads, bt, m = x.shape
    return x.view(num_heads, b, bt // b, m).transpose(0, 1)


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """``BxTxC'`` -> ``BxHxTxd``."""
    b, t, c = x.shape
    return x.view(b, t, num_heads, c // num_heads).transpose(1, 2)


def token_to_image(
    attention: nn.Module,
    queries: Tensor,
    keys: FactoredTokens,
    key_proj: Projection,
    value_proj: Projection,
) -> Tensor:
    """``attention`` (an ``Attention``) from ``BxTxC`` tokens (with PE) to the image: ``BxTxC``."""
    num_heads = attention.num_heads
    head_dim = attention.internal_dim // num_heads
    q = _heads(attention.q_proj(queries) * head_dim**-0.5, num_heads)
    attn = torch.softmax(keys.scores(key_proj, q), dim=-1)
    out = keys.weighted_sum(value_proj, attn)
    return attention.out_proj(out.transpose(1, 2).flatten(2))


def image_to_token(
    attention: nn.Module,
    norm: nn.LayerNorm,
    keys: FactoredTokens,
    query_proj: Projection,
    tokens: tuple[Tensor, Tensor],
    next_bias: Tensor | None,
) -> FactoredTokens:
    """Image-to-token attention, residual and ``norm`` on factored tokens.

    ``tokens`` = ``(keys with PE, values)``, both ``BxTxC``. ``next_bias`` is the
    ``out_proj`` bias of the next image-to-token attention (None after the last one),
    added to the new ``residual``.
    """
    num_heads = attention.num_heads
    head_dim = attention.internal_dim // num_heads
    k = _heads(attention.k_proj(tokens[0]) * head_dim**-0.5, num_heads)
    attn = torch.softmax(keys.scores(query_proj, k), dim=2)  # over the T tokens
    b, _, t, n = attn.shape
    v = _heads(attention.v_proj(tokens[1]), num_heads)  # B x H x T x d
    w_out = attention.out_proj.weight.view(-1, num_heads, head_dim).permute(1, 2, 0)
    values = v @ w_out  # B x H x T x C: out_proj of each (head, token) value
    # Each head's weights sum to 1 over the T tokens, so weights @ values equals
    # sum over t < T-1 of w_t (values_t - values_{T-1}), plus sum_h values_{h,T-1}:
    # one factor fewer per head. That sum rides on a last row of ones.
    kept = num_heads * (t - 1)
    rank_weights = attn.new_empty(b, kept + 1, n)
    rank_weights[:, :kept].view(b, num_heads, t - 1, n).copy_(attn[:, :, :-1])
    rank_weights[:, kept] = 1.0
    last = values[:, :, -1:]
    rank_values = torch.cat([(values[:, :, :-1] - last).reshape(b, kept, -1), last.sum(1)], dim=1)
    if keys.shared:  # the cache's tokens: never written to
        x = torch.baddbmm(keys.residual, rank_weights.transpose(1, 2), rank_values)
    else:
        x = keys.residual.baddbmm_(rank_weights.transpose(1, 2), rank_values)
    gain, shift = norm.weight, norm.bias
    residual, mean, inv_std = torch.native_layer_norm(
        x, norm.normalized_shape, gain, shift if next_bias is None else shift + next_bias, norm.eps
    )
    # New factors: keys' = diag(inv_std) (keys + weights @ values + b_out) G - ...
    rank = 0 if keys.left is None else keys.left.shape[1]
    inv_std_row = inv_std.view(b, 1, n)
    left = x.new_empty(b, rank + kept + 3, n)
    if keys.left is not None:
        torch.mul(keys.left, inv_std_row, out=left[:, :rank])
    torch.mul(rank_weights, inv_std_row, out=left[:, rank:-2])  # last row: inv_std
    torch.mul(inv_std_row, mean.view(b, 1, n), out=left[:, -2:-1]).neg_()
    left[:, -1] = 1.0
    rank_values[:, kept] += attention.out_proj.bias  # pairs with inv_std, like b_out
    rights = [rank_values * gain] + [v.expand(b, 1, -1) for v in (gain, shift)]
    if keys.right is not None:
        rights.insert(0, keys.right * gain)
    inv_std = inv_std.view(b, n)
    scale = inv_std if keys.scale is None else keys.scale * inv_std
    return FactoredTokens(
        residual if next_bias is not None else None, False, scale, left, torch.cat(rights, 1)
    )


def run_transformer_cached(
    decoder: nn.Module,
    cache: ImageTokenCache,
    output_tokens: Tensor,
    sparse_prompt_embeddings: Tensor,
    query_rows: Sequence[int],
) -> tuple[Tensor, FactoredTokens]:
    """``decoder.run_transformer`` for prompts on the cached image.

    ``output_tokens`` ``KxC``, ``sparse_prompt_embeddings`` ``BxNpxC``. Returns the final
    outputs of the tokens in ``query_rows`` only (``Bxlen(query_rows)xC``; the others are
    not needed) and the image tokens, factored.
    """
    transformer = decoder.transformer
    batch = sparse_prompt_embeddings.shape[0]
    point_embedding = torch.cat(
        (output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings), dim=1
    )
    queries = point_embedding
    keys = FactoredTokens(cache.residual, shared=True)
    for index, layer in enumerate(transformer.layers):
        level = cache.levels[index]
        queries = layer.token_self_attention(queries, point_embedding)
        attn_out = token_to_image(
            layer.cross_attn_token_to_image,
            queries + point_embedding,
            keys,
            level["t2i_k"],
            level["t2i_v"],
        )
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = image_to_token(
            layer.cross_attn_image_to_token,
            layer.norm4,
            keys,
            level["i2t_q"],
            (queries + point_embedding, queries),
            _out_bias(transformer, index + 1),
        )
    final = cache.levels[transformer.depth]
    rows = list(query_rows)
    queries, point_embedding = queries[:, rows], point_embedding[:, rows]
    attn_out = token_to_image(
        transformer.final_attn_token_to_image,
        queries + point_embedding,
        keys,
        final["final_k"],
        final["final_v"],
    )
    return transformer.norm_final_attn(queries + attn_out), keys
