"""Toy weights for the resolver tests: a small payload, its spec, file sources, a read-only cache."""

from __future__ import annotations

import builtins
import errno
import hashlib
from pathlib import Path

import pytest

import ovsam.weights as weights
import ovsam.weights_cache as weights_cache
from ovsam.weights import UrlSource, WeightsSpec

PAYLOAD = b"weights-bytes " * 1000


def toy_spec(sources: tuple, payload: bytes = PAYLOAD, name: str = "toy") -> WeightsSpec:
    """A spec for ``payload`` (size and sha256 known) stored as ``NAME.bin``."""
    return WeightsSpec(
        name=name,
        filename=f"{name}.bin",
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        sources=sources,
    )


def file_source(path: Path, data: bytes) -> UrlSource:
    """Write ``data`` to ``path`` and return a ``file://`` source serving it."""
    path.write_bytes(data)
    return UrlSource(path.as_uri())


def register(monkeypatch: pytest.MonkeyPatch, *specs: WeightsSpec) -> None:
    """Register ``specs`` for the duration of the test."""
    for spec in specs:
        monkeypatch.setitem(weights._REGISTRY, spec.name, spec)


def forbid_cache_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the cache behave as read-only, even for root: opening a lock file and writing a
    stamp raise PermissionError (as a read-only folder or file system would)."""
    real_open = builtins.open

    def no_lock(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if str(file).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    def no_write(self: Path, *_: object, **__: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(weights_cache, "open", no_lock, raising=False)
    monkeypatch.setattr(Path, "write_text", no_write)
