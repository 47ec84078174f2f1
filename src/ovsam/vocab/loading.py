"""Vocabularies as users give them: text files, command-line text, or any of those, a built-in
name or a list of names (:func:`load_vocabulary`).

A vocabulary file holds one class per line, commas separating synonyms (``cup, mug``); blank
lines and ``#`` comments (a ``#`` at the start of a line or after white space, to the end of
the line) are skipped. It must be UTF-8; ``;`` (which separates classes on the command line
only) and ``.csv`` files (which would not be read as CSV) are refused.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ovsam.errors import InputError
from ovsam.vocab.vocabulary import (
    BUILTIN_VOCABULARIES,
    MAX_CLASSES,
    Vocabulary,
    builtin_vocabulary,
    vocabulary_from_names,
)

_COMMENT = re.compile(r"(?:^|\s)#.*")  # '#' starting a line or after white space, to its end
_FILE_SUFFIXES = (".txt", ".names")  # of vocabulary files
_REFUSED_SUFFIXES = (".csv",)  # not read: a CSV's header row and columns would become classes


def _check_suffix(path: Path) -> None:
    """A ``.csv`` file is refused: it would be read line by line, not as CSV."""
    if path.suffix.lower() in _REFUSED_SUFFIXES:
        raise InputError(
            f"vocabulary file {path}: {path.suffix} files are not read as a vocabulary (a "
            "header row would become a class); use a .txt file with one class per line "
            "(commas separate synonyms)"
        )


def _file_text(path: Path) -> str:
    """The text of the vocabulary file ``path`` (UTF-8, a byte order mark dropped)."""
    if path.is_dir():
        raise InputError(f"vocabulary {path} is a folder: give a file with one class per line")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read vocabulary file {path}: {exc}") from exc
    body = raw.removeprefix(codecs.BOM_UTF8)  # as Windows Notepad saves it
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        raise InputError(
            f"vocabulary file {path} is not UTF-8 text (line {line}: byte "
            f"{body[exc.start]:#04x}): save it as UTF-8"
        ) from exc


def vocabulary_from_file(path: str | Path, max_classes: int = MAX_CLASSES) -> Vocabulary:
    """One class per line, commas separating synonyms (``cup, mug``); blank lines skipped, and
    ``#`` comments: a ``#`` that starts a line or follows white space starts a comment that
    runs to the end of the line (``mug  # drinking vessel`` is ``mug``; ``c#`` stays ``c#``).
    Lines end at ``\n``, ``\r\n`` or a lone ``\r`` (old Mac files) only. The file must be UTF-8; a ``;`` in a class is
    refused (it separates classes only on the command line), as is a ``.csv`` file (not read
    as CSV). Errors name the file and line."""
    path = Path(path)
    _check_suffix(path)
    lines = _file_text(path).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    numbered: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        # a byte-order mark starting a line (files joined with cat) is not part of the name
        entry = _COMMENT.sub("", line.lstrip("\ufeff"))
        if ";" in entry:
            raise InputError(
                f"vocabulary file {path} line {number}: ';' separates classes only on the "
                "command line; put one class per line (commas separate synonyms)"
            )
        if entry.strip():
            numbered.append((number, entry))
    return vocabulary_from_names(
        [line for _, line in numbered], path.stem, max_classes, "line", [i for i, _ in numbered]
    )


def _path_kind(text: str) -> str | None:
    """``"file"`` or ``"folder"`` when ``text`` names an existing one, else None (also for
    text no file can be named: too long for the file system, or holding a NUL, such as a long
    inline list of classes)."""
    try:
        path = Path(text)
        return "file" if path.is_file() else "folder" if path.is_dir() else None
    except (OSError, ValueError):
        return None


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` (which names nothing that exists) reads as a file path rather than
    classes: it ends in a vocabulary file's suffix, or holds a path separator and either no
    comma, a start like a path (``/``, ``~``, ``.``) or an existing folder before its last
    separator. (``salad_plate/side_plate, cup``, two LVIS-style classes, is no path.)"""
    if text.lower().endswith(_FILE_SUFFIXES + _REFUSED_SUFFIXES):
        return True
    separators = {"/", os.sep, os.altsep or "/"}
    last = max(text.rfind(separator) for separator in separators)
    if last < 0:
        return False
    if "," not in text or text.startswith(("~", ".", *separators)):
        return True
    return _path_kind(os.path.expanduser(text[:last] or "/")) == "folder"


def load_vocabulary(
    spec: str | Path | Sequence[str] | Vocabulary, max_classes: int = MAX_CLASSES
) -> Vocabulary:
    """A :class:`Vocabulary` from a built-in name (:data:`BUILTIN_VOCABULARIES`, cached), a
    text file path (see :func:`vocabulary_from_file`), or a list of names (commas inside an
    entry separate synonyms). ``max_classes`` bounds user vocabularies; empty or duplicate
    classes raise :class:`InputError`, as does a string that names neither a built-in
    vocabulary nor a file ("no such vocabulary file" when it reads as a path)."""
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, str) and not spec.strip():
        raise InputError("vocabulary is empty: give a built-in name, a file or class names")
    if isinstance(spec, Path) or (
        isinstance(spec, str) and spec not in BUILTIN_VOCABULARIES and _path_kind(spec)
    ):
        return vocabulary_from_file(spec, max_classes)
    if isinstance(spec, str):
        if spec not in BUILTIN_VOCABULARIES and _looks_like_path(spec):
            raise InputError(f"no such vocabulary file: {spec}")
        return builtin_vocabulary(spec)
    return vocabulary_from_names(list(spec), max_classes=max_classes)


def parse_vocabulary_argument(text: str) -> str | Path | list[str]:
    """A command-line vocabulary: a built-in name, an existing file, or inline classes split at
    ``;`` (then commas separate synonyms) or, without ``;``, at commas. Without ``;``, text that
    reads as a path (:func:`_looks_like_path`: ``.txt``, ``.names`` or ``.csv`` at the end, a
    ``/``) must be an existing file ("no such vocabulary file"); a folder is refused. A file is
    read at once (:func:`vocabulary_from_file`: its errors come before any model loads) and
    returned as a path. Inline classes are stripped and checked at once
    (:func:`vocabulary_from_names`: an empty class between two separators or a repeated name
    is refused); one trailing separator is allowed (``'cup;'``)."""
    text = text.strip()
    if not text:
        raise InputError("vocabulary is empty: give a built-in name, a file or 'cat; dog; mug'")
    if text in BUILTIN_VOCABULARIES:
        return text
    kind = _path_kind(text)
    if kind == "folder":
        raise InputError(f"vocabulary {text} is a folder: give a file with one class per line")
    if kind == "file":
        vocabulary_from_file(text)  # checked at once, before any model is loaded
        return Path(text)
    if ";" not in text and _looks_like_path(text):  # not 'classes_v1' and '2.txt'
        raise InputError(
            f"no such vocabulary file: {text} (inline classes go between ';': 'cat; dog')"
        )
    for separator in (";", ","):
        if separator in text:
            parts = [part.strip() for part in text.split(separator)]
            if len(parts) > 1 and not parts[-1]:
                parts.pop()  # 'cup;' is one class
            vocabulary_from_names(parts, where="vocabulary entry")
            return parts
    raise InputError(
        f"vocabulary {text!r} is neither built in ({', '.join(BUILTIN_VOCABULARIES)}), nor a file, nor a "
        f"list like 'cat; dog; mug' (a single class: '{text};')"
    )
