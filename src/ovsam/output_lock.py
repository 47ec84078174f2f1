"""One ``ovsam`` command at a time writing into an output folder.

``everything``, ``train`` and ``eval`` resume from what their ``--out`` holds; two of them
writing into the same folder at once would interleave their files (two trainers rotating one
run's checkpoints, two evaluations appending to one records file). :func:`output_lock` holds
``--out/.ovsam.lock`` (``flock``) while a command writes: a second command is refused at once,
naming the first. The lock goes with its process, however that ends; the lock file is removed
at the end. Without ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ovsam.errors import InputError

LOCK_FILE = ".ovsam.lock"


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str, holder: bool = True) -> Iterator[None]:
    """Hold ``folder``'s lock while ``ovsam command`` writes into it (made if missing, and
    removed again at the end when it is still empty then). :class:`InputError` naming the
    holder when another process holds it. With ``holder`` False (a ``torchrun`` rank other
    than 0: rank 0 holds it for the job) nothing is held."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows)
        fcntl = None
    if fcntl is None or not holder:
        yield
        return
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _locked(path, fcntl)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"ovsam {command} (pid {os.getpid()})".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: see _locked
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty: results were written
                folder.rmdir()


def _locked(path: Path, fcntl: object) -> int:
    """A descriptor of ``path`` holding its exclusive lock.

    A holder removes the file before it lets go, so a process that opened it before that
    gets a lock on a file no longer at ``path``: it then opens ``path`` again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            raise InputError(
                f"{path.parent} is in use by {holder or 'another ovsam command'}: wait for it "
                "to end, or choose another --out"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)
