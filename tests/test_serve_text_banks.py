"""The server's in-memory text banks (``ovsam.serve.recognition.TextBanks``): one build of a
vocabulary at a time, also after a failed build, and banks told apart by display names."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

import ovsam.serve.recognition as recognition
from ovsam.clip.text_bank import BuildStopped, TextBank
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
    _until(lambda: key in banks._building and len(banks._building[key].wants) == 2)
    releases[0].set()  # A fails; B builds again
    _until(lambda: calls == ["A", "B"])
    threads.append(ask("C"))  # arrives while B builds: waits for B
    _until(lambda: len(calls) == 3 or len(banks._building[key].wants) == 2)
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


def test_a_build_no_request_wants_stops_and_its_waiters_do_not_build_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Builds went on for requests whose clients had hung up, holding both bank threads."""
    batches: list[str] = []

    def build(clip: object, vocabulary: Vocabulary, *args: object, **kwargs: object) -> TextBank:
        stop = kwargs["stop"]
        for _ in range(300):  # 3 s at most
            if stop is not None and stop():  # type: ignore[operator]
                raise BuildStopped("stopped")
            batches.append(threading.current_thread().name)
            time.sleep(0.01)
        return _bank(vocabulary)

    monkeypatch.setattr(recognition, "build_text_bank", build)
    banks = recognition.TextBanks(clip=None, templates=["a {}."])  # type: ignore[arg-type]
    vocabulary = vocabulary_from_names(["cup"], "mine")
    want = {"A": threading.Event(), "B": threading.Event()}
    answers: dict[str, object] = {}

    def ask(name: str, asked: Vocabulary = vocabulary) -> threading.Thread:
        want[name].set()

        def run() -> None:
            try:
                answers[name] = banks.get(asked, want[name].is_set)
            except BuildStopped as exc:
                answers[name] = exc

        thread = threading.Thread(target=run, name=name)
        thread.start()
        return thread

    threads = [ask("A")]
    _until(lambda: len(batches) > 0)
    threads.append(ask("B"))  # waits for A's build
    _until(lambda: len(banks._building[(vocabulary.classes, vocabulary.synonyms)].wants) == 2)
    want["A"].clear()  # A's client hung up: B still wants the bank, so the build goes on
    time.sleep(0.1)
    assert threads[0].is_alive()
    want["B"].clear()
    for thread in threads:
        thread.join(30)
    assert set(batches) == {"A"} and len(batches) < 300  # stopped; B did not build again
    assert all(isinstance(answers[n], BuildStopped) for n in "AB")
    assert not banks._building and banks.built(vocabulary) is None
    # a built-in vocabulary's bank, cached on disk, is built to the end (hours for
    # ImageNet-21k: a stopped build would keep nothing and start again from zero)
    batches.clear()
    builtin = Vocabulary("coco", ("cup",), (("cup",),), ({},))
    thread = ask("A", builtin)
    _until(lambda: len(batches) > 0)
    want["A"].clear()
    thread.join(60)
    assert len(batches) == 300 and banks.built(builtin) is not None
