"""SAM2CLIP distillation under ``torchrun --nproc_per_node 2`` (gloo): loss falls, resume is exact.

Teacher: the real MobileSAM image encoder. Student: a random CLIP RN50 tower + a narrow adapter.
Data: the tiny COCO-format dataset drawn by ``tiny_coco``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ovsam.errors import InputError
from ovsam.train.config import TrainConfig, apply_overrides, task_config
from ovsam.train.engine import batch_items
from tiny_coco import write_tiny_coco

COCO_BASE_IN_TINY = ("person", "car")  # tiny_coco's classes of OV-COCO's 48 base ones
OVERRIDES = [
    "warmup_steps=0", "random_clip=true", "clip_model=RN50", "adapter_dim=64",
    "adapter_depth=2",
    "adapter_heads=2", "lr=2e-3", "log_every=1", "checkpoint_every=2", "grad_clip=1.0",
]  # fmt: skip


def torchrun(data: Path, out: Path, *extra: str, steps: int = 4) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "ovsam", "train", "sam2clip", "--data", str(data / "images"), "--annotations",
        str(data / "instances.json"), "--out", str(out), "--device", "cpu",
        *[f"--set={o}" for o in [f"steps={steps}", *OVERRIDES]], *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len({row["step"] for row in rows}) == len(rows)  # replayed steps are logged once
    return {row["step"]: row["loss"] for row in rows}


@pytest.mark.filterwarnings("ignore")
def test_distillation_under_torchrun_falls_and_resumes_exactly(
    tmp_path: Path, mobilesam_checkpoint: Path
) -> None:
    data = tmp_path / "data"
    write_tiny_coco(data, images=2)  # one image per rank: the teacher runs in step 1 only
    full = tmp_path / "full"
    every_step = "--set=checkpoint_every=1"
    torchrun(data, full, every_step, steps=2)  # a step costs ~8 s per rank on a 2-core CPU
    reference = losses(full)
    assert sorted(reference) == [1, 2]
    assert all(v == v and v < float("inf") for v in reference.values())
    assert reference[2] < reference[1]  # the adapter learns
    assert json.loads((full / "config.json").read_text())["adapter_dim"] == 64
    assert json.loads((full / "checkpoints" / "latest.json").read_text())["step"] == 2
    # What a run interrupted after step 2 leaves (``--stop-after``: checked in one process
    # by tests/test_train_resume.py, under torchrun by the slow test below): rows 1-2
    # logged, the last checkpoint step 1's.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    (resumed / "checkpoints" / "step_2.pt").unlink()
    (resumed / "checkpoints" / "latest.json").write_text('{"file": "step_1.pt", "step": 1}')
    torchrun(data, resumed, every_step, steps=2)  # replays step 2 from step 1's weights,
    again = losses(resumed)  # optimizer and RNG, and logs it once
    assert sorted(again) == [1, 2]
    assert again[2] == pytest.approx(reference[2], rel=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_a_torchrun_stopped_between_checkpoints_replays_exactly(
    tmp_path: Path, mobilesam_checkpoint: Path
) -> None:
    """``--stop-after 3`` under two ranks (the state the test above builds by hand, one step
    later): both stop after step 3 with step 2 checkpointed; the same command replays step 3."""
    data = tmp_path / "data"
    write_tiny_coco(data, images=2)
    run = tmp_path / "run"
    torchrun(data, run, "--stop-after", "3")
    interrupted = losses(run)
    assert sorted(interrupted) == [1, 2, 3]
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    torchrun(data, run)
    again = losses(run)
    assert sorted(again) == [1, 2, 3, 4]
    assert [again[1], again[2]] == [interrupted[1], interrupted[2]]  # kept rows
    assert again[3] == pytest.approx(interrupted[3], rel=1e-5)  # the replay


def test_batches_are_a_pure_function_of_seed_step_and_rank() -> None:
    """Ranks split each epoch: their micro-batches are disjoint and an epoch covers every item
    once, in an order of the seed's (a pure function: asking again gives the same)."""
    config = TrainConfig(batch_size=2, grad_accum=2, seed=3)

    def batches() -> list[list[list[int]]]:  # [step * grad_accum + micro][rank] -> items
        return [
            [batch_items(config, s, m, r, 2, 10) for r in range(2)]
            for s in range(3)
            for m in range(2)
        ]

    drawn = batches()
    assert drawn == batches()
    for ranks in drawn:
        assert not set(ranks[0]) & set(ranks[1])
    in_order = [i for ranks in drawn for items in ranks for i in items]  # positions 0..23
    assert sorted(in_order[:10]) == list(range(10)) and sorted(in_order[10:20]) == list(range(10))
    assert in_order[:10] != list(range(10)) and in_order[:10] != in_order[10:20]
    assert [batch_items(replace(config, seed=4), 0, 0, 0, 2, 10)] != [drawn[0][0]]


def test_config_overrides() -> None:
    config = apply_overrides(TrainConfig(), ["steps=7", "bf16=false", "lr=3e-4"])
    assert (config.steps, config.bf16, config.lr) == (7, False, 3e-4)
    with pytest.raises(InputError, match="bad override 'nope=1'"):
        apply_overrides(config, ["nope=1"])
    with pytest.raises(InputError, match="expected int"):
        apply_overrides(config, ["steps=many"])


def test_clip2sam_head_learns_masks_and_classes(tmp_path: Path, mobilesam_checkpoint: Path) -> None:
    import torch

    from ovsam.distributed import DistInfo
    from ovsam.train.clip2sam_task import Clip2SamTask
    from ovsam.train.engine import Trainer

    data = tmp_path / "data"
    write_tiny_coco(data, images=1)
    overrides = [o for o in OVERRIDES if not o.startswith(("steps", "lr"))]
    overrides += ["steps=4", "lr=1e-3", "lsj=false", "prompts_per_image=8"]
    config = apply_overrides(
        replace(
            task_config("clip2sam"),
            data=str(data / "images"),
            annotations=str(data / "instances.json"),
            out=str(tmp_path / "run"),
        ),
        overrides,
    )
    assert (config.vocabulary, config.supervised_vocabulary) == ("coco", "coco_base")
    task = Clip2SamTask(config, torch.device("cpu"))
    # the official COCO bank: all 80 classes, the 48 base ones supervised, novel ones negatives
    assert len(task.bank.names) == 80 and len(task.class_of) == 48
    assert set(COCO_BASE_IN_TINY) <= set(task.class_of) and not {"cat", "cup"} & set(task.class_of)
    assert [task.bank.names[i] for i in task.class_of.values()] == list(task.class_of)
    item = task.dataset[0]
    pixels, frame, labels = task._prepare(0, np.random.default_rng(0))
    base = [k for k, n in enumerate(item.names) if n in COCO_BASE_IN_TINY]
    assert pixels.shape == (1, 3, 1024, 1024) and frame.shape == (len(base), 1024, 1024)
    assert labels == [task.bank.names.index(item.names[k]) for k in base]
    boxes = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in map(np.nonzero, frame)]
    np.testing.assert_allclose(boxes, item.boxes[base] * 8, atol=2)  # 128 -> 1024, not stretched
    trainable = {n for n, p in task.trainable.named_parameters() if p.requires_grad}
    assert any(n.startswith("fpn_neck.") for n in trainable) and any(
        n.startswith("mask_decoder.roi_conv") for n in trainable
    )
    assert not any(p.requires_grad for p in task.adapter.parameters())
    rows = Trainer(config, task, DistInfo(0, 1, 0, torch.device("cpu"))).train()
    assert [r["step"] for r in rows] == list(range(1, 5))
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["ce"] < rows[0]["ce"]
    assert all(r["loss"] == r["loss"] for r in rows)


def test_clip2sam_loads_a_sam2clip_checkpoint_strictly(
    tmp_path: Path, mobilesam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from ovsam.errors import CheckpointError
    from ovsam.train.clip2sam_task import Clip2SamTask

    data = tmp_path / "data"
    write_tiny_coco(data, images=1)
    overrides = [o for o in OVERRIDES if not o.startswith("steps")] + ["vocabulary=dataset"]
    config = apply_overrides(
        TrainConfig(data=str(data / "images"), annotations=str(data / "instances.json")),
        overrides,
    )
    first = Clip2SamTask(config, torch.device("cpu"))
    trained = {k: torch.randn_like(v) for k, v in first.adapter.state_dict().items()}
    saved = tmp_path / "step_4.pt"  # the layout ``Trainer.save`` writes
    torch.save({"model": trained, "optimizer": {"state": {}}, "step": 4}, saved)
    task = Clip2SamTask(
        apply_overrides(config, [f"adapter_checkpoint={saved}"]), torch.device("cpu")
    )
    loaded = task.adapter.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    official = tmp_path / "sam2clip_vith_rn50x16.pth"  # the released layout: neck_student.*
    torch.save({"neck_student." + k: v for k, v in trained.items()}, official)
    config_official = apply_overrides(config, [f"adapter_checkpoint={official}"])
    loaded = Clip2SamTask(config_official, torch.device("cpu")).adapter.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())  # was refused: 30 missing
    import ovsam.weights

    fetched, download = [], ovsam.weights.download_weights

    def fetch(spec: ovsam.weights.WeightsSpec, **kwargs: object) -> Path:
        fetched.append(spec.name)  # the registered name is fetched through the resolver
        return official if spec.name == "ovsam_sam2clip_vith_rn50x16" else download(spec, **kwargs)

    monkeypatch.setattr(ovsam.weights, "download_weights", fetch)
    named = apply_overrides(config, ["adapter_checkpoint=ovsam_sam2clip_vith_rn50x16"])
    loaded = Clip2SamTask(named, torch.device("cpu")).adapter.state_dict()
    assert "ovsam_sam2clip_vith_rn50x16" in fetched
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    del trained[next(iter(trained))]
    torch.save({"model": trained}, saved)
    with pytest.raises(CheckpointError, match=f"{saved} does not fit SAM2CLIPAdapter.*1 missing"):
        Clip2SamTask(apply_overrides(config, [f"adapter_checkpoint={saved}"]), torch.device("cpu"))


class TwoBranches(nn.Module):
    """Two linear branches; ``forward`` uses only the one it is told to."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Linear(2, 1), nn.Linear(2, 1)])

    def forward(self, x: torch.Tensor, which: int) -> torch.Tensor:
        return self.branches[which](x)


class AlternatingTask:
    """A task whose micro-batches each use one of two branches, as CLIP2SAM pools each region
    from one FPN level: under DDP the other branch's parameters get no gradient."""

    num_items = 4
    find_unused_parameters = True

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.trainable = TwoBranches()

    def loss(
        self, module: nn.Module, items: list[int], rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        x = torch.ones(1, 2) * (items[0] + 1)
        return {"loss": module(x, items[0] % 2).pow(2).mean()}


def _alternating_rank(rank: int, store: str, outs: tuple[str, str], steps: int) -> None:
    """One of two gloo ranks training :class:`AlternatingTask` to ``steps`` in ``outs[rank]``
    (checkpoints every 2 steps)."""
    import torch.distributed as dist

    from ovsam.distributed import DistInfo
    from ovsam.train.engine import Trainer

    dist.init_process_group("gloo", f"file://{store}", rank=rank, world_size=2)
    try:
        config = TrainConfig(out=outs[rank], steps=steps, log_every=1, checkpoint_every=2)
        rows = Trainer(
            config, AlternatingTask(), DistInfo(rank, 2, rank, torch.device("cpu"))
        ).train()
        assert [row["step"] for row in rows] == list(range(1, steps + 1))
    finally:
        dist.destroy_process_group()


def _spawn_alternating(outs: tuple[str, str], steps: int) -> None:
    """Run :func:`_alternating_rank` on two spawned processes."""
    import tempfile

    import torch.multiprocessing as mp

    # a file rendezvous: a port picked free beforehand can be taken by another test meanwhile
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "store")
        mp.spawn(_alternating_rank, args=(store, outs, steps), nprocs=2, join=True)


def test_ddp_trains_a_task_that_leaves_parameters_unused(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    _spawn_alternating((run, run), steps=3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    # a rank that does not see the run's checkpoints (a node-local --out) would start afresh
    # while rank 0 resumes at step 3, and DDP would average two different models
    with pytest.raises(Exception, match="different checkpoints in .* step 0 to step 3; 0 = n"):
        _spawn_alternating((run, str(tmp_path / "node1")), steps=5)


def test_clip2sam_refuses_a_vocabulary_without_instances(tmp_path: Path) -> None:
    from ovsam.train.clip2sam_task import Clip2SamTask

    data = tmp_path / "data"
    write_tiny_coco(data, images=1)  # person, car, traffic light, cat, cup: none is LVIS-rare
    config = TrainConfig(
        task="clip2sam",
        data=str(data / "images"),
        annotations=str(data / "instances.json"),
        vocabulary="lvis_rare",
    )
    with pytest.raises(InputError, match="no instance of a class of vocabulary='lvis_rare'"):
        Clip2SamTask(config, torch.device("cpu"))


def test_clip2sam_matches_annotation_names_by_name_key(tmp_path: Path) -> None:
    """An LVIS-style file names the class 'traffic_light'; the vocabulary says 'traffic light':
    the same class (it was dropped before, and with it every instance)."""
    import json

    from ovsam.train.clip2sam_task import Clip2SamTask

    data = tmp_path / "data"
    write_tiny_coco(data, images=1)
    annotations = json.loads((data / "instances.json").read_text())
    for category in annotations["categories"]:
        category["name"] = category["name"].replace(" ", "_")
    (data / "instances.json").write_text(json.dumps(annotations))
    (tmp_path / "vocab.txt").write_text("traffic light\n")
    overrides = [o for o in OVERRIDES if not o.startswith("steps")]
    config = apply_overrides(
        TrainConfig(data=str(data / "images"), annotations=str(data / "instances.json")),
        [*overrides, f"vocabulary={tmp_path / 'vocab.txt'}"],
    )
    assert Clip2SamTask(config, torch.device("cpu")).class_of == {"traffic light": 0}


def test_clip2sam_says_when_its_adapter_is_not_trained() -> None:
    from ovsam.train.clip2sam_task import startup_notice

    assert "random_clip=true (testing mode)" in str(startup_notice(TrainConfig(random_clip=True)))
    assert "no adapter_checkpoint" in str(startup_notice(TrainConfig()))
    assert startup_notice(TrainConfig(adapter_checkpoint="a.pt")) is None


def test_clip2sam_refuses_an_adapter_distilled_with_another_clip_or_teacher(
    tmp_path: Path,
) -> None:
    from ovsam.train.adapter_run import check_adapter_run
    from ovsam.train.clip2sam_task import Clip2SamTask
    from ovsam.train.config import save_config

    weights = {name: tmp_path / name / "clip.pt" for name in ("rn50", "copy", "other")}
    for name, path in weights.items():
        path.parent.mkdir()
        path.write_bytes(b"other" if name == "other" else b"rn50!")  # same size, other contents
    run = tmp_path / "sam2clip"
    (run / "checkpoints").mkdir(parents=True)
    save_config(TrainConfig(clip_model="RN50", clip_weights=str(weights["rn50"])), run)
    adapter = run / "checkpoints" / "step_2.pt"
    config = TrainConfig(
        task="clip2sam", clip_model="RN50", clip_weights=str(weights["copy"]),
        adapter_checkpoint=str(adapter),
    )  # fmt: skip
    check_adapter_run(config)  # the same weights in another file
    check_adapter_run(replace(config, clip_weights=str(weights["rn50"])))
    check_adapter_run(replace(config, teacher="vit_t"))  # MobileSAM by its alias
    refused = {
        "clip_model=RN101 but": replace(config, clip_model="RN101"),
        "teacher=sam_vit_b but": replace(config, teacher="sam_vit_b"),
        f"teacher_checkpoint={weights['other']} but": replace(
            config, teacher_checkpoint=str(weights["other"])
        ),
        f"clip_weights={weights['other']} but": replace(config, clip_weights=str(weights["other"])),
        "clip_weights=openai but": replace(config, clip_weights="openai"),
        "clip_weights=random (random_clip=true) but": replace(config, random_clip=True),
    }
    for start, bad in refused.items():
        with pytest.raises(InputError) as info:
            check_adapter_run(bad)
        message = str(info.value)
        assert message.startswith(start) and "\n" not in message, message
        assert f"adapter_checkpoint {adapter} was distilled with " in message
        assert message.endswith(f"(its run's {run / 'config.json'})")
    with pytest.raises(InputError, match="was distilled with clip_model=RN50 "):
        Clip2SamTask(replace(config, clip_model="RN101"), torch.device("cpu"))
    # a bare adapter file names no run: nothing to compare with
    check_adapter_run(
        replace(config, clip_model="RN101", adapter_checkpoint=str(tmp_path / "a.pt"))
    )


def test_large_scale_jitter_takes_a_read_only_image() -> None:
    import warnings

    from ovsam.data.prompts import large_scale_jitter

    image = np.zeros((8, 6, 3), np.uint8)
    masks = np.ones((1, 8, 6), bool)
    image.flags.writeable = masks.flags.writeable = False  # as PIL-backed arrays are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, out_masks = large_scale_jitter(image, masks, np.random.default_rng(0), size=16)
    assert out.shape[2] == 3 and out_masks.shape == (1, *out.shape[:2]) and out_masks.all()
    assert 14 <= max(out.shape[:2]) <= 16  # the long side: 16 x [0.9, 2], cropped to 16
