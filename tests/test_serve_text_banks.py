"""The server's in-memory text banks (``ovsam.serve.recognition.TextBanks``): one build of a
vocabulary at a time, also after a failed build, and banks told apart by display names."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

import ovsam.serve.recognition as recognition
from ovsam.clip.text_bank import TextBank
from ovsam.vocab import Vocabulary, vocabulary_from_names


def _bank(vocabulary: Vocabulary) -> TextBank:
    index = [i for i, synonyms in enumerate(vocabulary.synonyms) for _ in synonyms]
    return TextBank(vocabulary.classes, torch.zeros(len(index), 4), torch.tensor(index), "key")


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_after_a_failed_build_requests_build_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failed build dropped its lock while a waiter took it over: a request arriving
    then made a new lock and built the same bank beside the waiter."""
    calls: list[str] = []
    building, peak = [0], [0]
    releases = [threading.Event() for _ in range(3)]

    def build(clip: object, vocabulary: Vocabulary, *args: object, **kwargs: object) -> TextBank:
        n = len(calls)
        calls.append(threading.current_thread().name)
        building[0] += 1
        peak[0] = max(peak[0], building[0])
        try:
            assert releases[n].wait(30)
            if n == 0:
                raise RuntimeError("the first build fails")
            return _bank(vocabulary)
        finally:
            building[0] -= 1

    monkeypatch.setattr(recognition, "build_text_bank", build)
    banks = recognition.TextBanks(clip=None, templates=["a {}."])  # type: ignore[arg-type]
    vocabulary = vocabulary_from_names(["cup"], "mine")
    answers: dict[str, object] = {}

    def ask(name: str) -> threading.Thread:
        def run() -> None:
            try:
                answers[name] = banks.get(vocabulary)
            except RuntimeError as exc:
                answers[name] = exc

        thread = threading.Thread(target=run, name=name)
        thread.start()
        return thread

    key = (vocabulary.classes, vocabulary.synonyms)
    threads = [ask("A")]
    _until(lambda: calls == ["A"])
    threads.append(ask("B"))
    _until(lambda: key in banks._building and banks._building[key].users == 2)
    releases[0].set()  # A fails; B builds again
    _until(lambda: calls == ["A", "B"])
    threads.append(ask("C"))  # arrives while B builds: waits for B
    _until(lambda: len(calls) == 3 or banks._building[key].users == 2)
    releases[1].set()
    releases[2].set()
    for thread in threads:
        thread.join(30)
    assert calls == ["A", "B"] and peak[0] == 1
    assert isinstance(answers["A"], RuntimeError) and answers["B"] is answers["C"]
    assert not banks._building  # nothing left behind


def test_vocabularies_with_the_same_synonyms_keep_their_own_display_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Banks were kept by synonyms alone: a vocabulary embedding the same names under other
    display names answered with the first one's labels."""
    monkeypatch.setattr(recognition, "build_text_bank", lambda clip, v, *a, **k: _bank(v))
    banks = recognition.TextBanks(clip=None, templates=["a {}."])  # type: ignore[arg-type]
    synonyms = (("bible", "holy book"),)
    shown = Vocabulary("builtin", ("Bible",), synonyms, ({},))
    posted = Vocabulary("posted", ("bible",), synonyms, ({},))
    assert banks.get(shown).names == ("Bible",)
    assert banks.get(posted).names == ("bible",)
    assert banks.get(shown).names == ("Bible",)
