"""``Sam``: image encoder + prompt encoder + mask decoder, with SAM's pre/post-processing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ovsam.modeling.mask_decoder import MaskDecoder
from ovsam.modeling.prompt_encoder import PromptEncoder
from ovsam.modeling.tiny_vit import fuse_conv_bn

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything: ``image_encoder`` (ViT or TinyViT), ``prompt_encoder``, ``mask_decoder``.

    ``pixel_mean`` / ``pixel_std`` are non-persistent buffers (official checkpoints hold none).
    Masks are logits; ``mask_threshold`` (0.0) binarises them. Images are RGB.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        """Device of the model's buffers."""
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square, padded encoder input (1024)."""
        return int(self.image_encoder.img_size)

    def preprocess(self, x: Tensor) -> Tensor:
        """Normalise and zero-pad to the square encoder input.

        ``x`` ``Bx3xhxw`` (or ``3xhxw``) float RGB in 0..255, resized so its long side is
        ``img_size``. Returns ``Bx3xSxS`` (``3xSxS``), padded at the bottom/right.
        """
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self, masks: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Tensor:
        """Low-resolution mask logits -> logits at the original image size.

        ``masks`` ``BxCx256x256``; ``input_size`` (h, w) of the resized image before padding;
        ``original_size`` (H, W). Returns ``BxCxHxW`` logits (bilinear, as SAM).
        """
        masks = self.masks_in_input_frame(masks, input_size)
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def masks_in_input_frame(self, masks: Tensor, input_size: tuple[int, int]) -> Tensor:
        """``BxCx256x256`` low-resolution logits -> ``BxCxhxw`` logits on the resized image
        inside the model's square input frame (``input_size`` (h, w); the padding cut off):
        the first step of :meth:`postprocess_masks`."""
        masks = F.interpolate(
            masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        return masks[..., : input_size[0], : input_size[1]]

    def fuse_for_inference(self) -> Sam:
        """Fold BatchNorms into convs (TinyViT) for faster inference; returns ``self``.

        One-way: afterwards ``state_dict()`` no longer has the official ``...c/...bn`` keys,
        and the model should not be trained. Load checkpoints before calling this.
        """
        self.eval()
        fuse_conv_bn(self)
        return self
