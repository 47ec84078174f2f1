"""Class names as CLIP reads them: one key per name, and the rule that no name is in two classes.

Two names that clean and split into the same pre-tokens (:func:`~ovsam.clip.tokenizer.pre_tokens`)
get the same token ids, hence the same text embedding: ``"Mug"`` and ``"mug"``, ``"hot-dog"``
and ``"Hot - dog"``. A vocabulary holding such a name in two classes cannot tell them apart,
so :func:`check_distinct_names` refuses it, for vocabularies (:mod:`ovsam.vocab`) and for
plain lists of names given to :func:`~ovsam.clip.text_bank.build_text_bank` alike.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from ovsam.clip.tokenizer import EOT, SOT, pre_tokens
from ovsam.errors import InputError

# Characters a class name never holds, each a sign that the text is not a list of names.
_REFUSED_CHARACTERS = {
    "\x00": "a NUL (UTF-16 text read as UTF-8? give UTF-8)",
    "\t": "a tab (a tab-separated table? give one class per entry, commas between synonyms)",
}


def token_key(name: str, place: str) -> str:
    """``name`` as CLIP reads it (its pre-tokens; equal keys, equal token ids).

    Raises :class:`InputError` naming ``place`` (e.g. ``"entry 3"``) for a name holding
    CLIP's special tokens, a tab or a NUL, no visible character or a lone
    surrogate (not text: ``"\\ud800"`` from a JSON escape, which no UTF-8 output can hold).
    """
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"class name {name!r} ({place}) is not valid text: it holds a lone surrogate"
            ) from None
    refused = next((c for c in name if c in _REFUSED_CHARACTERS), None)
    if refused is not None:
        raise InputError(f"class name {name!r} ({place}) holds {_REFUSED_CHARACTERS[refused]}")
    pieces = pre_tokens(name)
    special = [p for p in pieces if p in (SOT, EOT)]
    if special:
        raise InputError(
            f"class name {name!r} ({place}) contains CLIP's special token {special[0]!r}, "
            "which would end or restart the prompt"
        )
    if all(unicodedata.category(c)[0] in "CZ" for piece in pieces for c in piece):
        raise InputError(
            f"class name {name!r} ({place}) has no visible character "
            "(only spaces, control or format characters such as zero-width spaces)"
        )
    return " ".join(pieces)


def check_distinct_names(classes: Sequence[Sequence[str]], places: Sequence[str]) -> None:
    """Raise :class:`InputError` for a name (display name or synonym) in two of ``classes``,
    compared by :func:`token_key`; ``places[i]`` names class ``i`` in messages (``"line 4"``).
    A name repeated within one class is allowed."""
    seen: dict[str, tuple[int, str]] = {}  # key -> (class, name) of its first use
    for index, (place, names) in enumerate(zip(places, classes, strict=True)):
        for name in names:
            first, earlier = seen.setdefault(token_key(name, place), (index, name))
            if first != index:
                alike = earlier.lower() == name.lower()
                same = "" if alike else f": the same tokens as {earlier!r}"
                raise InputError(
                    f"duplicate class name {name!r} ({places[first]} and {place})" + same
                )
