"""Open-Vocabulary SAM: model, official checkpoints, labelled predictor, crop baselines.

Importing this package registers the models ``ovsam_coco`` and ``ovsam_lvis`` with
:func:`ovsam.build.build_model` (pretrained = the four official files, fetched on first use).
"""

from __future__ import annotations

from functools import partial

from ovsam.build import register_model
from ovsam.ov.checkpoints import (
    load_official_ovsam,
    load_ovsam,
    official_weights_names,
    save_ovsam,
)
from ovsam.ov.model import OVSam, OVSamConfig, build_ovsam

OFFICIAL_CONFIGS = {
    "ovsam_coco": OVSamConfig(roi_size=12, seen_vocabulary="coco_base", clip_weights="openai"),
    "ovsam_lvis": OVSamConfig(roi_size=7, seen_vocabulary="lvis_base", clip_weights="openai"),
}
ALIAS_SUFFIX = "_rn50x16"
for _name, _config in OFFICIAL_CONFIGS.items():
    register_model(
        _name,
        partial(build_ovsam, _config),
        default_weights=None,
        aliases=(f"{_name}{ALIAS_SUFFIX}",),
        load_pretrained=partial(load_official_ovsam, dataset=_name.split("_")[1]),
    )


def official_weights(model_name: str) -> list[str]:
    """The registered weights ``build_model(model_name)`` fetches for an official OV-SAM model
    (name or alias); ``[]`` for any other model."""
    name = model_name.removesuffix(ALIAS_SUFFIX)
    config = OFFICIAL_CONFIGS.get(name)
    if config is None:
        return []
    return official_weights_names(name.split("_")[1], config.clip_model)


__all__ = [
    "OVSam",
    "OVSamConfig",
    "build_ovsam",
    "load_official_ovsam",
    "load_ovsam",
    "official_weights",
    "save_ovsam",
]
