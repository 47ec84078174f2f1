"""Run configurations as dataclasses, overridable from the command line, saved beside the run.

``ovsam train sam2clip --data DIR --out RUN --set steps=200 --set lr=2e-4`` builds a
:class:`TrainConfig`, applies each ``--set field=value`` (converted to the field's type) and
writes ``RUN/config.json``; resuming reads that file back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ovsam.errors import InputError
from ovsam.fileio import atomic_write_json


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Sizes default to the official configuration."""

    task: str = "sam2clip"
    data: str = ""
    annotations: str = ""
    out: str = "runs/sam2clip"
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 0
    grad_clip: float = 0.01
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    bf16: bool = True
    teacher: str = "mobilesam"
    teacher_checkpoint: str = ""
    clip_model: str = "RN50x16"
    clip_weights: str = "openai"
    random_clip: bool = False
    adapter_dim: int = 1280
    adapter_depth: int = 5
    adapter_heads: int = 16
    adapter_checkpoint: str = ""
    cache_teacher: bool = True
    lsj: bool = True
    prompts_per_image: int = 40
    vocabulary: str = "coco_base"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _convert(name: str, kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"--set {name}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError as exc:
        raise InputError(f"--set {name}={text}: expected {kind.__name__}") from exc


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``["steps=200", "lr=2e-4"]`` applied to ``config`` (unknown fields are errors)."""
    types = {f.name: type(getattr(config, f.name)) for f in fields(config)}
    changes: dict[str, Any] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            known = ", ".join(types)
            raise InputError(f"bad override {item!r}: use FIELD=VALUE with FIELD one of {known}")
        changes[name] = _convert(name, types[name], value)
    return replace(config, **changes)


def save_config(config: TrainConfig, run_dir: Path) -> None:
    atomic_write_json(run_dir / "config.json", config.to_json())


def load_config(run_dir: Path) -> TrainConfig:
    try:
        return TrainConfig(**json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot read {run_dir / 'config.json'}: {exc}") from exc
