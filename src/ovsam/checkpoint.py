"""Strict, safe checkpoint loading shared by every model family.

All checkpoints are read with ``torch.load(..., weights_only=True)``: no pickled code is
executed. Loading is strict: a missing or unexpected key is a :class:`CheckpointError`
that names the keys, so a checkpoint for the wrong model is reported plainly.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ovsam.errors import CheckpointError, first_line

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_NESTED_KEYS = ("state_dict", "model", "module")
_MAX_KEYS_IN_MESSAGE = 12
# torch.load(weights_only=True) puts the reason after this in its UnpicklingError.
_WEIGHTS_ONLY_MARKER = "WeightsUnpickler error:"
# How torch.save files begin: a zip archive (since torch 1.6) or a pickle (protocol >= 2).
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_MAGIC = (_ZIP_MAGIC, b"\x80")
# The ``torch.nn.init`` functions modules draw their random initial values with, and the
# torch modules that import some of them by name.
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
    "sparse_",
)  # fmt: skip
_INIT_IMPORTERS = ("torch.nn.init", "torch.nn.modules.activation")
_SKIPPING = threading.local()  # ``depth``: weights_to_be_loaded contexts open in this thread
_PATCH_LOCK = threading.Lock()
_PATCHES: dict[tuple[str, str], Callable[..., torch.Tensor]] = {}  # (module, name) -> original
_OPEN = [0]  # weights_to_be_loaded contexts open in any thread


def read_state_dict(
    path: str | Path, *, mmap: bool = False, what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from ``path`` (``.pt``/``.pth``/``.bin`` or ``.safetensors``).

    A dict wrapping the weights under ``state_dict``, ``model`` or ``module`` is unwrapped.
    With ``mmap`` a zip-format file (what ``torch.save`` writes since torch 1.6) is memory-mapped
    rather than read, so that looking at its keys and shapes costs little even for a large
    file; an older pickle-format file is read as usual. Raises :class:`CheckpointError` when
    the file is missing, a folder, empty, unreadable or not a state dict (:func:`checkpoint_file`),
    naming it as ``what`` (e.g. ``"CLIP weights"``).
    """
    path = checkpoint_file(path, what)
    if is_torchscript_archive(path):  # before torch.load, which warns that it would run it
        raise _torchscript_given(path, what)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            mmap = mmap and _head(path).startswith(_ZIP_MAGIC)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        raise read_failure(path, exc, what) from exc
    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def looks_like_path(text: str) -> bool:
    """Whether ``text`` reads as a file path rather than a weights name: it has a folder
    separator, starts with ``~`` or ends in a checkpoint suffix (:data:`CHECKPOINT_SUFFIXES`)."""
    separators = (os.sep, os.altsep) if os.altsep else (os.sep,)
    return (
        any(sep in text for sep in separators)
        or text.startswith("~")
        or text.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def checkpoint_file(path: str | Path, what: str = "checkpoint") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a non-empty file; otherwise a one-line
    :class:`CheckpointError` naming the file as ``what``: ``checkpoint file not found: X``,
    ``checkpoint X is a folder`` or ``checkpoint X is empty``."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder")
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty")
    return path


def is_torchscript_archive(path: str | Path) -> bool:
    """True when ``path`` is a zip archive laid out as a TorchScript module (such as OpenAI's
    CLIP releases), which ``torch.load(weights_only=True)`` refuses."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return False  # a damaged archive (a member name not UTF-8...): its reader names it
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _torchscript_given(path: Path, what: str = "checkpoint") -> CheckpointError:
    return CheckpointError(
        f"{what} {path} is a TorchScript archive (a whole scripted model, such as an "
        "OpenAI CLIP release), not a state dict of weights"
    )


def _head(path: Path) -> bytes:
    """The first 16 bytes of the file at ``path`` (enough to tell its format)."""
    with open(path, "rb") as fh:
        return fh.read(16)


def read_failure(path: Path, exc: Exception, what: str = "checkpoint") -> CheckpointError:
    """Why reading ``path`` (named as ``what``) failed with ``exc``, as a one-line
    :class:`CheckpointError`.

    torch's own text advises ``weights_only=False``, which would run the file's pickled code;
    that advice is dropped and the reason kept. A ``.pt``-style file that is neither a zip
    archive nor a pickle (what ``torch.save`` writes) is named as not a PyTorch checkpoint,
    rather than by the unpickler's accidental error (``KeyError: 101`` for a text file).
    """
    detail = str(exc).partition(_WEIGHTS_ONLY_MARKER)[2].strip()
    if not detail:
        if is_torchscript_archive(path):
            return _torchscript_given(path, what)
        head = _head(path)
        if path.suffix != ".safetensors" and not head.startswith(_TORCH_MAGIC):
            return CheckpointError(
                f"{what} {path} is not a PyTorch checkpoint (neither a zip archive nor a "
                f"pickle: it starts with {head!r})"
            )
        return CheckpointError(
            f"cannot read {what} {path}: {type(exc).__name__}: {first_line(exc)}"
        )
    reason = detail.splitlines()[0].split(" was not an allowed global")[0].strip()
    if reason.startswith("Unsupported global"):
        why = (
            f"it pickles Python objects besides tensors ({reason}); only plain state dicts "
            "are read, safely (weights_only=True): save one with "
            "torch.save(model.state_dict(), path)"
        )
    else:
        why = f"not a PyTorch checkpoint, or a corrupt one ({reason})"
    return CheckpointError(f"cannot read {what} {path}: {why}")


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f", ... (+{more} more)" if more > 0 else "")


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """How ``state_dict`` fails to fit ``model`` exactly, or None when every key and shape
    matches: the missing keys, unexpected keys and shape mismatches, each counted and named
    (the first few), ``; ``-separated. Only keys and shapes are compared, so ``model`` may
    live on the ``meta`` device."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_format_keys(mismatched)}")
    return "; ".join(problems) or None


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> int:
    """Load ``state_dict`` into ``model`` requiring an exact key and shape match.

    Returns the number of tensors loaded. Raises :class:`CheckpointError` naming the
    missing keys, unexpected keys and shape mismatches (``source`` names the file), or the
    first tensor holding NaN (infinities are kept: masks use them).
    """
    mismatch = state_dict_mismatch(model, state_dict)
    if mismatch is not None:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__} (wrong checkpoint for this model?): "
            + mismatch
        )
    damaged = next(
        (k for k, v in state_dict.items() if v.is_floating_point() and bool(v.isnan().any())),
        None,
    )
    if damaged is not None:
        raise CheckpointError(
            f"{source}: tensor {damaged} holds NaN values (a damaged file, or weights of a "
            "training run that diverged)"
        )
    model.load_state_dict(state_dict, strict=True)
    return len(state_dict)


def _skippable(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``original`` (an ``nn.init`` function), except in a thread inside
    :func:`weights_to_be_loaded`, where the tensor is left as it is."""

    def init_unless_loading(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if getattr(_SKIPPING, "depth", 0):
            return tensor
        return original(tensor, *args, **kwargs)

    return init_unless_loading


@contextmanager
def weights_to_be_loaded() -> Iterator[None]:
    """Build, inside, a model whose every parameter and persistent buffer a strict load then
    overwrites.

    In this thread the ``torch.nn.init`` functions (also as ``torch.nn.modules.activation``
    imports them) leave tensors as they are, so parameters keep the uninitialised memory they
    were allocated with instead of being drawn at random and overwritten: drawing them is most
    of building a model (about 2 s of 2.4 for CLIP RN50x16 on two CPU cores). Other threads
    draw as usual meanwhile; values computed otherwise (buffers such as position indices or
    masks) are built as usual. Only for a load that covers the whole state dict
    (:func:`load_state_dict_strict`).
    """
    import importlib

    with _PATCH_LOCK:
        if _OPEN[0] == 0:
            for module_name in _INIT_IMPORTERS:
                module = importlib.import_module(module_name)
                for name in _INIT_FUNCTIONS:
                    if hasattr(module, name):
                        _PATCHES[module_name, name] = getattr(module, name)
                        setattr(module, name, _skippable(getattr(module, name)))
        _OPEN[0] += 1
    _SKIPPING.depth = getattr(_SKIPPING, "depth", 0) + 1
    try:
        yield
    finally:
        _SKIPPING.depth -= 1
        with _PATCH_LOCK:
            _OPEN[0] -= 1
            if _OPEN[0] == 0:
                for (module_name, name), original in _PATCHES.items():
                    setattr(importlib.import_module(module_name), name, original)
                _PATCHES.clear()
