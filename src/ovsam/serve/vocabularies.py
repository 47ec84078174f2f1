"""Custom vocabularies typed by users: kept in memory, bounded in size and number."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ovsam.serve.http_errors import ApiError
from ovsam.serve.schemas import VocabularyInfo
from ovsam.serve.settings import ServeSettings
from ovsam.vocab import BUILTIN_VOCABULARIES, builtin_vocabulary


class Vocabularies:
    """Built-in vocabularies plus at most ``settings.max_custom_vocabularies`` custom ones; adding
    one more evicts the least recently used custom vocabulary."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._custom: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    def too_large(self, size: int) -> ApiError:
        """The error for a vocabulary of ``size`` names over the limit."""
        return ApiError(
            413, "vocabulary_too_large",
            f"vocabulary has {size} names, more than the limit of {self.settings.max_vocabulary}",
        )  # fmt: skip

    def add(self, name: str, names: list[str]) -> list[str]:
        """Add (or replace) ``name``; returns its cleaned, de-duplicated names."""
        if name in BUILTIN_VOCABULARIES:
            raise ApiError(
                409, "builtin_vocabulary", f"{name!r} is a built-in vocabulary: choose another name"
            )
        cleaned = list(dict.fromkeys(n.strip() for n in names if n.strip()))
        if not cleaned:
            raise ApiError(400, "empty_vocabulary", "vocabulary is empty: give at least one name")
        if len(cleaned) > self.settings.max_vocabulary:
            raise self.too_large(len(cleaned))
        long = next((n for n in cleaned if len(n) > self.settings.max_name_chars), None)
        if long is not None:
            raise ApiError(
                400, "name_too_long",
                f"class name of {len(long)} characters exceeds {self.settings.max_name_chars}",
            )  # fmt: skip
        with self._lock:
            self._custom[name] = cleaned
            self._custom.move_to_end(name)
            while len(self._custom) > self.settings.max_custom_vocabularies:
                self._custom.popitem(last=False)
        return cleaned

    def get(self, name: str) -> list[str]:
        """The names of vocabulary ``name`` (a custom one is marked as recently used)."""
        with self._lock:
            names = self._custom.get(name)
            if names is not None:
                self._custom.move_to_end(name)
        if names is None and name in BUILTIN_VOCABULARIES:
            names = list(builtin_vocabulary(name).classes)
        if names is None:
            raise ApiError(404, "unknown_vocabulary", f"unknown vocabulary {name!r}")
        return names

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
                raise ApiError(404, "unknown_vocabulary", f"unknown vocabulary {name!r}")

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
