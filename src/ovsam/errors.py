"""Exceptions raised by ovsam.

Every error a user can cause (bad image, bad prompt, wrong checkpoint, missing weights)
is an :class:`OVSamError` subclass with a message that names the problem, so callers
(CLI, HTTP API) can report it without a traceback from deep inside torch.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, stripped ('' for an empty message): enough to say
    why a library call failed without its multi-line advice or traceback."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


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
