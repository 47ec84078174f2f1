"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Key names equal ``segment_anything.modeling.transformer``. The image side may carry batch 1
while the tokens carry batch B (one image, B prompts): it broadcasts until the first
image-to-token update makes it per-prompt, so B copies are never made up front.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ovsam.modeling.common import MLPBlock


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks followed by a final token-to-image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Run the transformer.

        ``image_embedding`` ``B'xCxhxw`` (B' = 1 or B), ``image_pe`` ``1xCxhxw`` or
        ``B'xCxhxw``, ``point_embedding`` ``BxTxC``. Returns ``(queries BxTxC,
        keys Bx(h*w)xC)``; ``keys`` keeps batch 1 only when ``depth == 0``.
        """
        # Token layout B x hw x C, made contiguous once: every later op then reads rows.
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn_out = self.final_attn_token_to_image(
            q=queries + point_embedding, k=keys + key_pe, v=keys
        )
        return self.norm_final_attn(queries + attn_out), keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``queries BxTxC``, ``keys B'xNxC`` (B' = 1 or B) -> ``(BxTxC, BxNxC)``."""
        queries = self.token_self_attention(queries, query_pe)
        k = keys + key_pe
        queries = self.norm2(
            queries + self.cross_attn_token_to_image(q=queries + query_pe, k=k, v=keys)
        )
        queries = self.norm3(queries + self.mlp(queries))

        attn_out = self.cross_attn_image_to_token(q=k, k=queries + query_pe, v=queries)
        keys = self.norm4(attn_out.add_(keys))  # residual added in place: no new 4096xC buffer
        return queries, keys

    def token_self_attention(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        """The block's first step: self-attention among the ``BxTxC`` tokens, then ``norm1``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        return self.norm1(queries)


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q BqxNqxC``, ``k``/``v`` ``BkxNkxC`` (batches broadcast) -> ``BxNqxC``.

        Without autograd, cross attention between a few tokens and many image tokens is
        computed with the projections of the many side folded into the few side (exact
        algebra, ~2x fewer FLOPs): see :meth:`_few_queries` and :meth:`_few_keys`.
        """
        n_q, n_k = q.shape[1], k.shape[1]
        if not torch.is_grad_enabled():  # training keeps the textbook graph
            if n_q * self.num_heads < self.internal_dim < n_k:
                return self._few_queries(q, k, v)
            if n_k * self.num_heads < self.internal_dim < n_q:
                return self._few_keys(q, k, v)
        batch = max(q.shape[0], k.shape[0])
        q = self._separate_heads(self.q_proj(q)).expand(batch, -1, -1, -1)
        k = self._separate_heads(self.k_proj(k)).expand(batch, -1, -1, -1)
        v = self._separate_heads(self.v_proj(v)).expand(batch, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def _head_weights(self, linear: nn.Linear) -> Tensor:
        """A projection's weight as ``heads x head_dim x C``."""
        return linear.weight.view(self.num_heads, -1, self.embedding_dim)

    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Few queries (tokens) over many keys (image): ``softmax(q_h Wk_h k^T) k Wv_h^T``.

        ``q_h . (Wk_h k + bk_h)``: the ``bk`` term is constant along the softmax axis, so it
        drops; ``softmax @ (k Wv^T + bv) = (softmax @ k) Wv^T + bv`` as rows sum to 1.
        """
        b, n_q, _ = q.shape
        head_dim = self.internal_dim // self.num_heads
        qh = self.q_proj(q).view(b, n_q, self.num_heads, head_dim) * head_dim**-0.5
        folded = torch.einsum("bqhd,hdc->bhqc", qh, self._head_weights(self.k_proj))
        folded = folded.reshape(b, self.num_heads * n_q, -1)
        attn = torch.softmax(folded @ k.transpose(1, 2), dim=-1)
        ctx = (attn @ v).view(b, self.num_heads, n_q, -1)
        out = torch.einsum("bhqc,hdc->bqhd", ctx, self._head_weights(self.v_proj))
        return self.out_proj(out.reshape(b, n_q, -1) + self.v_proj.bias)

    def _few_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Many queries (image) over few keys (tokens): fold ``Wq`` and ``Wout`` into the keys.

        ``logits = q (Wq_h^T k_h^T) + bq_h k_h^T``; ``out = sum_h softmax_h (v_h Wout_h)``.
        """
        b, n_k, _ = k.shape
        head_dim = self.internal_dim // self.num_heads
        kh = self.k_proj(k).view(b, n_k, self.num_heads, head_dim) * head_dim**-0.5
        wq = self._head_weights(self.q_proj)
        keys_t = torch.einsum("hdc,bthd->bcht", wq, kh).reshape(b, self.embedding_dim, -1)
        key_bias = torch.einsum("hd,bthd->bht", self.q_proj.bias.view(self.num_heads, -1), kh)
        # Logits laid out B x (heads*keys) x N: the softmax over each head's few keys then
        # runs along a strided axis with the long, contiguous N axis vectorised.
        logits = torch.baddbmm(
            key_bias.reshape(b, -1, 1), keys_t.transpose(1, 2), q.expand(b, -1, -1).transpose(1, 2)
        )
        attn = torch.softmax(logits.view(b, self.num_heads, n_k, -1), dim=2)
        vh = self.v_proj(v).view(b, n_k, self.num_heads, head_dim)
        w_out = self.out_proj.weight.view(self.embedding_dim, self.num_heads, head_dim)
        values = torch.einsum("bthd,chd->bhtc", vh, w_out).reshape(b, -1, self.embedding_dim)
        return torch.baddbmm(
            self.out_proj.bias, attn.view(b, -1, attn.shape[-1]).transpose(1, 2), values
        )
