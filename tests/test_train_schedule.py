"""The official optimisation per task (warm-up, cosine / step decay, no weight decay on norms,
re-shaped when ``steps`` is raised on resume), and the run-state rules of the engine: checkpoints kept, a lost ``latest.json``, a resume with
other data or another world size, an empty dataset, and teacher targets cached per image file."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from ovsam.train.config import TrainConfig, load_config, task_config
from ovsam.train.schedule import lr_factor, param_groups
from train_harness import TINY, TinyTask, Train, log_rows, one_line_error

pytest_plugins = ("train_harness",)


def test_each_task_starts_from_its_official_schedule() -> None:
    sam2clip, clip2sam = task_config("sam2clip"), task_config("clip2sam")
    assert (sam2clip.grad_clip, sam2clip.lr_schedule, sam2clip.min_lr_ratio) == (
        5.0,
        "cosine",
        0.01,
    )
    assert (clip2sam.grad_clip, clip2sam.lr_schedule) == (0.01, "step")
    assert (clip2sam.vocabulary, clip2sam.supervised_vocabulary) == ("coco", "coco_base")
    for config in (sam2clip, clip2sam):
        assert (config.warmup_steps, config.norm_decay, config.lr) == (500, False, 1e-4)
    assert (clip2sam.lsj_min_scale, clip2sam.lsj_flip, clip2sam.min_mask_area) == (0.9, True, 32)


def test_a_run_saved_before_the_official_schedules_resumes_as_it_ran(tmp_path: Path) -> None:
    """Fields added later default to what older runs did: their config.json reads back as run."""
    saved = {k: v for k, v in TrainConfig(steps=10, warmup_steps=2).to_json().items()}
    added = ("lr_schedule", "min_lr_ratio", "norm_decay", "keep_checkpoints",
             "supervised_vocabulary", "lsj_min_scale", "lsj_flip", "min_mask_area")  # fmt: skip
    for name in added:
        del saved[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = load_config(tmp_path)
    assert (old.lr_schedule, old.min_lr_ratio, old.norm_decay) == ("cosine_after_warmup", 0.0, True)
    assert (old.lsj_min_scale, old.lsj_flip, old.min_mask_area) == (0.1, False, 0)
    assert old.supervised_vocabulary == "" and old.keep_checkpoints == 0
    # the schedule they ran: warm-up (s + 1) / W, then a cosine to 0 over the remaining steps
    expected = [0.5, 1.0, *(0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10))]
    assert [lr_factor(old, s) for s in range(10)] == pytest.approx(expected)


def test_setting_the_vocabulary_alone_trains_on_all_of_it(train: Train, tmp_path: Path) -> None:
    """coco_base is the supervised default of the default vocabulary, coco; a new run naming
    another vocabulary (dataset, lvis) trains on all of its classes unless it says otherwise."""
    clip2sam = {"task": "clip2sam", "extra": ("--annotations", str(tmp_path / "a.json"))}
    assert train(*TINY, "steps=2", "vocabulary=dataset", **clip2sam)[0] == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["vocabulary"], saved["supervised_vocabulary"]) == ("dataset", "")
    assert saved["lsj_min_scale"] == 0.9  # COCO's jitter
    run = tmp_path / "run"
    shutil.rmtree(run)
    sets = ("vocabulary=lvis", "supervised_vocabulary=lvis_base")
    assert train(*TINY, "steps=2", *sets, **clip2sam)[0] == 0
    saved = json.loads((run / "config.json").read_text())
    # and the official LVIS jitter, x0.1-2.0 (lvis_norare.py), unless set
    assert (saved["supervised_vocabulary"], saved["lsj_min_scale"]) == ("lvis_base", 0.1)
    shutil.rmtree(run)
    assert train(*TINY, "steps=2", *sets, "lsj_min_scale=0.5", **clip2sam)[0] == 0
    assert json.loads((run / "config.json").read_text())["lsj_min_scale"] == 0.5


def test_warmup_is_linear_from_a_thousandth_and_multiplies_the_decay() -> None:
    config = TrainConfig(steps=100, warmup_steps=10, lr_schedule="step")
    assert [lr_factor(config, s) for s in (0, 5, 10)] == pytest.approx([0.001, 0.5005, 1.0])
    cosine = replace(config, lr_schedule="cosine", min_lr_ratio=0.01)
    decay = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 5 / 100))
    assert lr_factor(cosine, 5) == pytest.approx(0.5005 * decay)
    assert lr_factor(cosine, 100) == pytest.approx(0.01)


def test_step_schedule_drops_tenfold_at_8_and_11_of_12() -> None:
    config = TrainConfig(steps=12, lr_schedule="step")
    assert [lr_factor(config, s) for s in range(12)] == pytest.approx(
        [1.0] * 8 + [0.1] * 3 + [0.01]
    )


def test_norm_layers_skip_weight_decay_when_norm_decay_is_off() -> None:
    module = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    module[3].requires_grad_(False)  # frozen parameters are left out
    assert [len(g["params"]) for g in param_groups(module, TrainConfig())] == [6]
    decayed, exempt = param_groups(module, TrainConfig(norm_decay=False))
    assert [id(p) for p in decayed["params"]] == [id(p) for p in module[0].parameters()]
    norms = [*module[1].parameters(), *module[2].parameters()]
    assert [id(p) for p in exempt["params"]] == [id(p) for p in norms]
    assert exempt["weight_decay"] == 0.0 and "weight_decay" not in decayed
    optimizer = torch.optim.AdamW(param_groups(module, TrainConfig(norm_decay=False)), lr=1.0)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


def test_raising_steps_re_shapes_the_schedule_from_the_first_resumed_step(
    train: Train, tmp_path: Path
) -> None:
    """A finished run given more ``steps``: its next step uses the new schedule's rate, not the
    end of the old one's (0.01x here, then a 40x jump at the step after)."""
    assert train(*TINY, "steps=4")[0] == 0
    assert train("steps=8")[0] == 0
    config = load_config(tmp_path / "run")
    assert config.steps == 8
    used = [row["lr"] for row in log_rows(tmp_path / "run")]
    assert used[4:] == pytest.approx([config.lr * lr_factor(config, s) for s in range(4, 8)])


def test_keep_checkpoints_deletes_all_but_the_newest(train: Train, tmp_path: Path) -> None:
    assert train(*TINY, "steps=8", "checkpoint_every=1", "keep_checkpoints=2")[0] == 0
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*.pt")) == ["step_7.pt", "step_8.pt"]
    assert json.loads((folder / "latest.json").read_text())["file"] == "step_8.pt"


def test_a_lost_latest_json_is_refused_not_a_fresh_start(train: Train, tmp_path: Path) -> None:
    assert train(*TINY, "steps=4")[0] == 0
    folder = tmp_path / "run" / "checkpoints"
    (folder / "latest.json").unlink()
    before = {p.name: p.read_bytes() for p in folder.glob("step_*.pt")}
    code, _, err = train("steps=6")
    assert code == 2 and "holds step_2.pt, step_4.pt but no latest.json" in one_line_error(err)
    assert '{"file": "step_N.pt", "step": N}' in err
    assert {p.name: p.read_bytes() for p in folder.glob("step_*.pt")} == before


def test_a_resume_on_other_data_or_another_world_size_is_refused(
    train: Train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert train(*TINY, "steps=2")[0] == 0
    monkeypatch.setattr(TinyTask, "num_items", 5)
    code, _, err = train("steps=4")
    assert code == 2 and "step_2.pt was trained with num_items=4, this run has num_items=5" in err
    monkeypatch.setattr(TinyTask, "num_items", 4)
    path = tmp_path / "run" / "checkpoints" / "step_2.pt"
    state = torch.load(path, weights_only=True)
    assert state["data"] == {"world": 1, "num_items": 4}
    state["data"]["world"] = 2
    torch.save(state, path)
    code, _, err = train("steps=4")
    assert code == 2 and "world=2, this run has world=1" in one_line_error(err)
    assert "start it on 2 processes (torchrun --nproc_per_node)" in err


def test_an_empty_dataset_is_one_line(
    train: Train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TinyTask, "num_items", 0)
    code, _, err = train(*TINY, "steps=2")
    assert code == 2 and "nothing to train on" in one_line_error(err)
    assert "holds no training items" in err


def test_teacher_targets_are_cached_by_image_file_not_by_position(tmp_path: Path) -> None:
    """Adding an image shifts positions in the sorted folder; each cached target keeps its file."""
    from types import SimpleNamespace

    from PIL import Image

    from ovsam.data.instances import ImageFolder
    from ovsam.train.sam2clip_task import Sam2ClipTask

    for name in ("a.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)

    def targets() -> dict[str, Path]:
        task = SimpleNamespace(
            images=ImageFolder(tmp_path), cache=tmp_path / "cache", teacher_key=b"teacher"
        )
        return {
            task.images.image_path(i).name: Sam2ClipTask._cached_target(task, i)
            for i in range(len(task.images))
        }

    before = targets()
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    after = targets()
    assert len(set(after.values())) == 3 and {n: after[n] for n in before} == before
    Image.new("RGB", (9, 8)).save(tmp_path / "c.png")  # replaced: its old target is not reused
    assert targets()["c.png"] != before["c.png"]
