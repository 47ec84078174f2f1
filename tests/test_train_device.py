"""``--device`` of ``ovsam train`` (and every ``init_distributed`` caller): ``cuda:N`` is GPU N in
one process, refused under ``torchrun`` (each process takes GPU ``LOCAL_RANK``), and devices
other than cpu / cuda refused rather than silently replaced by the CPU. CUDA is faked here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovsam.distributed import init_distributed, process_device
from ovsam.errors import InputError
from train_harness import TINY, Train, make_train, one_line_error


@pytest.fixture()
def gpus(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Four fake GPUs; returns the devices ``torch.cuda.set_device`` is given."""
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return chosen


def test_a_single_process_uses_the_gpu_it_is_given(gpus: list[torch.device]) -> None:
    assert init_distributed("cuda:1").device == torch.device("cuda", 1)
    assert gpus == [torch.device("cuda", 1)]
    assert process_device("cuda", 1, 0) == torch.device("cuda", 0)
    assert process_device("auto", 1, 0) == torch.device("cuda", 0)
    assert process_device("cpu", 1, 0) == torch.device("cpu")


def test_torchrun_processes_take_their_local_rank_and_refuse_an_index(
    gpus: list[torch.device],
) -> None:
    assert process_device("cuda", 2, 1) == torch.device("cuda", 1)
    assert process_device("auto", 4, 3) == torch.device("cuda", 3)
    with pytest.raises(InputError, match="--device cuda:1 under torchrun: each process uses GPU"):
        process_device("cuda:1", 2, 0)
    with pytest.raises(InputError, match=r"LOCAL_RANK=4 has no GPU of its own \(4 visible\)"):
        process_device("auto", 8, 4)  # was cuda:4, an invalid device ordinal deep in CUDA


@pytest.mark.parametrize("device", ["mps", "meta", "xpu:0"])
def test_devices_other_than_cpu_and_cuda_are_refused(device: str) -> None:
    with pytest.raises(InputError, match=f"--device {device}: only cpu and cuda"):
        init_distributed(device)


def test_the_cli_refuses_an_index_under_torchrun_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    gpus: list[torch.device],
) -> None:
    train: Train = make_train(tmp_path, monkeypatch, capsys)
    (tmp_path / "images").mkdir()
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = train(*TINY, "steps=2", extra=("--device", "cuda:1"))
    assert code == 2 and "--device cuda:1 under torchrun" in one_line_error(err)
    assert "pass --device cuda" in err and gpus == []
