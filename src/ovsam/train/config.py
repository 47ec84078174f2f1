"""Run configurations as dataclasses, overridable from the command line, saved beside the run.

``ovsam train sam2clip --data DIR --out RUN --set steps=200 --set lr=2e-4`` builds a
:class:`TrainConfig`, applies each ``--set field=value`` (converted to the field's type) and
writes ``RUN/config.json``; resuming reads that file back. :func:`validate_config` rejects
values no run can use, :func:`check_resume` refuses to continue a run with settings that
change what it trains (only the fields in :data:`RESUMABLE` may differ), and
:func:`check_adapter_run` refuses a clip2sam adapter distilled with another CLIP or teacher.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ovsam.errors import InputError
from ovsam.fileio import atomic_write_bytes

TASKS = ("sam2clip", "clip2sam")
# fields that may differ when a run is resumed: they change neither the model, the data nor
# the optimisation already done (learning-rate and optimizer settings are restored from the
# checkpoint, so changing them would be silently ignored); a moved ``data`` folder is checked
# by the checkpoint's fingerprint of its images (:mod:`ovsam.train.run_data`)
RESUMABLE = frozenset(
    {"out", "data", "cache_teacher", "steps", "log_every", "checkpoint_every", "keep_checkpoints"}
)
#: key of ``config.json`` holding the versions and world size of the run's last process
ENVIRONMENT = "environment"
MAX_SEED = 2**64 - 1
_VOCABULARIES = ("vocabulary", "supervised_vocabulary")
_PATHS = frozenset({"data", "annotations", "teacher_checkpoint", "adapter_checkpoint"})
_POSITIVE = (
    "steps", "batch_size", "grad_accum", "checkpoint_every", "log_every",
    "adapter_dim", "adapter_depth", "adapter_heads", "prompts_per_image",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Sizes default to the official configuration; a new run starts
    from :func:`task_config` (the official optimisation of its task), and the defaults here of
    the fields added later are what runs saved before them did, so their ``config.json`` files
    still read back as they ran.

    ``lr_schedule``: ``cosine`` (to ``min_lr_ratio * lr`` at ``steps``) or ``step`` (x0.1 at
    8/12 and 11/12 of ``steps``: the official 12-epoch schedule), times a linear warm-up from
    0.001 over ``warmup_steps``; ``cosine_after_warmup`` is the schedule of runs saved before
    these fields (warm-up ``(s + 1) / warmup_steps``, then a cosine to 0 over the rest);
    ``lsj_min_scale``, ``lsj_flip`` and ``min_mask_area`` shape clip2sam's augmentation;
    ``norm_decay=false`` exempts normalisation layers from weight decay (the official
    ``norm_decay_mult=0``); ``keep_checkpoints`` N > 0 deletes all but the newest N
    checkpoints; ``supervised_vocabulary`` names the classes trained on when they are fewer
    than the text bank's ``vocabulary`` (empty = all of it; a new run that sets ``vocabulary``
    alone trains on all of it).
    """

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
    lr_schedule: str = "cosine_after_warmup"
    min_lr_ratio: float = 0.0
    norm_decay: bool = True
    grad_clip: float = 0.01
    checkpoint_every: int = 100
    keep_checkpoints: int = 0
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
    lsj_min_scale: float = 0.1
    lsj_flip: bool = False
    min_mask_area: int = 0
    prompts_per_image: int = 40
    vocabulary: str = "coco_base"
    supervised_vocabulary: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# What differs between the tasks' official configs (schedule_distillation.py for sam2clip,
# schedule_12e.py + the 80-class COCO bank with the 48 base classes supervised for clip2sam).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sam2clip": {"warmup_steps": 500, "lr_schedule": "cosine", "min_lr_ratio": 0.01,
                 "norm_decay": False, "grad_clip": 5.0},
    "clip2sam": {"warmup_steps": 500, "lr_schedule": "step", "norm_decay": False,
                 "grad_clip": 0.01, "vocabulary": "coco", "supervised_vocabulary": "coco_base",
                 "lsj_min_scale": 0.9, "lsj_flip": True, "min_mask_area": 32},
}  # fmt: skip
LR_SCHEDULES = ("cosine", "step", "cosine_after_warmup")
# The official LVIS pipeline (lvis_norare.py) jitters over x0.1-2.0; COCO's over x0.9-2.0.
LVIS_LSJ_MIN_SCALE = 0.1
LVIS_VOCABULARIES = ("lvis", "lvis_base", "lvis_rare")


def dataset_lsj_min_scale(config: TrainConfig) -> float:
    """The official ``lsj_min_scale`` of a clip2sam run on ``config``'s vocabulary: LVIS's when
    ``vocabulary`` or ``supervised_vocabulary`` is a built-in LVIS vocabulary, else COCO's."""
    if {config.vocabulary, config.supervised_vocabulary} & set(LVIS_VOCABULARIES):
        return LVIS_LSJ_MIN_SCALE
    return TASK_DEFAULTS["clip2sam"]["lsj_min_scale"]


def supervised_field(config: TrainConfig) -> str:
    """The field naming the classes a clip2sam run trains on: ``supervised_vocabulary`` when
    set, else ``vocabulary``."""
    return "supervised_vocabulary" if config.supervised_vocabulary else "vocabulary"


def task_config(task: str) -> TrainConfig:
    """The configuration a new run of ``task`` starts from (:data:`TASK_DEFAULTS` applied)."""
    return replace(TrainConfig(task=task), **TASK_DEFAULTS.get(task, {}))


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


def _vocabulary_file(value: str) -> bool:
    """Whether a vocabulary setting names a file (not ``dataset`` or a built-in vocabulary,
    which win over a file of that name, as in training)."""
    from ovsam.vocab import BUILTIN_VOCABULARIES

    return value != "dataset" and value not in BUILTIN_VOCABULARIES and Path(value).is_file()


def _absolute(config: TrainConfig, name: str) -> str:
    """Setting ``name`` of ``config`` with a file or folder made absolute; registered weights
    names (``teacher_checkpoint=sam_vit_h_4b8939``), CLIP tags (``clip_weights=openai``) and
    vocabularies that are no file (``coco_base``, ``dataset``) are kept as they are."""
    from ovsam.clip.pretrained import clip_weights_file
    from ovsam.weights import find_weights_spec

    value = getattr(config, name)
    if name in _VOCABULARIES:
        return str(Path(value).resolve()) if _vocabulary_file(value) else value
    if name == "clip_weights":
        path = clip_weights_file(config.clip_model, value)
        return value if path is None else str(path.resolve())
    if name.endswith("_checkpoint") and find_weights_spec(value) is not None:
        return value
    return str(Path(value).resolve())


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its file and folder settings (``out``, and ``clip_weights`` and the
    vocabularies when they are files) made absolute: a run resumed from another working
    directory, or exported from one, then names the same files."""
    names = sorted(_PATHS | {"out", "clip_weights", *_VOCABULARIES})
    return replace(config, **{n: _absolute(config, n) for n in names if getattr(config, n)})


def save_config(config: TrainConfig, run_dir: Path, world_size: int = 1) -> None:
    """Write ``run_dir/config.json``: the config, plus under :data:`ENVIRONMENT` the ovsam and
    torch versions and the world size of the process writing it (informational: not read back,
    so not part of the resume comparison). Written as ASCII JSON: a path that is not UTF-8
    keeps its undecodable bytes as ``\\udcXX`` escapes, which read back as the same path."""
    import torch

    from ovsam import __version__

    environment = {"ovsam": __version__, "torch": torch.__version__, "world_size": world_size}
    text = json.dumps({**config.to_json(), ENVIRONMENT: environment}, indent=2, allow_nan=False)
    atomic_write_bytes(run_dir / "config.json", (text + "\n").encode("ascii"))


def load_config(run_dir: Path) -> TrainConfig:
    """The config saved by :func:`save_config` (its :data:`ENVIRONMENT` entry left out)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        saved.pop(ENVIRONMENT, None)
        config = TrainConfig(**saved)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"cannot read {run_dir / 'config.json'}: {exc}") from exc
    defaults = TrainConfig()
    for f in fields(config):
        kind, value = type(getattr(defaults, f.name)), getattr(config, f.name)
        # an int where a float goes (e.g. "lr": 1, written by hand) is one; a bool is no int
        matches = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if isinstance(value, bool) is not (kind is bool) or not matches:
            raise InputError(
                f"cannot read {run_dir / 'config.json'}: {f.name} is {value!r}, "
                f"expected {kind.__name__}"
            )
    return config


def validate_config(config: TrainConfig, resumed: bool = False) -> None:
    """Raise :class:`InputError` naming the first setting no run can use (``resumed``: of a
    run continued from a checkpoint, whose ``warmup_steps`` may not change)."""
    if config.task not in TASKS:
        raise InputError(f"task={config.task!r}: expected one of {', '.join(TASKS)}")
    for name in _POSITIVE:
        if getattr(config, name) < 1:
            raise InputError(f"{name}={getattr(config, name)}: expected a positive integer")
    for name in ("warmup_steps", "seed", "keep_checkpoints", "min_mask_area"):
        if getattr(config, name) < 0:
            raise InputError(f"{name}={getattr(config, name)}: expected an integer >= 0")
    if config.seed > MAX_SEED:  # torch.manual_seed takes 64 bits
        raise InputError(f"seed={config.seed}: expected an integer <= {MAX_SEED} (2**64 - 1)")
    if config.warmup_steps >= config.steps:
        remedy = (
            f"this run keeps its warm-up: use --set steps=N with N > {config.warmup_steps}"
            if resumed
            else f"use --set warmup_steps=N with N < {config.steps}"
        )
        raise InputError(
            f"warmup_steps={config.warmup_steps} leaves no step of steps={config.steps} at the "
            f"full learning rate: {remedy}"
        )
    if config.lr_schedule not in LR_SCHEDULES:
        raise InputError(
            f"lr_schedule={config.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}"
        )
    if not 0 < config.lsj_min_scale <= 2:
        raise InputError(f"lsj_min_scale={config.lsj_min_scale}: expected a number in (0, 2]")
    if not 0 <= config.min_lr_ratio <= 1:
        raise InputError(f"min_lr_ratio={config.min_lr_ratio}: expected a number in [0, 1]")
    if not (math.isfinite(config.lr) and 0 < config.lr <= 3.4028234663852886e38):  # float32
        raise InputError(f"lr={config.lr}: expected a finite number > 0 that float32 holds")
    for name in ("weight_decay", "grad_clip"):
        if not (math.isfinite(getattr(config, name)) and getattr(config, name) >= 0):
            raise InputError(f"{name}={getattr(config, name)}: expected a finite number >= 0")
    if config.adapter_dim % config.adapter_heads:
        raise InputError(
            f"adapter_dim={config.adapter_dim} is not divisible by "
            f"adapter_heads={config.adapter_heads}"
        )
    _check_weights_settings(config)
    from ovsam.ov.model import check_pyramid_clip  # imports torch: once the rest is checked

    check_pyramid_clip(config.clip_model)  # an unknown name or a ViT, before any model is built


def _check_weights_settings(config: TrainConfig) -> None:
    """The teacher and the files a run loads exist, before anything is built (a clip2sam run
    builds CLIP and its text bank first: minutes on a CPU)."""
    from ovsam.build import get_model_entry
    from ovsam.weights import find_weights_spec

    try:
        get_model_entry(config.teacher)
    except InputError as exc:
        raise InputError(f"teacher={config.teacher}: {exc}") from exc
    checkpoint = config.teacher_checkpoint
    if checkpoint and find_weights_spec(checkpoint) is None and not Path(checkpoint).is_file():
        raise InputError(
            f"teacher_checkpoint={checkpoint}: no such file, nor the name of registered weights"
        )
    from ovsam.train.adapter_run import check_adapter_file

    check_adapter_file(config)


def _same(name: str, saved: Any, new: Any) -> bool:
    if name in _PATHS and saved and new:  # the same file or folder, however it is spelt
        return saved == new or Path(saved).resolve() == Path(new).resolve()
    if name in _VOCABULARIES and _vocabulary_file(saved) and _vocabulary_file(new):
        return Path(saved).resolve() == Path(new).resolve()
    return saved == new


def check_resume(saved: TrainConfig, config: TrainConfig, run_dir: Path) -> None:
    """Raise :class:`InputError` when ``config`` would change what the run in ``run_dir``
    (saved with ``saved``) trains: every field outside :data:`RESUMABLE` must be the same."""
    differ = [
        f"{f.name} ({getattr(saved, f.name)!r} -> {getattr(config, f.name)!r})"
        for f in fields(config)
        if f.name not in RESUMABLE
        and not _same(f.name, getattr(saved, f.name), getattr(config, f.name))
    ]
    if differ:
        allowed = ", ".join(sorted(RESUMABLE - {"out"}))
        raise InputError(
            f"{run_dir} holds a {saved.task} run with other settings: {'; '.join(differ)}; "
            f"only {allowed} may change on resume; use a new --out for a different run"
        )
