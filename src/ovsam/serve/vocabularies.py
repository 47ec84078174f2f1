"""Custom vocabularies typed by users: kept in memory, bounded in size (synonyms included) and
number.

Posted names are read as the command line and :func:`ovsam.vocab.load_vocabulary` read them:
one class per entry, commas separate synonyms (``"saucer, plate"`` is one class labelled
``saucer``), a name in two classes is refused.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from ovsam.errors import InputError
from ovsam.serve.http_errors import ApiError
from ovsam.serve.schemas import VocabularyInfo
from ovsam.serve.settings import ServeSettings
from ovsam.vocab import (
    BUILTIN_VOCABULARIES,
    Vocabulary,
    builtin_vocabulary,
    comma_synonyms,
    vocabulary_from_names,
)


def unknown_vocabulary(name: str) -> ApiError:
    """The 404 for a vocabulary the server does not hold (any more)."""
    return ApiError(
        404, "unknown_vocabulary",
        f"unknown vocabulary {name!r} (never added, deleted, or dropped as the least recently "
        "used custom vocabulary: post its names again)",
    )  # fmt: skip


class Vocabularies:
    """Built-in vocabularies plus at most ``settings.max_custom_vocabularies`` custom ones; adding
    one more evicts the least recently used custom vocabulary. ``check`` vets a new vocabulary
    before it is kept (the recognizer's check that every name fits its text encoder)."""

    def __init__(self, settings: ServeSettings, check: Callable[[Vocabulary], None]) -> None:
        self.settings = settings
        self.check = check
        self._custom: OrderedDict[str, Vocabulary] = OrderedDict()
        self._lock = threading.Lock()

    def too_large(self, size: int, what: str = "names") -> ApiError:
        """The error for a vocabulary of ``size`` names (``what``) over the limit."""
        return ApiError(
            413, "vocabulary_too_large",
            f"vocabulary has {size} {what}, more than the limit of "
            f"{self.settings.max_vocabulary}",
        )  # fmt: skip

    def add(self, name: str, names: list[str]) -> Vocabulary:
        """Add (or replace) ``name`` from ``names`` (blank entries are dropped, and repeated
        ones: the same synonyms, however spaced); returns the parsed vocabulary. The length
        limit applies to each name, synonyms one by one, and the size limit to the names
        counting synonyms (each is embedded)."""
        if name in BUILTIN_VOCABULARIES:
            raise ApiError(
                409, "builtin_vocabulary", f"{name!r} is a built-in vocabulary: choose another name"
            )
        entries: dict[tuple[str, ...], int] = {}  # synonyms -> first position (1-based)
        for position, entry in enumerate(names, start=1):
            synonyms = comma_synonyms(entry)
            if synonyms:
                entries.setdefault(synonyms, position)
        if not entries:
            raise ApiError(400, "empty_vocabulary", "vocabulary is empty: give at least one name")
        names_count = sum(len(entry) for entry in entries)  # every synonym is embedded
        if names_count > self.settings.max_vocabulary:
            counted = "names" if names_count == len(entries) else "names counting synonyms"
            raise self.too_large(names_count, counted)
        synonyms = (n for entry in entries for n in entry)
        long = next((n for n in synonyms if len(n) > self.settings.max_name_chars), None)
        if long is not None:
            raise ApiError(
                400, "name_too_long",
                f"class name of {len(long)} characters exceeds {self.settings.max_name_chars}",
            )  # fmt: skip
        try:
            vocabulary = vocabulary_from_names(
                [", ".join(entry) for entry in entries],
                name,
                self.settings.max_vocabulary,
                "name",
                list(entries.values()),
            )
        except InputError as exc:
            raise ApiError(400, "invalid_vocabulary", str(exc)) from exc
        try:
            self.check(vocabulary)
        except InputError as exc:
            raise ApiError(400, "name_too_long", str(exc)) from exc
        with self._lock:
            self._custom[name] = vocabulary
            self._custom.move_to_end(name)
            while len(self._custom) > self.settings.max_custom_vocabularies:
                self._custom.popitem(last=False)
        return vocabulary

    def get(self, name: str) -> Vocabulary:
        """Vocabulary ``name`` (a custom one is marked as recently used)."""
        with self._lock:
            vocabulary = self._custom.get(name)
            if vocabulary is not None:
                self._custom.move_to_end(name)
        if vocabulary is None and name in BUILTIN_VOCABULARIES:
            vocabulary = builtin_vocabulary(name)
        if vocabulary is None:
            raise unknown_vocabulary(name)
        return vocabulary

    def delete(self, name: str) -> None:
        """Forget the custom vocabulary ``name``."""
        if name in BUILTIN_VOCABULARIES:
            raise ApiError(
                409,
                "builtin_vocabulary",
                f"{name!r} is a built-in vocabulary: it cannot be deleted",
            )
        with self._lock:
            if self._custom.pop(name, None) is None:
                raise unknown_vocabulary(name)

    def list(self) -> list[VocabularyInfo]:
        """Built-in vocabularies first, then the custom ones (least recently used first)."""
        builtins = [
            VocabularyInfo(name=n, size=len(builtin_vocabulary(n)), builtin=True)
            for n in BUILTIN_VOCABULARIES
        ]
        with self._lock:
            return builtins + [
                VocabularyInfo(name=k, size=len(v), builtin=False) for k, v in self._custom.items()
            ]
