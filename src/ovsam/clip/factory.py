"""Create CLIP models by name (open_clip style) or straight from a checkpoint file.

``create_model("RN50x16", pretrained="openai")`` builds the registered architecture and loads
the registered weights; ``pretrained`` may also be a file path. ``load_clip(path)`` infers the
architecture from the checkpoint itself (OpenAI's rules, extended to open_clip's ConvNeXt
layout; ConvNeXt weights do not record their image size, so the ones registered at both 256 and
320 px need ``load_clip(path, name=...)``). Accepted files: OpenAI TorchScript ``.pt`` archives
(read without running code), plain state dicts (``.pt``/``.pth``/``.bin``) and
``.safetensors``. Loading is strict.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ovsam.checkpoint import (
    checkpoint_file,
    is_torchscript_archive,
    load_state_dict_strict,
    read_state_dict,
    weights_to_be_loaded,
)
from ovsam.clip.config import (
    CONVNEXT_TRUNKS,
    CLIPConfig,
    TextConfig,
    VisionConfig,
    canonical_name,
    get_clip_config,
    registered_names_of,
)
from ovsam.clip.model import CLIP
from ovsam.clip.pretrained import clip_weights_file, pretrained_weights_name
from ovsam.clip.torchscript_reader import read_torchscript_tensors
from ovsam.errors import CheckpointError, InputError
from ovsam.weights import resolve_weights

# tensor attributes of OpenAI's TorchScript models that are not weights
_NON_WEIGHTS = ("attn_mask", "input_resolution", "context_length", "vocab_size")


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """CLIP weights from any accepted file, as float32 tensors keyed in OpenAI/open_clip layout.

    A ``module.`` prefix (DDP) and the non-weight attributes of OpenAI's archives are removed.
    """
    if is_torchscript_archive(path):
        state = read_torchscript_tensors(path)
    else:
        state = read_state_dict(path, what="CLIP weights")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {
        k: v.float() if v.is_floating_point() else v
        for k, v in state.items()
        if k.rsplit(".", 1)[-1] not in _NON_WEIGHTS
    }


WIDE_VIT_HEADS = {1280: 16, 1408: 16, 1664: 16}
"""ViT widths whose heads are not 64 wide: open_clip's ViT-H-14, ViT-g-14 and ViT-bigG-14
(heads of 80, 88 and 104 channels). Shapes do not show heads: the rest follow OpenAI's 64."""


def _count_children(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    depth = prefix.count(".")
    return len({k.split(".")[depth] for k in state if k.startswith(prefix)})


def infer_clip_config(
    state: Mapping[str, torch.Tensor], quick_gelu: bool | None = None
) -> CLIPConfig:
    """The architecture of a CLIP state dict (OpenAI's inference rules + ConvNeXt).

    ``quick_gelu`` cannot be read from weights: it defaults to True for the ResNet layout
    (every published ResNet CLIP used QuickGELU) and False for ViT and ConvNeXt (open_clip's
    rule for a plain state dict); :func:`load_clip` turns it on for OpenAI's archives.
    """
    try:
        if "visual.proj" in state:
            width = state["visual.conv1.weight"].shape[0]
            patch = state["visual.conv1.weight"].shape[-1]
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            depth = _count_children(state, "visual.transformer.resblocks.")
            heads = WIDE_VIT_HEADS.get(width, 0)
            vision = VisionConfig("vit", patch * grid, (depth,), width, patch, heads=heads)
        elif "visual.trunk.stem.0.weight" in state:
            depths = tuple(
                _count_children(state, f"visual.trunk.stages.{i}.blocks.") for i in range(4)
            )
            dims = tuple(
                state[f"visual.trunk.stages.{i}.blocks.0.conv_dw.weight"].shape[0] for i in range(4)
            )
            eps = next(
                (e for d, m, e in CONVNEXT_TRUNKS.values() if (d, m) == (depths, dims)), 1e-6
            )
            head = "mlp" if "visual.head.mlp.fc1.weight" in state else "linear"
            vision = VisionConfig("convnext", 224, depths, dims=dims, head=head, norm_eps=eps)
        else:
            layers = tuple(_count_children(state, f"visual.layer{i}.") for i in range(1, 5))
            width = state["visual.layer1.0.conv1.weight"].shape[0]
            grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = VisionConfig("resnet", grid * 32, layers, width)
        text_width = state["ln_final.weight"].shape[0]
        text = TextConfig(
            width=text_width,
            heads=text_width // 64,
            layers=_count_children(state, "transformer.resblocks."),
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
        )
        embed_dim = state["text_projection"].shape[1]
    except KeyError as exc:
        raise CheckpointError(f"not a CLIP state dict: key {exc} is missing") from exc
    except IndexError as exc:  # a tensor with fewer dimensions than its key's
        raise CheckpointError(
            f"not a CLIP state dict: a tensor has the wrong shape ({exc})"
        ) from exc
    narrow = text.width if vision.kind != "vit" else min(text.width, vision.width)
    if narrow < 64:
        raise CheckpointError(f"not a CLIP state dict: a tower {narrow} wide has no 64-wide heads")
    if quick_gelu is None:
        quick_gelu = vision.kind == "resnet"
    return CLIPConfig(embed_dim, vision, text, quick_gelu)


def file_activation(path: str | Path, quick_gelu: bool | None) -> bool | None:
    """``quick_gelu`` for weights read from ``path``: True for one of OpenAI's TorchScript
    archives (OpenAI trained with QuickGELU), else ``quick_gelu`` as given (None: the model
    name's or the layout's default)."""
    if quick_gelu is None and is_torchscript_archive(path):
        return True
    return quick_gelu


def warn_unstated_activation(
    config: CLIPConfig, path: str | Path, quick_gelu: bool | None, name: str | None
) -> None:
    """Warn when ViT weights from a plain state dict got exact GELU by default: weights do not
    record their activation, and OpenAI-trained ViTs need QuickGELU."""
    if quick_gelu is None and config.vision.kind == "vit" and not config.quick_gelu:
        fix = f"name the model '{name}-quickgelu'" if name else "pass quick_gelu=True"
        warnings.warn(
            f"CLIP weights {path} do not say which activation trained them: the ViT uses exact "
            f"GELU, as open_clip does (LAION's ViTs); for OpenAI-trained weights {fix}",
            stacklevel=3,
        )


def load_clip_weights(model: CLIP, path: str | Path) -> CLIP:
    """Load a checkpoint file into ``model`` strictly (names every missing/unexpected key)."""
    load_state_dict_strict(model, read_clip_state_dict(path), source=str(path))
    return model.eval()


def _convnext_image_size(config: CLIPConfig, source: str) -> CLIPConfig:
    """``config`` (inferred from ConvNeXt weights) at its registered image size; InputError when
    the weights fit registered models of different sizes (``convnext_base_w`` at 256 px and
    ``convnext_base_w_320``: no tensor differs), 224 px when none fits."""
    matches = registered_names_of(config)
    sizes = {get_clip_config(name).vision.image_size for name in matches}
    if len(sizes) > 1:
        raise InputError(
            f"{source} fits the CLIP models {', '.join(matches)}, which differ only in image "
            "size (ConvNeXt weights do not record it): pass name= one of them"
        )
    if not matches:
        return config
    return replace(config, vision=get_clip_config(matches[0]).vision)


def load_clip(path: str | Path, quick_gelu: bool | None = None, *, name: str | None = None) -> CLIP:
    """Build the CLIP a checkpoint file describes and load it (see :func:`infer_clip_config`).

    ``name`` (a registered model, e.g. ``"convnext_base_w_320"``) builds that architecture
    instead, as :func:`create_model` does; it is needed for ConvNeXt weights, which fit the
    256 px and 320 px models alike (an :class:`InputError` lists them when it is missing).
    ``quick_gelu`` picks the activation, which weights do not record. By default it is on for
    one of OpenAI's TorchScript archives, else as ``name`` (or the layout: see
    :func:`infer_clip_config`) says; a plain ViT state dict under a name without
    ``-quickgelu`` gets exact GELU and a warning (:func:`file_activation`).
    """
    quick_gelu = file_activation(path, quick_gelu)
    state = read_clip_state_dict(path)
    if name is not None:
        config = get_clip_config(name, quick_gelu)
    else:
        try:
            config = infer_clip_config(state, quick_gelu)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        if config.vision.kind == "convnext":
            config = _convnext_image_size(config, str(path))
    with weights_to_be_loaded():
        model = CLIP(config)
    load_state_dict_strict(model, state, source=str(path))
    warn_unstated_activation(config, path, quick_gelu, name)  # once they fit
    return model.eval()


def create_model(
    name: str,
    pretrained: str | Path | None = None,
    *,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CLIP:
    """Build the registered CLIP ``name``; load ``pretrained`` (a tag such as ``"openai"`` or a
    checkpoint path) strictly. Without ``pretrained`` the weights are random (for tests) and
    ``model.random_weights`` is True: labelled predictors then warn and mark their labels.

    The activation is ``name``'s (see :class:`~ovsam.clip.config.CLIPConfig`), QuickGELU for
    OpenAI's weights (the ``openai`` tag, or a path to one of OpenAI's TorchScript archives);
    ``quick_gelu`` overrides it."""
    if pretrained is None:
        return CLIP(get_clip_config(name, quick_gelu)).to(device).eval()
    get_clip_config(name, quick_gelu)  # an unknown name is named as such, before its weights
    arch = canonical_name(name)
    path = clip_weights_file(arch, pretrained)
    if path is not None:  # a missing, empty or folder path is named as CLIP's weights
        checkpoint_file(path, "CLIP weights")
    path = path or resolve_weights(
        pretrained_weights_name(arch, str(pretrained)), progress=progress
    )
    if quick_gelu is None and pretrained == "openai":
        quick_gelu = True
    quick_gelu = file_activation(path, quick_gelu)
    config = get_clip_config(name, quick_gelu)
    with weights_to_be_loaded():
        model = CLIP(config)
    load_clip_weights(model, path)
    warn_unstated_activation(config, path, quick_gelu, name)  # once they fit
    return model.to(device)
