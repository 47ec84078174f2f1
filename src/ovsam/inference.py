"""Inference without autograd that hands callers ordinary tensors.

:func:`torch.inference_mode` is faster than :func:`torch.no_grad` (no version counters, no
view tracking), but the tensors it makes are *inference tensors*: outside inference mode they
cannot be changed in place (``low_res[low_res < -10] = -10``) nor saved for backward (a probe
trained on image embeddings), where segment-anything's ``no_grad`` outputs can.
:func:`inference_api` runs a public method in inference mode and gives a caller outside it
clones, which are ordinary tensors; calls from inside (ovsam's own) pay nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def ordinary_tensors(value: Any) -> Any:
    """``value`` with every inference tensor in it (in tuples, lists and dataclasses: what the
    decorated methods return) replaced by a clone made outside inference mode, an ordinary
    tensor."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (tuple, list)):
        return type(value)(ordinary_tensors(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: ordinary_tensors(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    return value


def inference_api(fn: F) -> F:
    """Decorate ``fn`` to run under :func:`torch.inference_mode`; when its caller is outside
    inference mode, the tensors it returns are handed over as ordinary tensors
    (:func:`ordinary_tensors`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        return ordinary_tensors(out)

    return wrapper  # type: ignore[return-value]
