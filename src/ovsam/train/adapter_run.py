"""The SAM2CLIP adapter a clip2sam run learns on: checked against its sam2clip run, and kept.

A clip2sam run names its frozen adapter by ``adapter_checkpoint``, a sam2clip run's
``RUN/checkpoints/step_N.pt``. The head it trains is only good with that very adapter, yet the
sam2clip run may later delete the file (``keep_checkpoints``) or a new run write another one
in its place. So the clip2sam run copies the adapter's weights into its own folder
(:data:`ADAPTER_COPY`) when it starts, and, once it has a checkpoint, resumes and exports read
that copy (:func:`adapter_source`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ovsam.errors import InputError
from ovsam.fileio import atomic_write
from ovsam.train.config import TrainConfig, load_config

ADAPTER_COPY = "adapter.pt"
"""The run's copy of its adapter's weights, in the run folder."""


def adapter_copy(config: TrainConfig) -> Path:
    """Where the run ``config.out`` keeps its copy of the adapter."""
    return Path(config.out) / ADAPTER_COPY


def _has_checkpoints(config: TrainConfig) -> bool:
    """Whether the run has trained (a run with none may start again with other settings)."""
    return (Path(config.out) / "checkpoints" / "latest.json").is_file()


def adapter_source(config: TrainConfig) -> str:
    """The adapter a clip2sam run loads: its own copy once it has trained with it, else
    ``adapter_checkpoint``."""
    copy = adapter_copy(config)
    return str(copy) if copy.is_file() and _has_checkpoints(config) else config.adapter_checkpoint


def keep_adapter_copy(config: TrainConfig, state: dict[str, torch.Tensor], resumed: bool) -> None:
    """Write the run's copy of the adapter weights ``state`` (loaded from
    :func:`adapter_source`), atomically: at a fresh start (replacing the copy of an earlier
    start with other settings), or on a resume of a run that has none yet."""
    copy = adapter_copy(config)
    if resumed and copy.is_file():
        return
    cpu = {name: tensor.detach().cpu() for name, tensor in state.items()}
    atomic_write(copy, lambda fh: torch.save(cpu, fh))


def check_adapter_file(config: TrainConfig) -> None:
    """Refuse (:class:`InputError`) an ``adapter_checkpoint`` that is not a file, unless the
    run already holds its copy."""
    path = config.adapter_checkpoint
    if not path or Path(path).is_file() or adapter_source(config) != path:
        return
    raise InputError(
        f"adapter_checkpoint={path}: no such file (expected a sam2clip run's "
        "RUN/checkpoints/step_N.pt; its run deletes older ones when keep_checkpoints is set)"
    )


def _clip_used(config: TrainConfig) -> str:
    """The CLIP weights a run ran on: ``clip_weights``, or ``random`` for ``random_clip``."""
    return "random (random_clip=true)" if config.random_clip else config.clip_weights


def _same_clip_weights(config: TrainConfig, other: TrainConfig) -> bool:
    """Whether two runs of the same ``clip_model`` used the same CLIP weights: the same tag, or
    files at the same place or with the same contents (size, then sha256)."""
    from ovsam.clip.pretrained import clip_weights_file

    if _clip_used(config) == _clip_used(other):
        return True
    if config.random_clip or other.random_clip:
        return False
    mine = clip_weights_file(config.clip_model, config.clip_weights)
    theirs = clip_weights_file(other.clip_model, other.clip_weights)
    return mine is not None and theirs is not None and _same_file(mine, theirs)


def _same_file(mine: Path, theirs: Path) -> bool:
    """Whether two existing files are one: the same place, or the same contents (size, then
    sha256, remembered per version of a large file: every rank checks at every start)."""
    from ovsam.weights_cache import remembered_sha256

    if not (mine.is_file() and theirs.is_file()):
        return False
    return mine.resolve() == theirs.resolve() or (
        mine.stat().st_size == theirs.stat().st_size
        and remembered_sha256(mine) == remembered_sha256(theirs)
    )


def _teacher_model(name: str) -> str:
    """The registered teacher model ``name`` means (aliases resolved; unknown names as given)."""
    from ovsam.build import get_model_entry

    try:
        return get_model_entry(name).name
    except InputError:
        return name


def _same_checkpoint(mine: str, theirs: str) -> bool:
    """Whether two ``teacher_checkpoint`` values name the same weights: equal (the model's
    defaults, or one registered name), or files that are one."""
    return mine == theirs or (bool(mine) and bool(theirs) and _same_file(Path(mine), Path(theirs)))


def check_adapter_run(config: TrainConfig) -> None:
    """Refuse (:class:`InputError`) a clip2sam ``config`` whose ``adapter_checkpoint`` was
    distilled with another ``clip_model``, CLIP weights (``clip_weights`` / ``random_clip``) or
    ``teacher`` (model, aliases resolved, and ``teacher_checkpoint``): its head would learn
    from, and its export carry, features the adapter was not trained to make. They are read
    from the sam2clip run's ``RUN/config.json`` when the adapter is
    ``RUN/checkpoints/step_N.pt``; a bare adapter file (no such config) cannot be checked."""
    from ovsam.clip.config import canonical_name

    if not config.adapter_checkpoint:
        return
    checkpoint = Path(config.adapter_checkpoint)
    recorded = checkpoint.parent.parent / "config.json"
    if checkpoint.parent.name != "checkpoints" or not recorded.is_file():
        return
    adapter = load_config(recorded.parent)
    checks = (  # (name, ours, the adapter run's, same?) in order: files are hashed last
        ("clip_model", config.clip_model, adapter.clip_model,
         lambda: canonical_name(config.clip_model) == canonical_name(adapter.clip_model)),
        ("teacher", config.teacher, adapter.teacher,
         lambda: _teacher_model(config.teacher) == _teacher_model(adapter.teacher)),
        ("teacher_checkpoint", config.teacher_checkpoint, adapter.teacher_checkpoint,
         lambda: _same_checkpoint(config.teacher_checkpoint, adapter.teacher_checkpoint)),
        ("clip_weights", _clip_used(config), _clip_used(adapter),
         lambda: _same_clip_weights(config, adapter)),
    )  # fmt: skip
    for name, mine, theirs, same in checks:
        if not same():
            raise InputError(
                f"{name}={mine} but adapter_checkpoint {checkpoint} was distilled with "
                f"{name}={theirs} (its run's {recorded})"
            )
