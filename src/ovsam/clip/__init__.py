"""CLIP side of ovsam, in plain torch: towers, tokenizer, text-embedding banks, region labels.

- :func:`create_model` / :func:`load_clip` (``factory``): OpenAI RN50…RN50x64, ViT-B/32…
  ViT-L/14@336 and open_clip ConvNeXt towers from OpenAI TorchScript archives, state dicts or
  safetensors, loaded strictly.
- :func:`tokenize` (``tokenizer``): OpenAI's byte-level BPE, identical token ids.
- :func:`build_text_bank` (``text_bank``): names x templates → cached, normalised bank.
- :func:`classify_regions` (``region_classifier``): the Image-Crop zero-shot baseline.

Names are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CLIP": "ovsam.clip.model",
    "CLIPConfig": "ovsam.clip.config",
    "list_clip_models": "ovsam.clip.config",
    "get_clip_config": "ovsam.clip.config",
    "create_model": "ovsam.clip.factory",
    "load_clip": "ovsam.clip.factory",
    "list_pretrained": "ovsam.clip.pretrained",
    "tokenize": "ovsam.clip.tokenizer",
    "get_tokenizer": "ovsam.clip.tokenizer",
    "TextBank": "ovsam.clip.text_bank",
    "build_text_bank": "ovsam.clip.text_bank",
    "RegionLabels": "ovsam.clip.region_classifier",
    "classify_regions": "ovsam.clip.region_classifier",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ovsam.clip' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
