"""What a predictor keeps about one embedded image (:class:`ImageState`).

A state can be exported from one :class:`~ovsam.predictor.SamPredictor` and loaded into
another (or kept in a server's image store), so it is a plain record of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ovsam.modeling.common import tensors_nbytes, weights_key
from ovsam.modeling.image_token_cache import ImageTokenCache

PIXELS = "pixels"  # extras key of the image itself (HxWx3 uint8 RGB), kept on the CPU for crops


@dataclass
class ImageState:
    """Everything the predictor keeps about the current image.

    ``features``: ``1x256x64x64`` image embedding. ``original_size``: ``(H, W)`` of the image
    the user gave. ``input_size``: ``(h, w)`` after resizing the longest side to 1024.
    ``extras``: model-specific tensors (e.g. CLIP feature maps for recognition; the image
    itself under :data:`PIXELS`, which stays on the CPU).
    ``decoder_cache``: the mask decoder's per-image precomputation, filled by the predictor
    on the first prompt (kept with the state, so a restored state decodes fast at once).
    ``encoder``: the :func:`~ovsam.modeling.common.weights_key` of each module that made
    ``features`` and ``extras`` (by name: ``image_encoder``, and e.g. OV-SAM's ``fpn_neck``);
    ``encoder_checksum``: their weights' values (filled by :meth:`SamPredictor.export_state`;
    see :meth:`SamPredictor.load_state`).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder_cache: ImageTokenCache | None = None
    encoder: dict[str, tuple[object, ...]] = field(default_factory=dict)
    encoder_checksum: dict[str, tuple[object, ...]] | None = None

    def nbytes(self) -> int:
        """Memory held by the state's tensors, in bytes."""
        cache = 0 if self.decoder_cache is None else self.decoder_cache.nbytes()
        return cache + tensors_nbytes([self.features, *self.extras.values()])

    def token_cache(self, model: nn.Module, use: bool) -> ImageTokenCache | None:
        """``decoder_cache`` for SAM-family ``model`` (built now if missing or made by other
        prompt encoder or decoder weights); None when not ``use`` or the decoder has none."""
        decoder, prompt_encoder = model.mask_decoder, model.prompt_encoder
        if not use or not hasattr(decoder, "forward_cached"):
            return None
        source = weights_key(prompt_encoder, decoder)
        if self.decoder_cache is None or self.decoder_cache.source != source:
            self.decoder_cache = None  # built for other weights: free it first
            cache = decoder.build_image_cache(
                self.features, prompt_encoder.get_dense_pe(), prompt_encoder.no_mask_dense()
            )
            cache.source = source
            self.decoder_cache = cache
        return self.decoder_cache

    def to(self, device: torch.device) -> ImageState:
        """This state with its tensors on ``device`` (but :data:`PIXELS`): itself when they are
        there; else a copy without the decoder cache (rebuilt there on the first prompt)."""
        if self.features.device == device:
            return self
        extras = {name: t if name == PIXELS else t.to(device) for name, t in self.extras.items()}
        return replace(self, features=self.features.to(device), extras=extras, decoder_cache=None)
