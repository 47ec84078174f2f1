"""Exceptions raised by ovsam.

Every error a user can cause (bad image, bad prompt, wrong checkpoint, missing weights)
is an :class:`OVSamError` subclass with a message that names the problem, so callers
(CLI, HTTP API) can report it without a traceback from deep inside torch.
"""

from __future__ import annotations

import re
import sys


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, stripped ('' for an empty message): enough to say
    why a library call failed without its multi-line advice or traceback."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


# How torch's CPU allocator says an allocation failed (a plain RuntimeError).
_CPU_ALLOCATOR_FAILURE = "DefaultCPUAllocator: can't allocate memory"
_ALLOCATION_SIZE = re.compile(r"tried to allocate (\d[\d.]* ?[A-Za-z]+)", re.IGNORECASE)


def out_of_memory_line(exc: BaseException) -> str | None:
    """One line saying that memory ran out, when ``exc`` says so, else None.

    Recognises Python's ``MemoryError``, ``torch.OutOfMemoryError`` (CUDA and other
    accelerators) and the CPU allocator's ``RuntimeError``; names the size asked for when the
    message gives it. Imports no torch (a torch error implies torch is loaded).
    """
    torch_oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", MemoryError)
    if not (
        isinstance(exc, (MemoryError, torch_oom))
        or (isinstance(exc, RuntimeError) and _CPU_ALLOCATOR_FAILURE in str(exc))
    ):
        return None
    kind = "GPU memory" if "CUDA" in str(exc) else "memory"
    size = _ALLOCATION_SIZE.search(str(exc))
    asked = f" (asked for {size.group(1)} more)" if size else ""
    return (
        f"ran out of {kind}{asked}: use smaller images, fewer prompts or a smaller batch,"
        " or close other programs"
    )


class OVSamError(Exception):
    """Base class of every error ovsam raises on purpose."""


class InputError(OVSamError, ValueError):
    """Bad user input: unreadable image, prompt outside the image, empty vocabulary, NaN."""


class CheckpointError(OVSamError):
    """A checkpoint file does not fit the model it is loaded into (missing/unexpected keys...)."""


class WeightsUnavailableError(OVSamError):
    """Weights could not be obtained from any source (each source tried is listed)."""


class NotReadyError(OVSamError, RuntimeError):
    """An operation was called out of order, e.g. ``predict`` before ``set_image``."""


class TrainingDivergedError(OVSamError, RuntimeError):
    """A training loss became NaN or infinite; the weights were left as they were."""
