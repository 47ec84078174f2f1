"""Atomic file writes: results are never left half-written.

Data is written to a temporary file in the destination folder, flushed and renamed over the
target in one step (``os.replace``), so a reader sees either the old file or the new one;
:func:`fsync_directory` then makes the rename itself durable when later steps depend on it.
The file gets the permissions a plain ``open`` would give (an existing file keeps its own).
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import, rather than racing other threads at every write.
_UMASK = _umask()


def _new_file_mode(target: Path) -> int:
    """Permission bits for a new ``target``: an existing file's own, else ``0666 & ~umask``
    (what ``open`` would give)."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _naming_target(exc: OSError, target: Path) -> OSError:
    """``exc`` (same errno, so the same ``OSError`` subclass) naming ``target`` as its file;
    ``exc`` itself when it has no errno (its message is all it says)."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(target))


# File names take at most 255 bytes on most file systems: the temporary name (".NAME." + 8
# random characters + ".tmp") shortens NAME to this many bytes.
_TEMPORARY_NAME_BYTES = 200


def _short_name(name: str) -> str:
    """``name``, cut to :data:`_TEMPORARY_NAME_BYTES` bytes when longer."""
    raw = os.fsencode(name)
    return name if len(raw) <= _TEMPORARY_NAME_BYTES else os.fsdecode(raw[:_TEMPORARY_NAME_BYTES])


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    On an exception the temporary file is removed and ``target`` is left untouched. When the
    temporary file cannot be made or renamed over ``target`` (e.g. ``target`` is a folder, or
    its folder is not writable), or cannot be written (the disk is full), the ``OSError``
    names ``target``, not the temporary file (or no file).
    ``target`` gets the umask's permissions (an old file's, when it replaces one), also when
    the caller's writer replaced the temporary file (safetensors' ``save_file`` makes a new
    0600 one). A ``target`` that is a symbolic link is written through, as ``open`` would:
    the file it points to is replaced, the link stays.
    """
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{_short_name(target.name)}.", suffix=".tmp", dir=target.parent
        )
    except OSError as exc:
        raise _naming_target(exc, target) from exc
    mode = _new_file_mode(target)
    os.fchmod(fd, mode)  # mkstemp makes 0600 files
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as exc:  # writing the temporary file failed, e.g. the disk is full
            if exc.filename in (None, str(tmp)):
                raise _naming_target(exc, target) from exc
            raise
        try:
            os.chmod(tmp, mode)  # the writer may have replaced the file
            os.replace(tmp, target)
        except OSError as exc:
            raise _naming_target(exc, target) from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(target: str | Path, writer: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``writer(binary_file)`` on a temporary file and atomically move it to ``target``."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)


def fsync_directory(folder: str | Path) -> None:
    """Flush ``folder``'s own entries to disk (``fsync`` of the folder), so that the files
    renamed into it (:func:`atomic_write`) survive a crash before anything depends on them,
    e.g. before older copies are deleted. A no-op where folders cannot be opened (Windows) or
    the file system does not sync them."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    return atomic_write(target, lambda fh: fh.write(data))


def printable(text: str) -> str:
    """``text`` with what UTF-8 cannot hold escaped: the bytes of a file name that are not
    UTF-8 (lone surrogates, as ``os`` decodes them) as ``\\xNN``; in a string that also holds
    other lone surrogates, every one as ``\\udNNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(obj: Any) -> Any:
    """``obj`` (dicts, lists and tuples) as :func:`atomic_write_json` writes it: NaN or
    infinite floats as None, every string :func:`printable`, tuples as lists. Compare a value
    with one read back from such a file in this form."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented UTF-8 JSON. NaN and infinite floats are written as ``null``
    (standard JSON has no such numbers, and strict parsers refuse Python's ``NaN`` /
    ``Infinity``), and strings UTF-8 cannot hold, such as a file name that is not UTF-8,
    :func:`printable`."""
    dumps = {"indent": 2, "ensure_ascii": False, "allow_nan": False}
    try:
        return (json.dumps(obj, **dumps) + "\n").encode("utf-8")
    except ValueError as exc:  # UnicodeEncodeError is one too
        if not isinstance(exc, UnicodeEncodeError) and "Out of range float" not in str(exc):
            raise  # e.g. a circular reference
        return (json.dumps(json_safe(obj), **dumps) + "\n").encode("utf-8")


def atomic_write_json(target: str | Path, obj: Any) -> Path:
    """Write ``obj`` to ``target`` atomically, as :func:`json_bytes` spells it."""
    return atomic_write_bytes(target, json_bytes(obj))


def atomic_write_set(files: dict[Path, bytes]) -> None:
    """Write several files as one set; the last one marks it complete (e.g. ``result.json``).

    Every file is first written to a temporary file beside it and flushed to disk. Only when
    all are written is the old marker removed and are the temporary files renamed over their
    targets, in order, the marker last. A failed write (a full disk) leaves every target as it
    was, and its ``OSError`` names the file that failed; a crash during the renames leaves no
    marker beside files of another set."""
    targets = list(files)
    with ExitStack() as stack:  # exits in reverse: the first target is renamed first
        staged = {t: stack.enter_context(atomic_path(t)) for t in reversed(targets)}
        for target, tmp in staged.items():
            try:
                with open(tmp, "wb") as fh:
                    fh.write(files[target])
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise _naming_target(exc, target) from exc
        Path(os.path.realpath(targets[-1])).unlink(missing_ok=True)
