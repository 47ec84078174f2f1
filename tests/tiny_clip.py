"""A tiny ResNet CLIP config (64-d, one block per stage, one text layer) for fast CLIP tests."""

from __future__ import annotations

from dataclasses import replace

from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config

TINY_TEXT = replace(get_clip_config("RN50").text, width=64, heads=1, layers=1)
TINY_CLIP = CLIPConfig(64, VisionConfig("resnet", 64, (1, 1, 1, 1), 16), TINY_TEXT, True)
