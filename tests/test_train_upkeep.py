"""Training runs over time: batch order cost, pruning, lost config, moved data, early refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ovsam.cli.main import main
from ovsam.errors import InputError
from ovsam.train.adapter_run import adapter_source, check_adapter_file, keep_adapter_copy
from ovsam.train.config import TrainConfig
from ovsam.train.engine import batch_items, epoch_order
from train_harness import TINY, Train, one_line_error

pytest_plugins = ("train_harness",)


def test_the_order_of_an_epoch_is_drawn_once_and_is_the_seeded_permutation() -> None:
    """Every micro-batch drew the whole epoch's permutation again: 3.5 s a batch for 11M."""
    config = replace(TrainConfig(), batch_size=4, grad_accum=1, seed=7)
    epoch_order.cache_clear()
    drawn = [batch_items(config, step, 0, rank, 2, 1000) for step in range(100) for rank in (0, 1)]
    assert epoch_order.cache_info().misses == 1  # 800 positions of one epoch
    order = np.random.default_rng([7, 0]).permutation(1000)
    assert sum(drawn, []) == order[:800].tolist()
    assert batch_items(config, 124, 0, 1, 2, 1000) == [*order[996:], *[]]  # the epoch's end
    assert batch_items(config, 125, 0, 0, 2, 1000) == (
        np.random.default_rng([7, 1]).permutation(1000)[:4].tolist()
    )
    with pytest.raises(ValueError, match="read-only"):
        epoch_order(7, 0, 1000)[0] = 1


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))


def test_a_lowered_keep_checkpoints_prunes_at_once(train: Train, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(*TINY, "steps=6")[0] == 0
    assert checkpoints(run) == ["step_2.pt", "step_4.pt", "step_6.pt"]
    code, out, _ = train("keep_checkpoints=1")
    assert code == 0 and "already finished at step 6" in out
    assert checkpoints(run) == ["step_6.pt"]  # as config.json now says
    assert json.loads((run / "config.json").read_text())["keep_checkpoints"] == 1


def test_checkpoints_without_their_config_are_refused(train: Train, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(*TINY, "lr=0.01", "steps=4")[0] == 0
    (run / "config.json").unlink()
    code, _, err = train("steps=8")  # would have trained on with lr=0.0001 recorded
    assert code == 2
    assert "holds checkpoints but no config.json, so the settings they were trained with are " in (
        one_line_error(err)
    )
    assert not (run / "config.json").exists() and checkpoints(run)[-1] == "step_4.pt"


def test_a_moved_data_folder_and_the_teacher_cache_may_change_on_resume(
    train: Train, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(*TINY, "steps=2")[0] == 0
    argv = ["train", "sam2clip", "--data", str(tmp_path / "moved"), "--out", str(run)]
    argv += ["--device", "cpu", "--set=steps=4", "--set=cache_teacher=false"]
    assert main(argv) == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"] == str(tmp_path / "moved") and saved["cache_teacher"] is False
    code, _, err = train("adapter_depth=2")
    assert code == 2 and "adapter_depth (1 -> 2)" in err
    assert "data, keep_checkpoints, log_every, steps may change" in err


def test_distillation_on_no_images_is_refused_before_the_teacher_is_fetched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sam2clip built (offline: failed to download) a 2.4 GB ViT teacher first."""
    monkeypatch.setattr(
        "ovsam.train.sam2clip_task.build_model", lambda *a, **k: pytest.fail("teacher built")
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "empty.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    argv = ["train", "sam2clip", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "r")]
    argv += ["--annotations", str(tmp_path / "empty.json"), "--set=teacher=sam_vit_h"]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"nothing to train on: {tmp_path / 'empty.json'} holds no training items" in err


def test_the_run_copy_of_its_adapter_is_read_once_the_run_has_trained(tmp_path: Path) -> None:
    gone = tmp_path / "sam2clip" / "checkpoints" / "step_2.pt"
    config = replace(TrainConfig(), out=str(tmp_path / "run"), adapter_checkpoint=str(gone))
    copy = tmp_path / "run" / "adapter.pt"
    with pytest.raises(InputError, match="its run deletes older ones when keep_checkpoints"):
        check_adapter_file(config)
    keep_adapter_copy(config, {"w": torch.ones(2)}, resumed=False)
    assert adapter_source(config) == str(gone)  # not trained: a restart may take another
    with pytest.raises(InputError, match="no such file"):
        check_adapter_file(config)
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "latest.json").write_text('{"file": "step_1.pt"}')
    assert adapter_source(config) == str(copy)
    check_adapter_file(config)  # the run has its copy
    keep_adapter_copy(config, {"w": torch.zeros(2)}, resumed=True)  # kept on resume
    assert torch.equal(torch.load(copy, weights_only=True)["w"], torch.ones(2))
    keep_adapter_copy(config, {"w": torch.zeros(2)}, resumed=False)  # replaced at a new start
    assert torch.equal(torch.load(copy, weights_only=True)["w"], torch.zeros(2))
