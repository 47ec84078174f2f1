"""CLIP2SAM: SAM's mask decoder with a recognition branch over CLIP's features.

Official module ``OVSAMHead`` (checkpoint prefix ``mask_decoder``) and the FPN beside it
(prefix ``fpn_neck``):

- ``mask_decoder``: SAM's two-way mask decoder with **one** mask token and no IoU head;
- ``label_token`` (1x256) is prepended to the output tokens and ``label_mlp`` (256→256→768)
  reads it; the official head multiplies that output by zero (the maintainers' issues #10,
  #42), so it cannot change a result and is not evaluated here — the weights are kept so that
  checkpoints load strictly;
- the class embedding of a prompt comes from its **region**: the predicted mask's box
  (mask > 0 at 256², x4 → 1024 frame) pools the FPN level its size selects with RoIAlign
  (12x12), then ``roi_conv`` (1x1 conv 256→768 without bias, ReLU) and a spatial mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovsam.mask_statistics import stability_scores
from ovsam.modeling.image_token_cache import ImageTokenCache
from ovsam.modeling.mask_decoder import MLP, TwoWayMaskDecoder
from ovsam.modeling.transformer import TwoWayTransformer
from ovsam.ov.roi_align import masks_to_boxes, multi_level_roi_align

ROI_STRIDES = (4, 8, 16, 32)


class ConvModule(nn.Module):
    """mmcv ``ConvModule`` without norm: ``conv`` then an optional ReLU (key ``conv``)."""

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        self.conv = conv
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class FPN(nn.Module):
    """mmdet FPN (no extra levels): 1x1 laterals, nearest top-down sum, 3x3 outputs.

    Initialised as mmdet's (its ``init_cfg``): Xavier-uniform weights, zero biases."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            ConvModule(nn.Conv2d(c, out_channels, 1), relu=False) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            ConvModule(nn.Conv2d(out_channels, out_channels, 3, padding=1), relu=False)
            for _ in in_channels
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, stages: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, stages, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]


class CLIP2SAMHead(nn.Module):
    """Mask + region embedding per prompt (see the module docstring)."""

    score_name = "low_res_stability_score"  # what its mask score is (no IoU head; see ``forward``)

    def __init__(
        self, transformer_dim: int = 256, embed_dim: int = 768, roi_size: int = 12
    ) -> None:
        super().__init__()
        self.mask_decoder = TwoWayMaskDecoder(
            transformer_dim=transformer_dim,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=transformer_dim, mlp_dim=2048, num_heads=8
            ),
            num_mask_tokens=1,
        )
        self.label_token = nn.Embedding(1, transformer_dim)
        self.label_mlp = MLP(transformer_dim, transformer_dim, embed_dim, 3)
        self.roi_conv = nn.Sequential(
            ConvModule(nn.Conv2d(transformer_dim, embed_dim, 1, bias=False), relu=True)
        )  # initialised as mmcv's ConvModule before a ReLU: Kaiming-normal, fan out
        nn.init.kaiming_normal_(self.roi_conv[0].conv.weight, mode="fan_out", nonlinearity="relu")
        self.roi_size = roi_size

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """``(masks Bx1x256x256 logits, quality Bx1)`` for B prompts (one mask per prompt).

        There is no IoU head: ``quality`` is the mask's stability score (area of logits > 1
        over area of logits > -1), SAM's own second quality measure. ``multimask_output`` is
        accepted for API compatibility and ignored.
        """
        tokens = torch.cat([self.label_token.weight, self.mask_decoder.mask_tokens.weight])
        if sparse_prompt_embeddings.shape[0] == 0:
            h, w = image_embeddings.shape[-2:]
            return image_embeddings.new_zeros((0, 1, 4 * h, 4 * w)), image_embeddings.new_zeros(
                (0, 1)
            )
        hs, src = self.mask_decoder.run_transformer(
            tokens, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        masks = self.mask_decoder.predict_mask_logits(hs[:, 1:2], src, [0])
        return masks, stability_scores(masks, 0.0, 1.0)[:, None]

    def build_image_cache(
        self, image_embeddings: Tensor, image_pe: Tensor, dense_embedding: Tensor
    ) -> ImageTokenCache:
        """The decoder's prompt-independent image side, once per image (``forward_cached``)."""
        return self.mask_decoder.build_image_cache(image_embeddings, image_pe, dense_embedding)

    def forward_cached(
        self, cache: ImageTokenCache, sparse_prompt_embeddings: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` without a mask prompt, on the image behind ``cache``."""
        tokens = torch.cat([self.label_token.weight, self.mask_decoder.mask_tokens.weight])
        _, masks = self.mask_decoder.decode_cached(
            cache, tokens, sparse_prompt_embeddings, [1], [0]
        )
        return masks, stability_scores(masks, 0.0, 1.0)[:, None]

    def region_embeddings(self, fpn_features: Sequence[Tensor], boxes: Tensor) -> Tensor:
        """``Bx768`` embeddings of ``Bx4`` XYXY boxes in the 1024 input frame (RoI on the FPN)."""
        rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)
        pooled = multi_level_roi_align(fpn_features, rois, self.roi_size, ROI_STRIDES)
        return self.roi_conv(pooled).mean(dim=(2, 3))

    @staticmethod
    def mask_boxes(low_res_masks: Tensor) -> Tensor:
        """Boxes of ``Bx1x256x256`` logits (> 0) scaled x4 into the 1024 frame (``Bx4``)."""
        return masks_to_boxes(low_res_masks[:, 0] > 0) * 4
