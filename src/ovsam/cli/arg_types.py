"""argparse pieces shared by the commands (and the benchmark scripts): the parser,
``type=`` converters and actions."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

# A negative number in any form ``float()`` reads: -5, -.5, -1e3, -2.5E-4, -inf, -nan.
_NEGATIVE_NUMBER = re.compile(
    r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, reading every negative number as a value, and saying a usage error
    in one line.

    argparse takes ``-5`` and ``-0.5`` for values but ``-1e3`` and ``-inf`` for options, so
    ``--box -1e3 0 10 10`` failed with "expected 4 arguments"; and it printed its whole usage
    block (a dozen lines) above the error. Sub-parsers made by ``add_subparsers`` are of this
    class too.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        """``ovsam CMD: error: MESSAGE (ovsam CMD --help lists the options)`` on stderr, one
        line, then exit status 2 (argparse's status for a usage error)."""
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (no upper bound when None); a
    value out of range is a usage error naming the bound(s)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return convert


def output_path(text: str) -> Path:
    """An argparse type: a path to write to; an empty one is a usage error (``Path("")`` is
    the current folder, which nobody means by it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a folder or file to write to")
    return Path(text)


def nonempty_text(text: str) -> str:
    """An argparse type: a name that is not blank (an empty one silently meant the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value: give a name (or leave the option out)")
    return text


class StoreOnce(argparse.Action):
    """Like ``store``, but giving the option twice is a usage error (the second would silently
    replace the first)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice: give it once")
        setattr(namespace, self.dest, values)
