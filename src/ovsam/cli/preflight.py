"""Checks of a command's ``--device`` and ``--out`` before any model is loaded.

A bad device, an output path that cannot be written, or an input image that the outputs
would replace is reported in one line (exit 2) at once, rather than as a traceback (or lost
input) after minutes of work. Nothing is created here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ovsam.errors import InputError

# Commands whose ``--out`` is a file; for the others it is a folder.
FILE_OUTPUT_COMMANDS = frozenset({"export-onnx"})


def check_device(name: str) -> None:
    """Raise :class:`InputError` unless ``name`` is a torch device usable here (or ``auto``)."""
    if name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r} (expected cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU found"
            raise InputError(f"device {name!r}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name!r}: MPS is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {name!r} is not supported (expected cpu, cuda or mps)")


def check_output(path: Path, is_file: bool) -> None:
    """Raise :class:`InputError` when ``path`` cannot become the output folder (or file).

    Checks that ``path`` is not a file where a folder is wanted (or the reverse), that
    neither a folder ``path`` nor any folder above it is a link to nothing (a missing target
    or a loop: creating it fails), that no part of its parent is a file, and that its nearest
    existing folder is writable.
    """
    what = "output file" if is_file else "output folder"
    for part in path.parents if is_file else (path, *path.parents):
        if part.is_symlink() and not part.exists():
            raise InputError(
                f"cannot create {what} {path}: {part} is a link to a missing target (or a "
                "loop of links)"
            )
    if path.exists() and path.is_dir() == is_file:
        kind = "a folder" if is_file else "a file"
        raise InputError(f"{what} {path} is {kind}")
    parent = path.parent if is_file or not path.exists() else path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create {what} {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create {what} {path}: {parent} is not writable")


def written_files(command: str) -> tuple[str, ...]:
    """Names of the files ``command`` writes directly into its ``--out`` folder for one image."""
    if command == "segment":
        from ovsam.outputs import RESULT_FILES

        return tuple(RESULT_FILES.values())
    if command == "everything":
        from ovsam.cli.everything_jobs import OVERLAY_FILE, RESULT_FILE, SETTINGS_FILE

        return (OVERLAY_FILE, RESULT_FILE, SETTINGS_FILE)
    return ()


def check_input_kept(image: Path, out: Path, names: tuple[str, ...]) -> None:
    """Raise :class:`InputError` when the input ``image`` is one of the files ``names`` that
    the command would write (or remove) in ``out``: its output would replace its input."""
    if not image.is_file():
        return
    for name in names:
        target = out / name
        if target.is_file() and os.path.samefile(image, target):
            raise InputError(
                f"the input image {image} is {target}, which the results would replace: choose "
                "another --out"
            )


def preflight(args: argparse.Namespace) -> None:
    """Check the parsed ``--device`` and ``--out`` of any command that has them (and that an
    input image is not among the files written to ``--out``). ``--device auto`` becomes
    ``cuda`` when a GPU is there, else ``cpu`` (``train`` and ``eval`` place each ``torchrun``
    process themselves)."""
    device = getattr(args, "device", None)
    if isinstance(device, str):
        check_device(device)
        if device == "auto" and args.command not in ("train", "eval"):
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
    out = getattr(args, "out", None)
    if isinstance(out, Path):
        check_output(out, args.command in FILE_OUTPUT_COMMANDS)
        image = getattr(args, "image", None)
        if isinstance(image, Path):
            check_input_kept(image, out, written_files(args.command))
