"""CLIP2SAM under DDP: two gloo ranks (``mp.spawn``, as ``test_training``'s DDP test) train the
real task on the tiny stand-ins of ``train_clip2sam_stubs``.

- ``batch_size=2`` with a big and a small square in each micro-batch: their regions pool from
  FPN levels 3 and 0 (two module calls per backward broke DDP: "marked as ready twice");
- ``batch_size=1`` on a big square and two under ``min_mask_area``: at every step at least one
  rank's image is left without instances (that rank skipped DDP's forward, and the collectives
  fell out of step), and at some steps both are (the step is skipped on both ranks alike).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ovsam.train.config import TrainConfig
from ovsam.train.engine import batch_items
from train_clip2sam_stubs import (
    BIG,
    SMALL,
    TINY,
    install_tiny_clip2sam,
    squares_config,
    write_squares,
)

SEED = 0  # batch_size=1: the big square goes to rank 1 at step 1, to none at 2, to rank 0 at 3


def _trained_on(config: TrainConfig, step: int) -> list[bool]:
    """Whether each rank's image of ``step`` is the big square (item 0) when ``batch_size=1``."""
    return [batch_items(config, step, 0, rank, 2, 3) == [0] for rank in range(2)]


def _rank(rank: int, store: str, root: str) -> None:
    """One of two gloo ranks: trains both runs, and saves its final weights of each."""
    import torch.distributed as dist

    from ovsam.distributed import DistInfo
    from ovsam.train.clip2sam_task import Clip2SamTask
    from ovsam.train.engine import Trainer

    torch.set_num_threads(1)  # two ranks on a small machine
    install_tiny_clip2sam(setattr)
    # a file rendezvous: a port picked free beforehand can be taken by another test meanwhile
    dist.init_process_group(
        "gloo", f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        for name, fields in (
            ("levels", {"batch_size": 2, "steps": 2}),
            ("empty", {"batch_size": 1, "steps": 3, "seed": SEED}),
        ):
            config = squares_config(Path(root) / name, checkpoint_every=3, **fields)
            info = DistInfo(rank, 2, rank, torch.device("cpu"))
            trainer = Trainer(config, Clip2SamTask(config, info.device), info)
            trainer.train()
            torch.save(trainer.module.state_dict(), Path(root) / name / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_clip2sam_trains_under_ddp_with_mixed_levels_and_empty_micro_batches(
    tmp_path: Path,
) -> None:
    write_squares(tmp_path / "levels", [("person", BIG), ("person", SMALL)])
    write_squares(tmp_path / "empty", [("person", BIG), ("person", TINY), ("person", TINY)])
    config = squares_config(tmp_path / "empty", batch_size=1, seed=SEED)
    trained = [_trained_on(config, step) for step in range(3)]
    assert all(sum(ranks) <= 1 for ranks in trained) and trained[1] == [False, False]
    assert sum(map(sum, trained)) == 2  # steps 1 and 3: one rank empty, the other trains
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for name, steps in (("levels", 2), ("empty", 3)):
        run = tmp_path / name
        rows = [json.loads(line) for line in (run / "run" / "log.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == list(range(1, steps + 1))
        weights = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in range(2)]
        assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())  # in step
    assert [row.get("skipped", 0.0) for row in rows] == [0.0, 1.0, 0.0]
    assert rows[1]["loss"] == 0 and rows[0]["loss"] > 0 and rows[2]["loss"] > 0
