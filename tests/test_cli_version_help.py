"""``ovsam --version`` and what ``--vocab``'s help lists."""

from __future__ import annotations

import pytest

import ovsam
from ovsam.cli.main import main
from ovsam.vocab import BUILTIN_VOCABULARIES


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ovsam {ovsam.__version__}"


@pytest.mark.parametrize("command", ["segment", "everything"])
def test_vocab_help_lists_every_builtin_vocabulary(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    words = capsys.readouterr().out.replace("|", " ").split()
    assert set(BUILTIN_VOCABULARIES) <= set(words)
