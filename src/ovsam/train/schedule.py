"""The optimisation of a run: learning-rate schedule and weight-decay groups, as the official
mmengine configs set them (``schedule_distillation.py``, ``schedule_12e.py``).

The learning rate at step ``s`` (0-based, the step about to be taken) is ``lr`` times
:func:`lr_factor`: a linear warm-up (mmengine's ``LinearLR``, ``start_factor`` 0.001, over
``warmup_steps``) multiplied by the decay over the whole run (``CosineAnnealingLR`` to
``min_lr_ratio``, or ``MultiStepLR`` x0.1 at 8/12 and 11/12 of ``steps``), as mmengine chains
schedulers that overlap. ``cosine_after_warmup`` keeps the schedule of runs saved before these
settings existed, so they resume as they ran.
"""

from __future__ import annotations

import math

from torch import nn

from ovsam.train.config import TrainConfig

WARMUP_START = 0.001
# The official 12-epoch schedule's milestones (epochs 8 and 11) as fractions of the run.
STEP_MILESTONES = (8 / 12, 11 / 12)
STEP_GAMMA = 0.1
# Parameters of these layers skip weight decay when ``norm_decay`` is off (mmengine's
# ``norm_decay_mult=0`` applies to the same torch classes).
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of ``config.lr`` at 0-based ``step`` (see the module docstring)."""
    if config.lr_schedule == "cosine_after_warmup":  # runs saved before the official schedules
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))
    warmup = 1.0
    if step < config.warmup_steps:
        warmup = WARMUP_START + (1 - WARMUP_START) * step / config.warmup_steps
    progress = min(1.0, step / max(1, config.steps))
    if config.lr_schedule == "step":
        passed = sum(step >= round(m * config.steps) for m in STEP_MILESTONES)
        return warmup * STEP_GAMMA**passed
    floor = config.min_lr_ratio
    return warmup * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(module: nn.Module, config: TrainConfig) -> list[dict[str, object]]:
    """AdamW parameter groups of ``module``'s trainable parameters: one, or with
    ``norm_decay`` off a second without weight decay for :data:`NORM_LAYERS`' parameters."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    if config.norm_decay:
        return [{"params": trainable}]
    exempt = {id(p) for m in module.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) not in exempt]},
        {"params": [p for p in trainable if id(p) in exempt], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
