"""OpenAI's reference CLIP model code (``clip/model.py`` of ``clip-anytorch``), for parity tests.

The module imports only torch and numpy, so it is loaded straight from its file (importing the
``clip`` package would pull torchvision). Returns None when clip-anytorch is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from torch import nn

from ovsam.clip.config import CLIPConfig

INSTALL_HINT = ".venv/bin/pip install --no-deps clip-anytorch==2.6.0"


def reference_module() -> ModuleType | None:
    """OpenAI's ``clip.model`` module, or None without clip-anytorch."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "model.py"
    module_spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build_reference(module: ModuleType, config: CLIPConfig) -> nn.Module:
    """OpenAI's ``CLIP`` with the architecture of ``config`` (ResNet or ViT), float32."""
    v, t = config.vision, config.text
    layers = v.layers if v.kind == "resnet" else v.layers[0]
    return module.CLIP(
        config.embed_dim,
        v.image_size,
        layers,
        v.width,
        v.patch_size,
        t.context_length,
        t.vocab_size,
        t.width,
        t.heads,
        t.layers,
    ).float()
