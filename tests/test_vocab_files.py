"""Vocabulary files and ``--vocab`` text: lines, comments, ';', .csv, encodings, paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ovsam.errors import InputError
from ovsam.vocab import load_vocabulary, parse_vocabulary_argument

ONE_PER_LINE = "put one class per line (commas separate synonyms)"


def _file(tmp_path: Path, text: str, name: str = "classes.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_semicolon_in_a_file_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "mug\ncup; saucer\n")
    message = f"vocabulary file {path} line 2: ';' separates classes only on the command line; "
    with pytest.raises(InputError, match=re.escape(message + ONE_PER_LINE)):
        load_vocabulary(path)
    with pytest.raises(InputError, match=re.escape(message)):  # --vocab: before any model loads
        parse_vocabulary_argument(str(path))
    assert load_vocabulary(_file(tmp_path, "mug  # not; a class\n")).classes == ("mug",)


def test_inline_comments_are_stripped(tmp_path: Path) -> None:
    text = "mug  # drinking vessel\n# a comment\n  # an indented one\nc#\ncup\t#2\nhot dog #\n"
    vocabulary = load_vocabulary(_file(tmp_path, text))
    assert vocabulary.classes == ("mug", "c#", "cup", "hot dog")


def test_lines_end_at_newlines_only(tmp_path: Path) -> None:
    path = _file(tmp_path, "paper\x0cclip\r\nsaucer\u2028plate\nspoon\x85fork\nmug\nmug\n")
    with pytest.raises(InputError, match=r"duplicate class name 'mug' \(line 4 and line 5\)"):
        load_vocabulary(path)
    vocabulary = load_vocabulary(_file(tmp_path, "paper\x0cclip\r\nsaucer\u2028plate\n"))
    assert vocabulary.classes == ("paper\x0cclip", "saucer\u2028plate")  # two classes, not four
    assert load_vocabulary(_file(tmp_path, "cat\rdog\rmug\r")).classes == ("cat", "dog", "mug")


@pytest.mark.parametrize("read", [load_vocabulary, parse_vocabulary_argument])
def test_a_csv_file_is_refused(tmp_path: Path, read: object) -> None:
    path = _file(tmp_path, "name,id\ncup,1\n", "classes.csv")
    with pytest.raises(InputError, match=r"use a \.txt file with one class per line \(commas"):
        read(str(path))  # type: ignore[operator]


def test_a_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"\xef\xbb\xbfcup\ncaf\xe9\n")  # a BOM, then Latin-1
    message = f"vocabulary file {path} is not UTF-8 text (line 2: byte 0xe9): save it as UTF-8"
    with pytest.raises(InputError, match=re.escape(message)):
        load_vocabulary(path)


def test_tables_and_utf16_text_are_refused_by_what_gives_them_away(tmp_path: Path) -> None:
    path = _file(tmp_path, "mug\n1\tcup\n")
    message = "class name '1\\tcup' (line 2) holds a tab (a tab-separated table? give one class"
    with pytest.raises(InputError, match=re.escape(message)):
        load_vocabulary(path)
    path = tmp_path / "utf16.txt"
    path.write_bytes("cat\ndog\n".encode("utf-16-le"))  # no byte order mark
    message = "class name 'c\\x00a\\x00t\\x00' (line 1) holds a NUL (UTF-16 text read as UTF-8?"
    with pytest.raises(InputError, match=re.escape(message)):
        load_vocabulary(path)
    with pytest.raises(InputError, match=r"'ca\\x00t' \(entry 2\) holds a NUL"):
        load_vocabulary(["dog", "ca\x00t"])
    assert load_vocabulary(_file(tmp_path, "cup\t# a comment\n\tmug\t\n")).classes == (
        "cup", "mug"
    )  # fmt: skip


def test_a_missing_path_is_no_such_file_not_classes(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    folder.mkdir()
    for text in ("labels/objects", f"{folder}/objects, v2", "./objects, v2", "objects.names"):
        with pytest.raises(InputError, match=f"^no such vocabulary file: {re.escape(text)}"):
            parse_vocabulary_argument(text)
    with pytest.raises(InputError, match="^no such vocabulary file: labels/objects$"):
        load_vocabulary("labels/objects")
    # LVIS-style class names hold a '/': with a comma and no such folder they stay classes
    assert parse_vocabulary_argument("salad_plate/side_plate, cup") == [
        "salad_plate/side_plate", "cup"
    ]  # fmt: skip


@pytest.mark.parametrize("read", [load_vocabulary, parse_vocabulary_argument])
def test_a_folder_is_named_a_folder(tmp_path: Path, read: object) -> None:
    with pytest.raises(InputError, match=f"vocabulary {re.escape(str(tmp_path))} is a folder"):
        read(str(tmp_path))  # type: ignore[operator]


def test_an_unknown_vocabulary_says_a_list_of_names_is_accepted() -> None:
    with pytest.raises(InputError, match=r"^unknown vocabulary 'cat, dog'; .*a list of class"):
        load_vocabulary("cat, dog")
