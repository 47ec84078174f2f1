"""SAM-family modules in plain torch, with the official segment-anything / MobileSAM key names."""

from ovsam.modeling.image_encoder import Block, ImageEncoderViT
from ovsam.modeling.mask_decoder import MLP, MaskDecoder, TwoWayMaskDecoder
from ovsam.modeling.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from ovsam.modeling.sam import Sam
from ovsam.modeling.tiny_vit import TinyViT
from ovsam.modeling.transformer import TwoWayTransformer

__all__ = [
    "MLP",
    "Block",
    "ImageEncoderViT",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TwoWayMaskDecoder",
    "TwoWayTransformer",
]
