"""Model builders and a small registry.

``build_model(name, checkpoint=None, *, pretrained=True)`` builds a registered model, loads
weights strictly and returns it in eval mode. Built in: ``mobilesam`` (alias ``vit_t``),
``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` (aliases ``vit_b`` / ``vit_l`` / ``vit_h``).

Other packages add models without editing this file::

    from ovsam.build import register_model
    register_model("ovsam_coco", build_ovsam_coco, default_weights="ovsam_coco", aliases=())

``ovsam.ov`` registers its ``ovsam_*`` models when imported; ``build_model`` imports it on
demand when asked for an unknown name starting with ``ovsam``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ovsam.checkpoint import load_state_dict_strict, read_state_dict, weights_to_be_loaded
from ovsam.errors import CheckpointError, InputError
from ovsam.modeling.image_encoder import ImageEncoderViT
from ovsam.modeling.mask_decoder import MaskDecoder
from ovsam.modeling.prompt_encoder import PromptEncoder
from ovsam.modeling.sam import Sam
from ovsam.modeling.tiny_vit import TinyViT
from ovsam.modeling.transformer import TwoWayTransformer

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024
PATCH_SIZE = 16


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``builder()`` returns it randomly initialised."""

    name: str
    builder: Callable[[], nn.Module]
    default_weights: str | None
    aliases: tuple[str, ...]
    load_pretrained: Callable[[nn.Module], object] | None = None


_MODELS: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    name: str,
    builder: Callable[[], nn.Module],
    default_weights: str | None,
    aliases: tuple[str, ...] | list[str] = (),
    load_pretrained: Callable[[nn.Module], object] | None = None,
) -> ModelEntry:
    """Register ``builder`` under ``name`` (and ``aliases``).

    ``default_weights`` is an ``ovsam.weights`` name used when ``build_model`` gets no
    checkpoint and ``pretrained`` is true; otherwise ``load_pretrained(model)``, when given,
    loads the pretrained weights then, and must overwrite every parameter: a model built to be
    loaded skips random initialisation (:func:`~ovsam.checkpoint.weights_to_be_loaded`).
    Registering a taken name or alias is a ``ValueError`` unless it is the same entry again
    (re-import).
    """
    entry = ModelEntry(name, builder, default_weights, tuple(aliases), load_pretrained)
    for key in (name, *entry.aliases):
        owner = _ALIASES.get(key)
        if owner is not None and _MODELS[owner] != entry:
            raise ValueError(f"model name {key!r} is already registered (by {owner!r})")
    _MODELS[name] = entry
    for key in (name, *entry.aliases):
        _ALIASES[key] = name
    return entry


def list_models() -> list[str]:
    """Canonical names of the registered models (``ovsam_*`` included), in registration order."""
    importlib.import_module("ovsam.ov")  # registers the ovsam_* models
    return list(_MODELS)


def get_model_entry(name: str) -> ModelEntry:
    """The entry registered under ``name`` or one of its aliases (``InputError`` if none)."""
    if name not in _ALIASES and name.startswith("ovsam"):
        importlib.import_module("ovsam.ov")  # registers the ovsam_* models
    if name not in _ALIASES:
        raise InputError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[_ALIASES[name]]


def is_model_file(name: str | Path) -> bool:
    """Whether :func:`build_model` takes ``name`` as a model file (an existing
    ``.safetensors`` file, e.g. from ``ovsam train export``) rather than a registered name."""
    return Path(name).suffix == ".safetensors" and Path(name).is_file()


def build_model(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = True,
    fuse: bool = True,
) -> nn.Module:
    """Build model ``name`` in eval mode.

    ``name`` may also be the path of a self-describing ovsam checkpoint (``save_ovsam``); such
    a file given as the ``checkpoint`` of an OV-SAM model is loaded the same way.
    ``checkpoint``: a registered weights name (``ovsam.weights``; a registered name always
    means those weights, even if a file of that name exists: write ``./name`` for the file)
    or a checkpoint path (missing, empty or folder paths are a ``CheckpointError``); without
    one, the model's default weights are fetched when ``pretrained``, else it stays randomly
    initialised. Loading is strict (``CheckpointError`` names missing/unexpected keys).
    ``fuse`` then calls the model's ``fuse_for_inference()`` if it has one (``Sam``: fold
    BatchNorms into convs); pass ``fuse=False`` to keep the official ``state_dict`` keys,
    e.g. for training or re-saving.
    """
    if not isinstance(name, (str, Path)):
        raise InputError(f"model name must be a string (see list_models()), got {name!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
        raise InputError(
            "checkpoint must be a file path or a registered weights name, got "
            f"{type(checkpoint).__name__} (for a state dict: build with pretrained=False, "
            "then model.load_state_dict)"
        )
    if is_model_file(name):
        from ovsam.ov.checkpoints import load_ovsam

        if checkpoint is not None:
            raise InputError(
                f"model file {name} carries its own weights: give no checkpoint (got {checkpoint})"
            )
        return load_ovsam(name)
    if Path(name).suffix == ".safetensors":
        raise InputError(f"model file {name} not found")
    entry = get_model_entry(str(name))
    if checkpoint is not None:
        from ovsam.ov.checkpoints import is_ovsam_checkpoint, load_ovsam

        if is_ovsam_checkpoint(checkpoint):  # it describes its own architecture (e.g. exported)
            if entry.name.startswith("ovsam"):
                return load_ovsam(checkpoint)
            raise CheckpointError(
                f"{checkpoint} is an OV-SAM model, not weights for {entry.name}: load it as the "
                f"model itself (--model {checkpoint}, or build_model({str(checkpoint)!r}))"
            )
    if isinstance(checkpoint, str):
        _refuse_other_models_weights(entry, checkpoint)
    weights = (
        checkpoint if checkpoint is not None else (entry.default_weights if pretrained else None)
    )
    if weights is None and checkpoint is None and pretrained and entry.load_pretrained:
        with weights_to_be_loaded():
            model = entry.builder()
        entry.load_pretrained(model)
    elif weights is not None:
        from ovsam.weights import resolve_weights

        path = resolve_weights(weights)  # before building: a missing file costs no time
        with weights_to_be_loaded():
            model = entry.builder()
        load_state_dict_strict(model, read_state_dict(path), source=str(path))
    else:
        model = entry.builder()
    model.eval()
    fuse_for_inference = getattr(model, "fuse_for_inference", None)
    if fuse and callable(fuse_for_inference):
        fuse_for_inference()
    return model


def weights_owner(names: tuple[str, ...]) -> ModelEntry | None:
    """The registered model whose default weights are one of ``names`` (a weights entry's name
    and aliases), or None (e.g. for the OV-SAM parts and CLIP weights)."""
    return next(
        (e for e in map(get_model_entry, list_models()) if e.default_weights in names), None
    )


def _refuse_other_models_weights(entry: ModelEntry, checkpoint: str) -> None:
    """:class:`InputError` when ``checkpoint`` names registered weights that another model
    loads by default (``sam_vit_b_01ec64`` for ``mobilesam``), before they are fetched."""
    from ovsam.weights import find_weights_spec

    spec = find_weights_spec(checkpoint)
    if spec is None or spec.name == entry.default_weights:
        return
    owner = weights_owner((spec.name, *spec.aliases))
    if owner is not None:
        raise InputError(
            f"weights {checkpoint} are {owner.name}'s, not {entry.name}'s: build "
            f"{owner.name} (--model {owner.name}), or give {entry.name} its own weights"
        )


def _sam(image_encoder: nn.Module) -> Sam:
    grid = IMAGE_SIZE // PATCH_SIZE
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )


def build_sam_vit(
    embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]
) -> Sam:
    """Randomly initialised SAM with a ViT image encoder of the given size."""
    return _sam(
        ImageEncoderViT(
            img_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=global_attn_indexes,
            window_size=14,
            out_chans=PROMPT_EMBED_DIM,
        )
    )


def build_mobilesam() -> Sam:
    """Randomly initialised MobileSAM (TinyViT ``vit_t`` image encoder)."""
    return _sam(TinyViT(img_size=IMAGE_SIZE, out_chans=PROMPT_EMBED_DIM))


register_model("mobilesam", build_mobilesam, "mobile_sam", aliases=("vit_t",))
register_model(
    "sam_vit_b",
    lambda: build_sam_vit(768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_b_01ec64",
    aliases=("vit_b",),
)
register_model(
    "sam_vit_l",
    lambda: build_sam_vit(1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_l_0b3195",
    aliases=("vit_l",),
)
register_model(
    "sam_vit_h",
    lambda: build_sam_vit(1280, 32, 16, (7, 15, 23, 31)),
    "sam_vit_h_4b8939",
    aliases=("vit_h",),
)
