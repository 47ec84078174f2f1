"""Read the tensors of a TorchScript archive (OpenAI's released CLIP ``.pt`` files) without
executing any of its code.

A TorchScript file is a zip archive: ``<root>/data.pkl`` pickles the module tree (objects of
``__torch__.*`` classes whose state is a dict of attributes) and ``<root>/data/<key>`` hold the
raw storages. :func:`read_torchscript_tensors` unpickles ``data.pkl`` with an allow-list (the
module classes become inert records, tensors are rebuilt from the raw bytes; any other global is
refused) and flattens the tree into ``{"visual.conv1.weight": tensor, ...}``. Unlike
``torch.jit.load`` nothing in the archive's ``code/`` is compiled or run.

A crafted archive cannot make it loop or exhaust memory beyond what the file declares: each
storage is read once (however many tensors view it) and only as many bytes as its record
declares, a tensor may not view more elements than its storage holds (a stride-0 view of a few
bytes could stand for terabytes), and the module tree may not contain itself, be deeper than
:data:`MAX_DEPTH` or hold more than :data:`MAX_MODULES` modules or :data:`MAX_TENSORS`
tensors (a tree whose every level refers to the next twice doubles at each level). All of these are :class:`CheckpointError`.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ovsam.errors import CheckpointError, first_line

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "BoolStorage": torch.bool,
    "ByteStorage": torch.uint8,
}


# Far beyond any real model (OpenAI's largest CLIP has about 400 tensors, 10 levels deep).
MAX_TENSORS = 100_000
MAX_MODULES = 100_000
MAX_DEPTH = 100


def _same(data: Any, *_: Any) -> Any:
    """``torch.jit._pickle``'s list builders and type tags: they return their data."""
    return data


# What scripted (not only traced) modules pickle their list attributes with.
_JIT_PICKLE = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist",
               "restore_type_tag"}  # fmt: skip


class _ScriptObject:
    """Inert stand-in for a ``__torch__.*`` module: keeps the pickled attribute dict."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["attributes"] = state if isinstance(state, dict) else {}


class _Dtype:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any
) -> torch.Tensor:
    if math.prod(size) > storage.numel():  # a weight never views an element twice
        raise ValueError(
            f"a tensor of shape {tuple(size)} views a storage of {storage.numel()} elements"
        )
    return storage.as_strided(tuple(size), tuple(stride), offset)


# What reading an archive whose pickles or storages are cut short or inconsistent raises
# (OSError: zipfile on a damaged entry; NotImplementedError: an unknown zip feature).
_DAMAGED = (
    zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError,
    AttributeError, IndexError, RuntimeError, OSError, NotImplementedError,
)  # fmt: skip


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Dtype(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch.jit._pickle" and name in _JIT_PICKLE:
            return _same
        raise CheckpointError(
            f"TorchScript archive refers to {module}.{name}, which is not a module or tensor "
            "record; refusing to load it"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        _, kind, key, _location, numel = pid
        if key not in self.storages:  # read once, however many tensors view it
            self.storages[key] = self._storage(f"{self.root}data/{key}", kind.dtype, numel)
        return self.storages[key]

    def _storage(self, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """The ``numel`` elements of storage ``name``: only the bytes its record declares are
        read (an entry that inflates to far more cannot exhaust memory)."""
        size = numel * torch.empty(0, dtype=dtype).element_size()
        if self.archive.getinfo(name).file_size < size:
            raise ValueError(f"storage {name} holds fewer bytes than its {numel} elements")
        raw = bytearray(size)
        with self.archive.open(name) as fh:
            if fh.readinto(raw) != size:
                raise EOFError(f"storage {name} is cut short")
        return torch.frombuffer(raw, dtype=dtype) if size else torch.empty(0, dtype=dtype)


def _flatten(top: _ScriptObject) -> dict[str, torch.Tensor]:
    """The tensors of the module tree under ``top`` by dotted name (see the module docstring
    for the limits)."""
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[_ScriptObject, str, tuple[int, ...]]] = [(top, "", ())]
    visits = 0
    while stack:
        obj, prefix, parents = stack.pop()  # parents: ids of the modules above obj
        visits += 1
        if id(obj) in parents:
            raise CheckpointError(f"module {prefix.rstrip('.')} contains itself")
        if len(parents) >= MAX_DEPTH or visits > MAX_MODULES:
            raise CheckpointError(
                f"modules nested over {MAX_DEPTH} deep or over {MAX_MODULES} in all: not a "
                "CLIP model"
            )
        children = []
        for name, value in obj.attributes.items():
            if isinstance(value, torch.Tensor):
                if len(out) >= MAX_TENSORS:
                    raise CheckpointError(f"more than {MAX_TENSORS} tensors: not a CLIP model")
                out[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                children.append((value, f"{prefix}{name}.", (*parents, id(obj))))
        stack.extend(reversed(children))
    return out


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensor attributes of the module pickled in a TorchScript archive, by dotted name.

    Besides parameters and buffers this includes plain tensor attributes (OpenAI's models
    carry ``attn_mask``, ``input_resolution``, ``context_length`` and ``vocab_size``); callers
    drop the names their model does not expect. Raises :class:`CheckpointError` on a file that
    is not such an archive.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if not pickles:
                raise CheckpointError(f"{path} has no data.pkl: not a TorchScript archive")
            root = pickles[0][: -len("data.pkl")]
            with zf.open(pickles[0]) as fh:
                top = _Unpickler(fh, zf, root).load()
    except _DAMAGED as exc:  # a damaged archive: records that do not fit their storages
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        raise CheckpointError(f"cannot read TorchScript archive {path}: {reason}") from exc
    if not isinstance(top, _ScriptObject):
        raise CheckpointError(f"{path}: data.pkl does not hold a module")
    return _flatten(top)
