"""The TorchScript reader on scripted archives and on crafted ones that would loop, recurse or
exhaust memory: each is read as the file declares, or is a one-line CheckpointError."""

from __future__ import annotations

import copyreg
import io
import pickle
import sys
import types
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ovsam.clip.torchscript_reader import read_torchscript_tensors
from ovsam.errors import CheckpointError

_TORCH_MODULE = types.ModuleType("__torch__")


class Module:
    """Pickles as a ``__torch__.Module`` whose state is its attribute dict."""

    def __init__(self, **attributes: object) -> None:
        self.attributes = attributes

    def __reduce_ex__(self, protocol: object) -> tuple:
        return copyreg.__newobj__, (Module,), self.attributes


Module.__module__, Module.__qualname__ = "__torch__", "Module"
_TORCH_MODULE.Module = Module  # type: ignore[attr-defined]


class Tensor:
    """A tensor record over storage ``key`` (``numel`` float32 elements)."""

    def __init__(self, key: str, numel: int, size: tuple, stride: tuple) -> None:
        self.storage, self.size, self.stride = ("storage", key, numel), size, stride

    def __reduce__(self) -> tuple:
        args = (self.storage, 0, self.size, self.stride, False, OrderedDict())
        return torch._utils._rebuild_tensor_v2, args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, tuple) and obj[:1] == ("storage",):
            return "storage", torch.FloatStorage, obj[1], "cpu", obj[2]
        return None


def write_archive(path: Path, top: object, storages: dict[str, bytes]) -> Path:
    """A zip laid out as a TorchScript archive holding ``top`` and the raw ``storages``."""
    buffer = io.BytesIO()
    sys.modules["__torch__"] = _TORCH_MODULE
    try:
        _Pickler(buffer, protocol=2).dump(top)
    finally:
        del sys.modules["__torch__"]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", buffer.getvalue())
        zf.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def test_a_scripted_module_with_list_attributes_is_read(tmp_path: Path) -> None:
    """Scripted (not traced) modules pickle int lists with torch.jit._pickle.build_intlist:
    such archives were refused as holding foreign code."""
    path = tmp_path / "scripted.pt"
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with warnings.catch_warnings():  # torch.jit.script is deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(conv), str(path))
    state = read_torchscript_tensors(path)
    assert set(state) == {"weight", "bias"}
    torch.testing.assert_close(state["weight"], conv.weight.detach())


def test_a_module_containing_itself_is_refused(tmp_path: Path) -> None:
    top = Module(weight=Tensor("0", 1, (1,), (1,)))
    top.attributes["me"] = top
    path = write_archive(tmp_path / "cycle.pt", top, {"0": bytes(4)})
    with pytest.raises(CheckpointError, match="^module me contains itself$"):
        read_torchscript_tensors(path)  # was a RecursionError


def test_a_tree_doubling_at_every_level_is_refused_at_once(tmp_path: Path) -> None:
    """An archive of under 1 kB whose levels each refer to the next twice: 20 levels stood
    for a million tensors, 30 for a billion (it would never finish)."""
    level = Module(weight=Tensor("0", 1, (1,), (1,)))
    for _ in range(20):
        level = Module(a=level, b=level)
    path = write_archive(tmp_path / "doubling.pt", level, {"0": bytes(4)})
    assert path.stat().st_size < 2000
    with pytest.raises(CheckpointError, match="over 100000 in all: not a CLIP model"):
        read_torchscript_tensors(path)


def test_storages_are_read_once_and_only_as_far_as_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One storage viewed by 60 tensors was read 60 times; an entry of 4 MB declared as one
    element was read whole (a zip bomb inflates far more); a stride-0 view of one element
    stood for 4 T elements (``.float()`` then asked for 17 TB)."""
    views = {f"w{i}": Tensor("0", 1, (1,), (1,)) for i in range(60)}
    path = write_archive(tmp_path / "a.pt", Module(**views), {"0": bytes(4 * 2**20)})
    read: list[int] = []
    original = zipfile.ZipExtFile.read

    def counted(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        data = original(self, n)
        if "/data/" in self.name:
            read.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    state = read_torchscript_tensors(path)
    assert len(state) == 60 and len({t.data_ptr() for t in state.values()}) == 1
    assert sum(read) == 4
    wide = Module(weight=Tensor("0", 1, (2**21, 2**21), (0, 0)))
    path = write_archive(tmp_path / "b.pt", wide, {"0": bytes(4)})
    with pytest.raises(CheckpointError, match=r"shape \(2097152, 2097152\) views a storage of 1"):
        read_torchscript_tensors(path)


def test_a_storage_shorter_than_declared_or_an_unreadable_entry_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_archive(tmp_path / "a.pt", Module(w=Tensor("0", 4, (4,), (1,))), {"0": bytes(8)})
    with pytest.raises(CheckpointError, match="holds fewer bytes than its 4 elements"):
        read_torchscript_tensors(path)
    path = write_archive(tmp_path / "b.pt", Module(w=Tensor("0", 2, (2,), (1,))), {"0": bytes(8)})

    def damaged(*args: object, **kwargs: object) -> None:
        raise OSError(22, "Invalid argument")  # what zipfile raises on some damaged entries

    monkeypatch.setattr(zipfile.ZipFile, "open", damaged)
    with pytest.raises(CheckpointError, match="cannot read TorchScript archive .*: OSError"):
        read_torchscript_tensors(path)
