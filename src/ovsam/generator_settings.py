"""Settings of :class:`~ovsam.automatic.AutomaticMaskGenerator`, checked before any model
is built or image embedded (the CLI checks its flags with them)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

from ovsam.errors import InputError

# Largest pred_iou_thresh: above every predicted IoU (MobileSAM's reach 1.01), below a slip
# such as 88 for 0.88.
PRED_IOU_THRESH_MAX = 2.0
# Largest grid: 256 x 256 = 65,536 clicks, minutes per image on a GPU and hours on a CPU.
MAX_POINTS_PER_SIDE = 256
# Deepest crop layer: 1 + 4 + ... + 4**4 = 341 crops, each embedded anew.
MAX_CROP_LAYERS = 4


def check_generator_settings(
    settings: dict[str, Any], labels: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`InputError` naming the first :class:`AutomaticMaskGenerator` setting (by
    field name, any subset) no run can use, before any model is built or image embedded.
    ``labels`` names settings in the message as their caller knows them (e.g. a CLI flag).

    Counts (``min_mask_area`` and ``min_mask_region_area`` are pixel counts) must be integers
    (``points_per_side`` at most :data:`MAX_POINTS_PER_SIDE`, ``crop_n_layers`` at most
    :data:`MAX_CROP_LAYERS`), thresholds and ratios real numbers (Python's or numpy's; booleans
    are refused); the last crop layer must keep a point per side."""

    def label(name: str) -> str:
        return (labels or {}).get(name, name)

    for name, least, most in (
        ("points_per_side", 1, MAX_POINTS_PER_SIDE),
        ("points_per_batch", 1, None),
        ("min_mask_area", 0, None),
        ("min_mask_region_area", 0, None),
        ("crop_n_layers", 0, MAX_CROP_LAYERS),
        ("crop_n_points_downscale_factor", 1, None),
    ):
        if name not in settings:
            continue
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise InputError(f"{label(name)}={value!r}: expected an integer >= {least}")
        if most is not None and value > most:
            raise InputError(f"{label(name)}={value!r}: expected at most {most}")
    for name, low, high in (
        # predicted IoUs lie in about [0, 1], a little above 1 at times; 88 means 0.88
        ("pred_iou_thresh", -math.inf, PRED_IOU_THRESH_MAX),
        ("stability_score_thresh", 0.0, 1.0),
        ("stability_score_offset", 0.0, math.inf),
        ("nms_thresh", 0.0, 1.0),
        ("crop_nms_thresh", 0.0, 1.0),
        ("crop_overlap_ratio", 0.0, 1.0),
    ):
        if name not in settings:
            continue
        value = settings[name]
        if isinstance(value, bool) or not (
            isinstance(value, Real) and math.isfinite(value) and low <= value <= high
        ):
            if high == math.inf:
                bounds = f" >= {low}" * (low > -math.inf)
            else:
                bounds = f" <= {high}" if low == -math.inf else f" in [{low}, {high}]"
            raise InputError(f"{label(name)}={value!r}: expected a finite number{bounds}")
    _check_last_layer_points(settings, label)


def _check_last_layer_points(settings: dict[str, Any], label: Callable[[str], str]) -> None:
    """Refuse crop layers whose deepest grid, ``int(points_per_side /
    crop_n_points_downscale_factor ** crop_n_layers)`` as SAM's, has no point."""
    side = settings.get("points_per_side", 32)
    layers = settings.get("crop_n_layers", 0)
    factor = settings.get("crop_n_points_downscale_factor", 1)
    if int(int(side) / int(factor) ** int(layers)) < 1:  # numpy integers' powers can wrap
        raise InputError(
            f"{label('points_per_side')}={side} / {label('crop_n_points_downscale_factor')}="
            f"{factor} ** {label('crop_n_layers')}={layers} leaves no point per side in the "
            "last crop layer"
        )
