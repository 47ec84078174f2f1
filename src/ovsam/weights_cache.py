"""The on-disk side of the weights cache: where it is, integrity checks and stamps, the lock.

``cache_dir()`` is ``$OVSAM_CACHE_DIR`` or ``~/.cache/ovsam``. A file that passed its size/sha256
check gets a ``NAME.verified`` stamp of its size and mtime, so that it is not hashed again; a
read-only cache simply goes without stamps. Writers of ``NAME`` hold ``NAME.lock``
(:func:`cache_lock`), which also sweeps the temporary files a killed writer left behind.
:func:`remembered_sha256` keeps the digests of files outside the cache (checkpoints a user
names, recorded in every result) under ``digests/``, so that each version is read once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ovsam.errors import InputError, WeightsUnavailableError
from ovsam.fileio import atomic_write_json, fsync_directory, printable
from ovsam.weight_sources import sha256_file


class Checked(Protocol):
    """What an integrity check needs of a weights spec: its size and sha256 (None: unknown)."""

    size: int | None
    sha256: str | None


CACHE_ENV = "OVSAM_CACHE_DIR"


def cache_dir() -> Path:
    """Root of ovsam's cache: ``$OVSAM_CACHE_DIR`` (``~`` expanded) if set and not empty,
    else ``~/.cache/ovsam``. A relative ``$OVSAM_CACHE_DIR`` is an :class:`InputError`
    (it would name a different folder in every working directory)."""
    env = os.environ.get(CACHE_ENV)
    if not env:
        return Path.home() / ".cache" / "ovsam"
    path = Path(env).expanduser()
    if not path.is_absolute():
        raise InputError(f"{CACHE_ENV} must be an absolute path, got {env!r}")
    return path


def integrity_problem(path: Path, spec: Checked) -> str | None:
    """Why ``path`` is not ``spec``'s file (wrong size or sha256), or None when it is."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size {size} bytes, expected {spec.size} (truncated or wrong file)"
    if spec.sha256 is not None:
        got = sha256_file(path)
        if got != spec.sha256:
            return f"sha256 {got}, expected {spec.sha256}"
    return None


def _stamp_file(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def stamp(path: Path) -> str | None:
    """``size:mtime`` of ``path`` (what a stamp records), None when there is no file."""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):  # no file (or the cache is not a folder)
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def has_valid_stamp(path: Path) -> bool:
    """Whether ``path``'s stamp says it was verified as it is now (same size and mtime)."""
    try:
        return _stamp_file(path).read_text() == stamp(path)
    except OSError:
        return False


def write_stamp(path: Path) -> None:
    """Remember that ``path`` verified; skipped silently where the cache is not writable. The
    file's data and name are flushed to disk first: after a crash a stamp never vouches for
    data that was lost."""
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        fsync_directory(path.parent)
        _stamp_file(path).write_text(stamp(path) or "")
    except OSError:
        pass  # read-only cache (or no fsync there): the file is hashed again next time


REMEMBERED_BYTES = 64 * 2**20
"""Files from this size on have their digests remembered (:func:`remembered_sha256`)."""


def _file_version(st: os.stat_result) -> str:
    """Size, mtime, inode and device of a file's ``stat``: another version of the file
    (rewritten, touched, or replaced by a copy, even one keeping the size and mtime) has
    another."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"


def remembered_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``; one of :data:`REMEMBERED_BYTES` or more is hashed
    once per version of it (:func:`_file_version`), its digest kept in ``cache_dir()/digests/``
    under its absolute path, as a ``.verified`` stamp vouches for a download. (Rewriting that
    much takes far longer than the filesystem clock's tick, so a rewrite in place always gets
    another mtime; small files, which could be rewritten within one tick, are hashed each time,
    which is quick.) A cache that cannot be written (or read) means hashing every time."""
    resolved = path.resolve()
    st = resolved.stat()
    if st.st_size < REMEMBERED_BYTES:
        return sha256_file(resolved)
    memo = cache_dir() / "digests" / (hashlib.sha256(os.fsencode(resolved)).hexdigest() + ".json")
    version = _file_version(st)
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved["path"] == printable(str(resolved)) and saved["version"] == version:
            return str(saved["sha256"])
    except (OSError, ValueError, TypeError, KeyError):
        pass  # none yet, or unreadable: hash the file
    digest = sha256_file(resolved)
    if _file_version(resolved.stat()) == version:  # not changed while it was read
        try:
            atomic_write_json(memo, {"path": str(resolved), "version": version, "sha256": digest})
        except OSError:
            pass  # read-only cache
    return digest


def cache_problem(
    path: Path,
    spec: Checked,
    trust_stamp: bool,
    content_check: Callable[[Path], object] | None = None,
) -> str | None:
    """None when the cached ``path`` holds ``spec``'s file, else why not.

    With ``trust_stamp`` a valid stamp is enough; otherwise, or without one, the file is
    checked (hashed; then ``content_check(path)``, when given, must not raise
    :class:`WeightsUnavailableError`) and a stamp written when it passes and the cache is
    writable.
    """
    if not path.is_file():
        return "not downloaded"
    if trust_stamp and has_valid_stamp(path):
        return None
    try:
        problem = integrity_problem(path, spec)
        if problem is None and content_check is not None:
            content_check(path)
    except FileNotFoundError:  # removed meanwhile by a process that found it bad
        return "not downloaded"
    except WeightsUnavailableError as exc:
        problem = str(exc)
    if problem is None:
        write_stamp(path)
    return problem


def say(message: str, progress: bool) -> None:
    if progress:
        print(f"ovsam: {message}", file=sys.stderr)


def _remove_stale_temps(target: Path) -> None:
    """Remove temporary files of ``target`` (``.NAME.XXXX.tmp``, ``.NAME.XXXX.archive.tmp``)
    and pip's temporary folders (``.NAME.XXXX.pip.tmp``).

    Called with ``target``'s lock held: every writer of ``target`` holds that lock for as long
    as its temporary files exist, so any found now were left by a killed process, whatever
    their age. They are never mistaken for good files (only a checked file is renamed).
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[^.]+(\.archive|\.pip)?\.tmp")
    for path in target.parent.iterdir():
        if pattern.fullmatch(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextmanager
def cache_lock(target: Path, progress: bool, why: str = "") -> Iterator[None]:
    """Hold the lock for writing ``target`` (saying once if another process holds it), after
    removing stale temporary files. A cache that cannot be written is a one-line
    :class:`WeightsUnavailableError`, which starts with ``why`` (why a write is needed)."""
    lock_path = target.with_name(target.name + ".lock")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")  # closed by the `with lock` below
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = "is not writable"
        else:
            reason = f"cannot be written ({exc.strerror or exc})"
        raise WeightsUnavailableError(
            f"{why + ', and ' if why else ''}cache folder {target.parent} {reason}: set "
            f"{CACHE_ENV} to a writable folder"
        ) from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process fetching {target.name} (lock {lock_path})", progress)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _remove_stale_temps(target)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
