"""Checks of plain values that both predictor tiers take: flags, counts and mask-prompt logits.

Each raises :class:`~ovsam.errors.InputError` naming the value; the numpy tier's prompts are
checked in :mod:`ovsam.prompt_arrays`, the tensor tier's in :mod:`ovsam.prompt_tensors`.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from ovsam.errors import InputError

#: Largest magnitude a mask prompt's logits may have. SAM's own stay within about +-100; far
#: larger values overflow the mask encoder's float32 LayerNorm into NaN.
MASK_LOGIT_LIMIT = 1e6


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool: only ``True`` / ``False`` (numpy's too), so that a string such as
    "no" or a number is refused rather than judged by its truthiness."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_count(name: str, value: object) -> int:
    """``value`` as an int >= 1 (numpy's integers too; a bool, a float or text is refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_mask_logits(name: str, dtype_name: str, integer: bool, largest: float) -> None:
    """Refuse mask logits of an ``integer`` dtype (a 0/1 or 0/255 mask is not logits: SAM reads
    0 as undecided) or whose largest magnitude exceeds :data:`MASK_LOGIT_LIMIT`."""
    if integer:
        raise InputError(
            f"{name} must be float logits (a previous prediction's low-res logits), got "
            f"{dtype_name} values: a binary mask is not logits"
        )
    if largest > MASK_LOGIT_LIMIT:
        raise InputError(
            f"{name} must be logits within +-{MASK_LOGIT_LIMIT:g} (a previous prediction's "
            f"low-res logits), got a value of magnitude {largest:.3g}"
        )
