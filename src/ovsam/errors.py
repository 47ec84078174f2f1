"""Exceptions raised by ovsam.

Every error a user can cause (bad image, bad prompt, wrong checkpoint, missing weights)
is an :class:`OVSamError` subclass with a message that names the problem, so callers
(CLI, HTTP API) can report it without a traceback from deep inside torch.
"""

from __future__ import annotations


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
