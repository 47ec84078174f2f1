"""On a CUDA device: one distillation step set at bf16 with the official adapter size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.distributed import DistInfo
from ovsam.train.config import TrainConfig
from ovsam.train.engine import Trainer
from ovsam.train.sam2clip_task import Sam2ClipTask


@pytest.mark.gpu
def test_bf16_distillation_on_cuda(tmp_path: Path, mobilesam_checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i}.png"
        )
    config = TrainConfig(
        data=str(tmp_path / "images"),
        out=str(tmp_path / "run"),
        steps=6,
        lr=1e-3,
        random_clip=True,
        log_every=1,
        checkpoint_every=3,
    )
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    rows = Trainer(config, Sam2ClipTask(config, device), DistInfo(0, 1, 0, device)).train()
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    assert torch.cuda.max_memory_allocated() < 40 * 2**30
