"""Turn a finished ``clip2sam`` run into one self-describing OV-SAM file.

``ovsam train export RUN --out model.safetensors [--step N]`` assembles the state dict of
:class:`~ovsam.ov.model.OVSam` from what the run names in ``RUN/config.json`` and writes it with
:func:`~ovsam.ov.checkpoints.save_ovsam`, so ``ovsam.build_model(path)`` and
``ovsam eval --recognizer ovsam --checkpoint path`` need nothing else:

=============================================  ==============================
from                                           goes to
=============================================  ==============================
``adapter_checkpoint`` (a sam2clip step)       ``image_encoder.neck.*``
the clip2sam checkpoint (``step_N.pt``)        ``fpn_neck.*``, ``mask_decoder.*``
CLIP ``clip_model`` / ``clip_weights``         ``image_encoder.backbone.*``
the ``teacher`` SAM                            ``prompt_encoder.*``
``supervised_vocabulary`` (or ``vocabulary``)   ``OVSamConfig.seen_vocabulary``
=============================================  ==============================

The adapter's size is read from its tensors and recorded in the config, as are the CLIP
weights (a registered tag, or the file's name and sha256: recognition then embeds class names
with the text tower of the same weights, :func:`~ovsam.recognizers.build_labeled_predictor`).
A ``random_clip`` run is refused (its CLIP weights are not saved), as is a run without
``adapter_checkpoint`` (its random adapter is not saved either) and one whose adapter was
distilled with another CLIP or teacher (:func:`~ovsam.train.adapter_run.check_adapter_run`; a bare
adapter file, outside its sam2clip run folder, cannot be checked). :func:`export_ovsam`
reports the step it exported and the run's ``steps``: the newest checkpoint may be that of an
unfinished run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ovsam.checkpoint import load_state_dict_strict, read_state_dict
from ovsam.errors import CheckpointError, InputError, first_line
from ovsam.ov.checkpoints import read_adapter_state, save_ovsam, take_prefix
from ovsam.ov.model import OVSam, OVSamConfig, build_ovsam
from ovsam.train.adapter_run import adapter_source, check_adapter_run
from ovsam.train.config import TrainConfig, load_config, supervised_field
from ovsam.train.engine import checkpoint_files, latest_checkpoint
from ovsam.vocab import BUILTIN_VOCABULARIES, category_vocabulary, load_vocabulary

_HEAD = ("fpn_neck.", "mask_decoder.")


def run_checkpoint(run: str | Path, step: int | None = None) -> tuple[Path, Path]:
    """``(run folder, checkpoint)`` of ``run``: a run folder (its ``latest.json``, or
    ``checkpoints/step_{step}.pt``) or a ``RUN/checkpoints/step_N.pt`` file itself."""
    run = Path(run)
    if run.is_file():
        if step is not None:
            raise InputError(f"--step {step} goes with a run folder, not the file {run}")
        return run.absolute().parent.parent, run  # also for a bare step_N.pt
    if not run.is_dir():
        raise InputError(f"{run} does not exist (expected a clip2sam run folder)")
    folder = run / "checkpoints"
    if step is None:
        latest = latest_checkpoint(run, "use --step N")
        if latest is None:
            raise InputError(f"{run} has no checkpoint ({folder / 'latest.json'} is missing)")
        path = latest
    else:
        path = folder / f"step_{step}.pt"
    if not path.is_file():
        steps = [int(p.stem[5:]) for p in checkpoint_files(folder)]
        raise InputError(f"{path} does not exist (steps saved: {steps or 'none'})")
    return run, path


def adapter_sizes(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(dim, depth, heads)`` of a SAM2CLIP adapter state dict (heads from the width of the
    relative-position tables, which is the head width)."""
    try:
        dim = int(state["level_encoding.weight"].shape[1])
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        heads = dim // int(state["blocks.0.attn.rel_pos_h"].shape[1])
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"not a SAM2CLIP adapter state dict (no {exc})") from exc
    return dim, depth, heads


def seen_vocabulary(config: TrainConfig) -> str | tuple[str, ...]:
    """What the head was trained on (``supervised_vocabulary``, else ``vocabulary``): a
    built-in vocabulary's name, else its class names (those of the annotation file for
    ``dataset``, as training names them: :func:`~ovsam.vocab.category_vocabulary`)."""
    setting = supervised_field(config)
    name = getattr(config, setting)
    if name in BUILTIN_VOCABULARIES:
        return name
    if name != "dataset":
        return load_vocabulary(name).classes
    try:
        categories = json.loads(Path(config.annotations).read_bytes())["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{setting}=dataset: cannot read the class names of {config.annotations} ({exc})"
        ) from exc
    return category_vocabulary("dataset", [str(c["name"]) for c in categories]).classes


def _adapter(config: TrainConfig) -> tuple[dict[str, torch.Tensor], tuple[int, int, int]]:
    """The run's adapter weights (``image_encoder.neck.*``) and their size, checked: the size
    against the run's, and the CLIP and teacher against those its sam2clip run's config.json
    records, when there is one (:func:`~ovsam.train.adapter_run.check_adapter_run`)."""
    check_adapter_run(config)
    state = read_adapter_state(adapter_source(config))  # the run's own copy, when it has one
    if any(k.startswith(_HEAD) for k in state):
        raise InputError(
            f"adapter_checkpoint {config.adapter_checkpoint} is a clip2sam checkpoint, not a "
            "sam2clip one"
        )
    sizes = adapter_sizes(state)
    expected = (config.adapter_dim, config.adapter_depth, config.adapter_heads)
    if sizes != expected:
        raise InputError(
            f"adapter_checkpoint {config.adapter_checkpoint} has dim/depth/heads "
            f"{'/'.join(map(str, sizes))} but the run says {'/'.join(map(str, expected))}"
        )
    return take_prefix(state, "", "image_encoder.neck."), sizes


def clip_weights_recorded(config: TrainConfig) -> dict[str, str]:
    """The ``clip_weights`` / ``clip_weights_sha256`` of :class:`~ovsam.ov.model.OVSamConfig`
    for the run's CLIP: a registered tag as is, a file as its name and sha256."""
    from ovsam.clip.config import canonical_name
    from ovsam.clip.pretrained import clip_weights_file, clip_weights_sha256

    arch = canonical_name(config.clip_model)
    path = clip_weights_file(arch, config.clip_weights)
    if path is None:
        return {"clip_weights": config.clip_weights, "clip_weights_sha256": ""}
    digest = clip_weights_sha256(arch, path)
    if digest is None:
        raise InputError(f"clip_weights {path} of the run does not exist")
    return {"clip_weights": path.name, "clip_weights_sha256": digest}


def _frozen_parts(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The CLIP visual tower and the teacher's prompt encoder, as the run loaded them."""
    from ovsam.build import build_model
    from ovsam.clip.factory import create_model

    clip = create_model(config.clip_model, pretrained=config.clip_weights, progress=False)
    teacher = build_model(config.teacher, config.teacher_checkpoint or None, fuse=False)
    return take_prefix(clip.state_dict(), "visual.", "image_encoder.backbone.") | take_prefix(
        teacher.state_dict(), "prompt_encoder.", "prompt_encoder."
    )


def export_model(run: str | Path, step: int | None = None) -> OVSam:
    """The OV-SAM a clip2sam run (folder or checkpoint file, see :func:`run_checkpoint`)
    trained, with its weights loaded strictly; one-line errors for runs that cannot be."""
    return _export(*run_checkpoint(run, step))[0]


def _export(run_dir: Path, checkpoint: Path) -> tuple[OVSam, TrainConfig]:
    """:func:`export_model` of ``checkpoint`` of the run in ``run_dir``, and that run's config."""
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir} has no config.json: not a training run folder")
    config = replace(load_config(run_dir), out=str(run_dir))  # the folder, wherever it went
    if config.task != "clip2sam":
        raise InputError(
            f"{run_dir} is a {config.task} run: export the clip2sam run trained with "
            f"--set adapter_checkpoint={checkpoint}"
        )
    if config.random_clip:
        raise InputError(
            f"{run_dir} was trained with random_clip=true: its CLIP weights are not saved, "
            "so it cannot be exported"
        )
    if not config.adapter_checkpoint:
        raise InputError(
            f"{run_dir} was trained without adapter_checkpoint: its random SAM2CLIP adapter "
            "is not saved, so it cannot be exported"
        )
    head = read_state_dict(checkpoint)
    if not any(k.startswith(_HEAD) for k in head):
        raise InputError(f"{checkpoint} has no fpn_neck/mask_decoder weights: not clip2sam")
    state, (dim, depth, heads) = _adapter(config)
    state |= {k: v for k, v in head.items() if k.startswith(_HEAD)} | _frozen_parts(config)
    model = build_ovsam(
        OVSamConfig(
            clip_model=config.clip_model,
            seen_vocabulary=seen_vocabulary(config),
            adapter_dim=dim,
            adapter_depth=depth,
            adapter_heads=heads,
            **clip_weights_recorded(config),
        )
    )
    load_state_dict_strict(model, state, source=f"{checkpoint} + the files its run names")
    return model.eval(), config


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint of the engine was saved at (its ``step`` entry)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged file
        raise CheckpointError(
            f"{path} records no training step ({type(exc).__name__}: {first_line(exc)})"
        ) from exc


@dataclass(frozen=True)
class Exported:
    """What :func:`export_ovsam` wrote: ``path`` holds step ``step`` of a run of ``steps``,
    which is ``finished`` when it has saved its last step."""

    path: Path
    step: int
    steps: int
    finished: bool

    @property
    def progress(self) -> str:
        """``step 2 of 2``, ``step 1 of 3`` or ``step 1 of 3: the run is not finished``."""
        unfinished = "" if self.finished else ": the run is not finished"
        return f"step {self.step} of {self.steps}{unfinished}"


def export_ovsam(run: str | Path, out_path: str | Path, step: int | None = None) -> Exported:
    """Write the OV-SAM trained by the clip2sam ``run`` (see :func:`export_model`) to
    ``out_path`` (``.safetensors``) with :func:`~ovsam.ov.checkpoints.save_ovsam`."""
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise InputError(f"--out {out_path}: the file name must end in .safetensors")
    run_dir, checkpoint = run_checkpoint(run, step)  # once: the run may be writing a newer one
    model, config = _export(run_dir, checkpoint)
    steps = config.steps
    finished = (run_dir / "checkpoints" / f"step_{steps}.pt").is_file()  # the engine saves it
    exported_step = checkpoint_step(checkpoint)  # before writing: a bad checkpoint writes nothing
    return Exported(save_ovsam(model, out_path), exported_step, steps, finished)
