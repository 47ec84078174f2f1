"""Entry point of the ``ovsam`` command.

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` (which must
import nothing heavy) and ``run(args) -> int``. Errors that ovsam raises on purpose
(:class:`~ovsam.errors.OVSamError`), a bad ``--device`` or ``--out`` (checked before the
command runs, :mod:`ovsam.cli.preflight`), file-system errors and running out of memory
(CPU or GPU) are printed as one line and exit with status 2; warnings are one line each too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from ovsam import __version__
from ovsam.cli.arg_types import ArgumentParser
from ovsam.cli.preflight import preflight
from ovsam.errors import OVSamError, first_line, out_of_memory_line

# sub-command name -> module implementing it
COMMAND_MODULES: dict[str, str] = {
    "segment": "ovsam.cli.segment_cmd",
    "everything": "ovsam.cli.everything_cmd",
    "demo": "ovsam.cli.demo_cmd",
    "download": "ovsam.cli.download_cmd",
    "models": "ovsam.cli.models_cmd",
    "serve": "ovsam.cli.serve_cmd",
    "train": "ovsam.cli.train_cmd",
    "eval": "ovsam.cli.eval_cmd",
    "export-onnx": "ovsam.cli.export_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered."""
    parser = ArgumentParser(prog="ovsam", description="Segment and name any object you point at.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; return the process exit status."""
    if hasattr(sys.stdout, "reconfigure"):  # print a file name that is not UTF-8 as stderr
        sys.stdout.reconfigure(errors="backslashreplace")  # does (\udcNN), not fail on it
    args = parse_arguments(build_parser(), argv)
    with warnings.catch_warnings():  # put back as they were when main returns
        warnings.showwarning = _one_line_warning(args.command)
        return _run(args)


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, an unknown option named by the sub-command it was given to
    (``ovsam segment: error: unrecognized arguments: --bogus``), as every other usage error
    is; argparse reports those at the top level (``ovsam: error: ...``)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _chosen_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The innermost (sub-)parser that ``args`` went through (``ovsam train sam2clip``)."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:
                return _chosen_parser(chosen, args)
    return parser


def _one_line_warning(command: str) -> Callable[..., None]:
    """``warnings.showwarning`` for the CLI: ``ovsam CMD: warning: MESSAGE`` on one line, not
    Python's two lines naming a library's source file (e.g. Pillow's "Corrupt EXIF data")."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = " ".join(str(message).split())
        print(f"ovsam {command}: warning: {text}", file=file or sys.stderr)

    return show


def _run(args: argparse.Namespace) -> int:
    try:
        preflight(args)
        return int(args.run(args) or 0)
    except OVSamError as exc:
        print(f"ovsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stdout = None  # type: ignore[assignment] - suppress the flush error at exit
        return 141
    except OSError as exc:  # the file system refused (disk full, permissions, a path clash)
        print(f"ovsam {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        line = out_of_memory_line(exc)
        if line is None:
            raise
        print(f"ovsam {args.command}: error: {line}", file=sys.stderr)
        return 2


def _os_error_line(exc: OSError) -> str:
    """``strerror: filename`` of an :class:`OSError`, as one line."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return first_line(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
