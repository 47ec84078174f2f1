"""A small OV-SAM for CPU tests: real CLIP RN50 tower and official head/FPN, narrow adapter."""

from __future__ import annotations

import torch

from ovsam.clip.config import get_clip_config
from ovsam.clip.model import build_vision_tower
from ovsam.modeling.prompt_encoder import PromptEncoder
from ovsam.ov.clip2sam import FPN, CLIP2SAMHead
from ovsam.ov.model import OVSam, OVSamConfig, OVSamImageEncoder
from ovsam.ov.sam2clip import SAM2CLIPAdapter

SMALL_CONFIG = OVSamConfig(clip_model="RN50", roi_size=7)
"""The config of :func:`small_ovsam` (what its header says once saved)."""


def small_ovsam(seed: int = 0) -> OVSam:
    """OV-SAM with CLIP RN50 (1024-d joint space) and a 64-wide, 2-block adapter (random)."""
    torch.manual_seed(seed)
    config = SMALL_CONFIG
    backbone = build_vision_tower(get_clip_config("RN50"))
    channels = backbone.stage_channels
    adapter = SAM2CLIPAdapter(
        channels, embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,)
    )
    prompt = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(64, 64),
        input_image_size=(1024, 1024),
        mask_in_chans=16,
    )
    head = CLIP2SAMHead(256, 1024, config.roi_size)
    return OVSam(config, OVSamImageEncoder(backbone, adapter), FPN(channels), prompt, head).eval()
