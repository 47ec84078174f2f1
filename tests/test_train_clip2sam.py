"""CLIP2SAM's micro-batches, in one process (the tiny stand-ins of ``train_clip2sam_stubs``):
one call of the trained module per micro-batch, only images with a supervised instance, losses
averaged over the images used, steps that used none skipped; and the engine's step mean over
the micro-batches that used an item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ovsam.distributed import DistInfo
from ovsam.errors import InputError
from ovsam.train.clip2sam_task import Clip2SamTask, prompted_instances
from ovsam.train.config import TrainConfig
from ovsam.train.engine import USED_ITEMS, Trainer, batch_items
from train_clip2sam_stubs import (
    BIG,
    SMALL,
    TINY,
    install_tiny_clip2sam,
    squares_config,
    write_squares,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def tiny_clip2sam(monkeypatch: pytest.MonkeyPatch) -> None:
    install_tiny_clip2sam(monkeypatch.setattr)


@pytest.mark.parametrize(
    ("count", "times"),
    [(1, [40]), (7, [6] * 5 + [5] * 2), (40, [1] * 40), (50, [1] * 40 + [0] * 10)],
)
def test_an_image_gets_40_prompts_21_of_them_boxes(count: int, times: list[int]) -> None:
    """The official recipe: instances repeated in order up to 40 prompts (an image with more
    keeps its first 40), shuffled; the first 21 prompts are boxes. A one-instance image had
    one prompt, a box, and never a point."""
    order, boxes = prompted_instances(count, 40, np.random.default_rng(0))
    assert boxes == 21 and len(order) == 40
    assert np.bincount(order, minlength=count).tolist() == times
    assert not np.array_equal(order, np.sort(order)) or count == 1
    again, _ = prompted_instances(count, 40, np.random.default_rng(0))
    assert np.array_equal(order, again)  # a function of the rng
    assert prompted_instances(1, 1, np.random.default_rng(0))[1] == 1


def test_the_trained_module_is_called_once_per_micro_batch(tmp_path: Path) -> None:
    """DDP allows one forward per backward: images pooled from other FPN levels in two calls
    broke it, and so did a micro-batch with no image and no call. Every trained parameter is
    reached by the loss, also then (its zero term), so every rank reduces every gradient."""
    write_squares(tmp_path, [("person", BIG), ("person", SMALL), ("person", TINY)])
    task = Clip2SamTask(squares_config(tmp_path), CPU)
    calls = []
    task.trainable.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    params = [p for p in task.trainable.parameters() if p.requires_grad]
    for items, images in (([0, 1], 2), ([2], 0), ([2, 0], 1)):
        calls.clear()
        losses = task.loss(task.trainable, items, np.random.default_rng(0))
        assert calls == [images]
        assert float(losses[USED_ITEMS]) == images
        grads = torch.autograd.grad(losses["loss"], params, allow_unused=True)
        assert all(g is not None for g in grads)  # every parameter is reached
    assert float(losses["loss"].detach()) > 0 and set(losses) == {
        "loss",
        "ce",
        "bce",
        "dice",
        USED_ITEMS,
    }


def test_only_images_with_a_supervised_instance_are_trained_on(tmp_path: Path) -> None:
    """As the official dataset's ``filter_data``: an image of novel classes only (a cat, not in
    ``coco_base``) is no training item, so it takes no optimizer step."""
    write_squares(tmp_path, [("cat", BIG), ("person", BIG), ("cat", SMALL), ("car", SMALL)])
    task = Clip2SamTask(squares_config(tmp_path), CPU)
    assert task.num_items == 2
    assert [image["file_name"] for image in task.dataset.images] == ["2.png", "4.png"]


def test_losses_are_averaged_over_the_images_used(tmp_path: Path) -> None:
    """An image left without instances (under ``min_mask_area``) does not halve the others'."""
    write_squares(tmp_path, [("person", BIG), ("person", TINY)])
    task = Clip2SamTask(squares_config(tmp_path), CPU)
    with torch.no_grad():
        alone = task.loss(task.trainable, [0], np.random.default_rng(0))
        with_empty = task.loss(task.trainable, [0, 1], np.random.default_rng(0))
    for key in ("loss", "ce", "bce", "dice"):
        assert float(with_empty[key]) == pytest.approx(float(alone[key]), rel=1e-6), key
    assert float(with_empty[USED_ITEMS]) == 1


def test_a_step_that_used_no_image_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights and optimizer state stay as they were (AdamW's momentum and weight decay moved
    them on a zero loss), the step and the schedule pass, and a resume replays the skip."""
    write_squares(tmp_path, [("person", BIG), ("person", TINY)])
    config = squares_config(tmp_path, steps=4, checkpoint_every=2, seed=1)
    firsts = [batch_items(config, s, 0, 0, 1, 2)[0] for s in range(4)]
    assert firsts.count(1) == 2 and firsts[0] == 0  # image 1 (TINY) at two steps, not the first
    trainer = Trainer(config, Clip2SamTask(config, CPU), DistInfo(0, 1, 0, CPU))
    rows = []
    for first in firsts:
        before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
        moments = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
        rows.append(trainer._train_step(False))
        after = trainer.module.state_dict()
        unchanged = all(torch.equal(before[k], after[k]) for k in before)
        assert unchanged == (first == 1)
        if first == 1:
            kept = [s["exp_avg"] for s in trainer.optimizer.state.values()]
            assert all(torch.equal(a, b) for a, b in zip(moments, kept, strict=True))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and trainer.step == 4
    assert [r.get("skipped", 0.0) for r in rows] == [float(f == 1) for f in firsts]
    assert [r["loss"] == 0 for r in rows] == [f == 1 for f in firsts]
    skipped = [s + 1 for s, f in enumerate(firsts) if f == 1]
    err = capsys.readouterr().err
    assert all(
        f"step {s}: no item of this step is left with a training target" in err for s in skipped
    )
    assert trainer.scheduler.last_epoch == 4
    # a run stopped after (skipped) step 2 and resumed ends as an uninterrupted one
    ends = []
    for out, stops in (("whole", [None]), ("parts", [2, None])):
        run = squares_config(tmp_path, steps=4, checkpoint_every=2, seed=1, out=str(tmp_path / out))
        for stop in stops:
            trainer = Trainer(run, Clip2SamTask(run, CPU), DistInfo(0, 1, 0, CPU))
            trainer.train(stop_after=stop)
        ends.append(trainer.module.state_dict())
    assert all(torch.equal(value, ends[1][key]) for key, value in ends[0].items())


def test_a_run_saved_before_the_image_filter_is_refused_by_name(tmp_path: Path) -> None:
    """Its checkpoints counted every annotated image (no ``rule``): the message says why the
    count differs, not "train on the data it was trained on"."""
    write_squares(tmp_path, [("person", BIG), ("cat", BIG)])  # cat: no supervised instance
    config = squares_config(tmp_path, steps=2, checkpoint_every=1)
    Trainer(config, Clip2SamTask(config, CPU), DistInfo(0, 1, 0, CPU)).train(stop_after=1)
    path = Path(config.out) / "checkpoints" / "step_1.pt"
    state = torch.load(path, weights_only=True)
    assert state["data"]["rule"] == Clip2SamTask.data_rule and state["data"]["num_items"] == 1
    state["data"] = {"world": 1, "num_items": 2}  # as the former code saved it
    torch.save(state, path)
    trainer = Trainer(config, Clip2SamTask(config, CPU), DistInfo(0, 1, 0, CPU))
    with pytest.raises(InputError, match="counted num_items=2 by another rule than this ovs"):
        trainer.resume()


class HalfUsedTask:
    """Item 0 is used (loss: the squared output of a linear layer), item 1 is not."""

    num_items = 2

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.trainable = nn.Linear(2, 1)

    def loss(
        self, module: nn.Module, items: list[int], rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        used = float(items == [0])
        return {
            "loss": module(torch.ones(1, 2)).pow(2).mean() * used,
            USED_ITEMS: torch.tensor(used),
        }


def test_a_step_is_the_mean_of_the_micro_batches_that_used_an_item(tmp_path: Path) -> None:
    """With ``grad_accum=2`` and one micro-batch empty, the logged loss and the gradient are
    the used micro-batch's, not half of them."""
    config = TrainConfig(out=str(tmp_path / "run"), steps=1, grad_accum=2, grad_clip=0.0)
    task = HalfUsedTask()
    expected = task.trainable(torch.ones(1, 2)).pow(2).mean()
    wanted = torch.autograd.grad(expected, list(task.trainable.parameters()))
    trainer = Trainer(config, task, DistInfo(0, 1, 0, CPU))
    stepped = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: stepped.append([p.grad.clone() for p in task.trainable.parameters()])
    )
    row = trainer._train_step(False)
    assert row["loss"] == pytest.approx(float(expected.detach()), rel=1e-6)
    assert all(torch.allclose(a, b) for a, b in zip(stepped[0], wanted, strict=True))
