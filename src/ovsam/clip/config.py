"""Architecture configs of the CLIP models and their registry (open_clip's model names).

A :class:`CLIPConfig` says everything needed to build a randomly initialised CLIP whose
state-dict keys and shapes are those of the official checkpoints: OpenAI's layout for the
ResNet (``RN*``) and ViT towers, open_clip's ``visual.trunk`` / ``visual.head`` layout for the
ConvNeXt towers (timm ConvNeXt trunk + linear or MLP projection head).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ovsam.errors import InputError

VisionKind = Literal["resnet", "vit", "convnext"]


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``layers``: blocks per stage (ResNet/ConvNeXt) or depth (ViT, one entry).

    ``width``: ResNet base width (stage i has ``width * 2**i * 4`` channels), ViT width, or
    unused for ConvNeXt, whose per-stage channels are ``dims``. ``head``: ConvNeXt projection
    (``"linear"`` or ``"mlp"``). ``norm_eps``: ConvNeXt LayerNorm epsilon. ``heads``: ViT
    attention heads, 0 for OpenAI's ``width // 64``.
    """

    kind: VisionKind
    image_size: int
    layers: tuple[int, ...]
    width: int = 0
    patch_size: int | None = None
    dims: tuple[int, ...] = ()
    head: Literal["linear", "mlp"] = "linear"
    norm_eps: float = 1e-6
    heads: int = 0

    @property
    def vit_heads(self) -> int:
        """The ViT's attention heads: ``heads``, or ``width // 64`` (heads of 64 channels)."""
        return self.heads or self.width // 64


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer over CLIP BPE tokens (EOT-pooled)."""

    width: int
    heads: int
    layers: int
    context_length: int = 77
    vocab_size: int = 49408


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP: joint embedding width, both towers, and the activation flavour.

    ``quick_gelu`` is True for OpenAI's releases (``x * sigmoid(1.702 x)``) and False for the
    open_clip models trained with exact GELU. The registered ResNets mean QuickGELU: every
    published ResNet CLIP (OpenAI's; open_clip's YFCC15M and CC12M ones) was trained with it.
    The ViTs follow open_clip: exact GELU, QuickGELU for the ``-quickgelu`` twin, and loading
    OpenAI's weights (the ``openai`` tag or one of OpenAI's TorchScript archives) turns it on
    by itself. The ConvNeXts (open_clip's) use exact GELU.
    """

    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    quick_gelu: bool = False


def _resnet(embed: int, size: int, layers: tuple[int, ...], width: int, text: tuple) -> CLIPConfig:
    return CLIPConfig(embed, VisionConfig("resnet", size, layers, width), TextConfig(*text), True)


def _vit(embed: int, size: int, depth: int, width: int, patch: int, text: tuple) -> CLIPConfig:
    vision = VisionConfig("vit", size, (depth,), width, patch)
    return CLIPConfig(embed, vision, TextConfig(*text))


CONVNEXT_TRUNKS = {
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024), 1e-6),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536), 1e-6),
    "convnext_xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072), 1e-5),
}


def _convnext(embed: int, trunk: str, size: int, head: str, text: tuple) -> CLIPConfig:
    depths, dims, eps = CONVNEXT_TRUNKS[trunk]
    vision = VisionConfig("convnext", size, depths, dims=dims, head=head, norm_eps=eps)  # type: ignore[arg-type]
    return CLIPConfig(embed, vision, TextConfig(*text))


CLIP_CONFIGS: dict[str, CLIPConfig] = {
    "RN50": _resnet(1024, 224, (3, 4, 6, 3), 64, (512, 8, 12)),
    "RN101": _resnet(512, 224, (3, 4, 23, 3), 64, (512, 8, 12)),
    "RN50x4": _resnet(640, 288, (4, 6, 10, 6), 80, (640, 10, 12)),
    "RN50x16": _resnet(768, 384, (6, 8, 18, 8), 96, (768, 12, 12)),
    "RN50x64": _resnet(1024, 448, (3, 15, 36, 10), 128, (1024, 16, 12)),
    "ViT-B-32": _vit(512, 224, 12, 768, 32, (512, 8, 12)),
    "ViT-B-16": _vit(512, 224, 12, 768, 16, (512, 8, 12)),
    "ViT-L-14": _vit(768, 224, 24, 1024, 14, (768, 12, 12)),
    "ViT-L-14-336": _vit(768, 336, 24, 1024, 14, (768, 12, 12)),
    "convnext_base": _convnext(512, "convnext_base", 224, "linear", (512, 8, 12)),
    "convnext_base_w": _convnext(640, "convnext_base", 256, "linear", (640, 10, 12)),
    "convnext_base_w_320": _convnext(640, "convnext_base", 320, "linear", (640, 10, 12)),
    "convnext_large_d": _convnext(768, "convnext_large", 256, "mlp", (768, 12, 16)),
    "convnext_large_d_320": _convnext(768, "convnext_large", 320, "mlp", (768, 12, 16)),
    "convnext_xxlarge": _convnext(1024, "convnext_xxlarge", 256, "linear", (1024, 16, 24)),
    "convnext_xxlarge_320": _convnext(1024, "convnext_xxlarge", 320, "linear", (1024, 16, 24)),
}
# OpenAI's own spellings of the same architectures
_ALIASES = {"ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14"}
_ALIASES["ViT-L/14@336px"] = "ViT-L-14-336"


def list_clip_models() -> list[str]:
    """Registered CLIP architecture names (open_clip spelling)."""
    return list(CLIP_CONFIGS)


def canonical_name(name: str) -> str:
    """open_clip spelling of ``name`` (OpenAI's ``ViT-L/14@336px`` → ``ViT-L-14-336``)."""
    base = name.removesuffix("-quickgelu")
    return _ALIASES.get(base, base)


def registered_names_of(config: CLIPConfig) -> tuple[str, ...]:
    """The registered architectures equal to ``config`` up to the activation and, for ConvNeXt
    towers (whose weights do not record the training resolution), the image size: several
    for the ConvNeXt models registered at 256 and 320 px (``convnext_base_w`` and
    ``convnext_base_w_320``...), whose weights have the same keys and shapes."""
    size = config.vision.image_size

    def same(known: CLIPConfig) -> bool:
        vision = known.vision
        if vision.kind == "convnext":
            vision = replace(vision, image_size=size)
        same_towers = (vision, known.text) == (config.vision, config.text)
        return same_towers and known.embed_dim == config.embed_dim

    return tuple(name for name, known in CLIP_CONFIGS.items() if same(known))


def get_clip_config(name: str, quick_gelu: bool | None = None) -> CLIPConfig:
    """The config registered as ``name`` (a ``-quickgelu`` suffix means QuickGELU: with
    ``quick_gelu=False`` an :class:`InputError`), with ``quick_gelu`` when given."""
    config = CLIP_CONFIGS.get(canonical_name(name))
    if config is None:
        known = ", ".join(CLIP_CONFIGS)
        raise InputError(f"unknown CLIP model {name!r}; registered: {known}")
    if name.endswith("-quickgelu"):
        if quick_gelu is False:
            raise InputError(
                f"CLIP model {name!r} uses QuickGELU but quick_gelu=False was asked: drop the "
                "'-quickgelu' suffix for exact GELU"
            )
        quick_gelu = True
    return config if quick_gelu is None else replace(config, quick_gelu=quick_gelu)
