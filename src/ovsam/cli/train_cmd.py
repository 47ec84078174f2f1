"""``ovsam train TASK --data DIR --out RUN [--set FIELD=VALUE ...]`` (run under ``torchrun``).

Single process: ``ovsam train sam2clip --data images/ --out runs/a``. Several processes /
machines: ``torchrun --nproc_per_node 8 -m ovsam train sam2clip ...`` (see the README).
Re-running the same command resumes from the newest checkpoint in ``--out``; settings that
change what the run trains must stay the same (see :func:`ovsam.train.config.check_resume`).
``ovsam train export RUN --out model.safetensors [--step N]`` writes a clip2sam run as one
model file (:mod:`ovsam.train.export`) and says which step of the run it holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ovsam.cli.arg_types import output_path
from ovsam.errors import InputError
from ovsam.train.config import TASKS, TrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the SAM2CLIP adapter (distillation) or the CLIP2SAM head; export a model",
        description="Train with the configuration in ovsam.train.config.TrainConfig; fields are "
        "overridden with --set FIELD=VALUE and the result is saved as RUN/config.json. "
        "`train export` turns a finished clip2sam run into one model file.",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS:
        _add_task_parser(tasks, task)
    export = tasks.add_parser(
        "export",
        help="write a clip2sam run as one OV-SAM .safetensors (build_model / eval accept it)",
        description="Assemble the OV-SAM a clip2sam run trained (its head, the adapter, CLIP "
        "and prompt encoder its config.json names) into one self-describing file.",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN", help="clip2sam run folder")
    export.add_argument(
        "--out",
        dest="model_out",
        type=output_path,
        required=True,
        metavar="FILE",
        help="model file (.safetensors)",
    )
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    export.set_defaults(run=run_export)


def _add_task_parser(tasks: argparse._SubParsersAction, task: str) -> None:
    parser = tasks.add_parser(task, help=f"train {task} (see ovsam.train.{task}_task)")
    parser.add_argument(
        "--data", type=Path, required=True, help="image folder (or COCO image root)"
    )
    parser.add_argument("--annotations", type=Path, default=None, help="COCO/LVIS json (optional)")
    parser.add_argument(
        "--out", type=output_path, required=True, help="run folder (checkpoints, logs)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="config override"
    )
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this step (testing)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if available), cpu, cuda or cuda:N (under torchrun: cuda, each "
        "process on GPU LOCAL_RANK)",
    )
    parser.set_defaults(run=run)


def _config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: ``RUN/config.json`` (if any) + the command line, checked.
    Resuming keeps what the run trains; without a checkpoint in ``RUN`` nothing was trained (a
    first run stopped before its first checkpoint, or failed at step 1), so any setting may
    change."""
    from dataclasses import replace

    from ovsam.train.config import (
        LVIS_LSJ_MIN_SCALE,
        absolute_paths,
        apply_overrides,
        check_resume,
        dataset_lsj_min_scale,
        load_config,
        task_config,
        validate_config,
    )
    from ovsam.train.engine import checkpoint_files

    checkpoints = args.out / "checkpoints"
    trained = (checkpoints / "latest.json").is_file() or bool(checkpoint_files(checkpoints))
    saved = load_config(args.out) if (args.out / "config.json").is_file() else None
    if saved is None and trained:  # another config.json would describe them wrongly
        raise InputError(
            f"{args.out} holds checkpoints but no config.json, so the settings they were "
            "trained with are unknown: put the run's config.json back, or use a new --out"
        )
    if saved is not None and not trained and saved.task != args.task:
        saved = None  # another task, nothing trained: it starts from its own defaults
    config = replace(
        saved or task_config(args.task),
        task=args.task,
        data=str(args.data),
        annotations=str(args.annotations or ""),
        out=str(args.out),
    )
    given = {item.partition("=")[0] for item in args.set}  # the fields --set names
    for flag, field in (("--out", "out"), ("--data", "data"), ("--annotations", "annotations")):
        if field in given:
            raise InputError(f"--set {field}=...: give the run's {field} with {flag}")
    config = absolute_paths(apply_overrides(config, args.set))
    default = task_config(args.task).supervised_vocabulary
    if (
        (saved is None or (not trained and saved.supervised_vocabulary == default))
        and "vocabulary" in given
        and "supervised_vocabulary" not in given
    ):
        # the default supervised classes (coco_base) belong to the default vocabulary (coco),
        # also in a run stopped before its first checkpoint (one set on purpose is kept)
        config = replace(config, supervised_vocabulary="")
    official_scales = (task_config(args.task).lsj_min_scale, LVIS_LSJ_MIN_SCALE)
    if (
        config.task == "clip2sam"
        and "lsj_min_scale" not in given
        and (saved is None or (not trained and saved.lsj_min_scale in official_scales))
    ):  # the official jitter of the dataset (LVIS's reaches x0.1), unless set on purpose
        config = replace(config, lsj_min_scale=dataset_lsj_min_scale(config))
    if config.task != args.task:
        raise InputError(
            f"--set task={config.task} contradicts `train {args.task}`: the subcommand is the task"
        )
    validate_config(config, resumed=trained)
    if config.task == "clip2sam" and not config.annotations:
        raise InputError("clip2sam training needs --annotations (COCO / LVIS instances)")
    if args.stop_after is not None and args.stop_after < 1:
        raise InputError(f"--stop-after {args.stop_after}: expected a positive step")
    if saved is not None and trained:
        check_resume(saved, config, args.out)
    return config


def run(args: argparse.Namespace) -> int:
    from ovsam.distributed import init_distributed, shutdown
    from ovsam.output_lock import output_lock
    from ovsam.train.clip2sam_task import Clip2SamTask, startup_notice
    from ovsam.train.engine import Trainer
    from ovsam.train.sam2clip_task import Sam2ClipTask

    config = _config(args)
    info = init_distributed(args.device)
    notice = startup_notice(config) if config.task == "clip2sam" else None
    if notice and info.is_main:
        print(notice, file=sys.stderr)
    try:
        task = (Sam2ClipTask if config.task == "sam2clip" else Clip2SamTask)(config, info.device)
        with output_lock(args.out, "train", holder=info.is_main):
            trainer = Trainer(config, task, info)
            rows = trainer.train(stop_after=args.stop_after)
    finally:
        shutdown()
    if info.is_main and rows:
        last = rows[-1]
        print(f"step {last['step']}: loss {last['loss']:.6g} -> {args.out}")
        if all(row.get("skipped") for row in rows):
            print(
                f"warning: all {len(rows)} steps of this run were skipped (no image kept an "
                "instance to learn from: see min_mask_area and the data), so its weights are "
                "the ones it started from",
                file=sys.stderr,
            )
    elif info.is_main:
        print(f"{args.out} already finished at step {trainer.step}; raise --set steps=N to go on")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``ovsam train export RUN --out FILE [--step N]``."""
    from ovsam.cli.preflight import check_output
    from ovsam.train.export import export_ovsam

    check_output(args.model_out, is_file=True)
    exported = export_ovsam(args.run_dir, args.model_out, step=args.step)
    print(f"{args.run_dir} ({exported.progress}) -> {exported.path}")
    return 0
