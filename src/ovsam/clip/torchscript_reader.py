"""Read the tensors of a TorchScript archive (OpenAI's released CLIP ``.pt`` files) without
executing any of its code.

A TorchScript file is a zip archive: ``<root>/data.pkl`` pickles the module tree (objects of
``__torch__.*`` classes whose state is a dict of attributes) and ``<root>/data/<key>`` hold the
raw storages. :func:`read_torchscript_tensors` unpickles ``data.pkl`` with an allow-list (the
module classes become inert records, tensors are rebuilt from the raw bytes; any other global is
refused) and flattens the tree into ``{"visual.conv1.weight": tensor, ...}``. Unlike
``torch.jit.load`` nothing in the archive's ``code/`` is compiled or run.
"""

from __future__ import annotations

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
    return storage.as_strided(tuple(size), tuple(stride), offset)


# What reading an archive whose pickles or storages are cut short or inconsistent raises.
_DAMAGED = (
    zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError,
    AttributeError, IndexError, RuntimeError,
)  # fmt: skip


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Dtype(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        raise CheckpointError(
            f"TorchScript archive refers to {module}.{name}, which is not a module or tensor "
            "record; refusing to load it"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        _, kind, key, _location, numel = pid
        raw = bytearray(self.archive.read(f"{self.root}data/{key}"))
        flat = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
        return flat[:numel]


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in obj.attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out)


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
    out: dict[str, torch.Tensor] = {}
    _flatten(top, "", out)
    return out
