"""CLIP's byte-level BPE tokenizer (OpenAI CLIP / open_clip compatible token ids).

Text is cleaned (``ftfy.fix_text`` when ftfy is installed, HTML entities unescaped twice,
white space collapsed, lower-cased), split with CLIP's pattern (letters, single digits,
punctuation runs, English contractions) into pre-tokens, mapped byte by byte onto printable
characters and merged with the 48,894 ranked merges of ``bpe_simple_vocab_16e6.txt.gz``
(shipped in ``ovsam/assets``). Sequences are framed with ``<|startoftext|>`` / ``<|endoftext|>``
and padded with 0 to the context length (77); longer ones are cut, keeping the end token last.
Id 0 is also a real token (``!``): only zeros after the end token are padding.

The text side (:func:`clean_text`, :func:`pre_tokens`) needs neither the BPE file nor torch
(torch is imported when tensors are built), so vocabularies can compare names as CLIP reads
them without importing either.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from ovsam.assets import ASSETS_DIR
from ovsam.clip.config import get_clip_config

if TYPE_CHECKING:
    import torch

BPE_PATH = ASSETS_DIR / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_SPACES = regex.compile(r"\s+")


CACHE_PIECES = 100_000
"""Pre-tokens whose ids a tokenizer keeps (a few MB; OpenAI's keeps every one it has seen)."""


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Reversible map of the 256 byte values onto printable unicode characters (GPT-2's).

    Insertion order matters: printable bytes first, then the rest; the vocabulary's first
    256 ids follow this order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """CLIP's text normalisation: fix mojibake, unescape HTML, collapse spaces, lower-case.

    Printable ASCII without ``&`` skips ftfy and the unescaping, which leave it unchanged (the
    bulk of class names and prompts: ~10x faster, e.g. for ImageNet-21k's context check)."""
    if not (text.isascii() and text.isprintable() and "&" not in text):
        try:
            import ftfy

            text = ftfy.fix_text(text)
        except ImportError:  # ftfy only repairs broken encodings; clean input is unaffected
            pass
        text = html.unescape(html.unescape(text))
    return _SPACES.sub(" ", text.strip()).strip().lower()


def pre_tokens(text: str) -> list[str]:
    """The pieces of ``text`` the BPE merges one by one: :func:`clean_text`, then CLIP's split
    (``"Hot-dog!"`` -> ``["hot", "-", "dog", "!"]``; special tokens are pieces of their own).
    Token ids are a function of this list alone, and different lists give different ids."""
    return _SPLIT.findall(clean_text(text))


class Tokenizer:
    """Encode text to CLIP token ids and back (vocabulary of 49,408 ids)."""

    def __init__(self, bpe_path: str | Path = BPE_PATH) -> None:
        lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        alphabet = list(byte_alphabet().values())
        vocab = [
            *alphabet,
            *(c + "</w>" for c in alphabet),
            *("".join(m) for m in merges),
            SOT,
            EOT,
        ]
        self.encoder: dict[str, int] = {piece: i for i, piece in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: piece for piece, i in self.encoder.items()}
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.byte_to_char = byte_alphabet()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, tuple[int, ...]] = {}  # pre-token -> its ids

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _merge(self, word: str) -> list[str]:
        """Apply the ranked merges to one pre-token (already mapped to the byte alphabet)."""
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:], strict=False)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, NUM_MERGES))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        """Token ids of one pre-token, cached: a literal special token keeps its own id."""
        cached = self._cache.get(piece)
        if cached is None:
            if piece in (SOT, EOT):
                cached = (self.encoder[piece],)
            else:
                mapped = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
                cached = tuple(self.encoder[p] for p in self._merge(mapped))
            if len(self._cache) >= CACHE_PIECES:  # a server's posted vocabularies add up
                self._cache.clear()
            self._cache[piece] = cached
        return cached

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        return [i for piece in pre_tokens(text) for i in self._piece_ids(piece)]

    def count(self, text: str) -> int:
        """Tokens of ``text`` framed by start/end (cut by ``__call__`` above the context)."""
        return sum(len(self._piece_ids(piece)) for piece in pre_tokens(text)) + 2

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (word ends become spaces): a leading start token is dropped and the
        text ends at the first end token (what follows, e.g. :meth:`__call__`'s zero padding,
        is not text); elsewhere id 0 is ``!``."""
        ids = list(ids)
        if ids[:1] == [self.sot_id]:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        chars = "".join(self.decoder[i] for i in ids)
        raw = bytearray(self.char_to_byte[c] for c in chars)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH
    ) -> torch.Tensor:
        """``LongTensor[N, context_length]``: SOT, ids, EOT, zero padding (cut keeping EOT)."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                ids = [*ids[: context_length - 1], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def get_tokenizer(model_name: str | None = None) -> Tokenizer:
    """The shared tokenizer built from the shipped BPE file (built once, ~1 s). As in open_clip,
    ``model_name`` may name the CLIP it is for: every registered model uses this one (their
    context length is 77); an unregistered name is an :class:`~ovsam.errors.InputError`."""
    if model_name is not None:
        get_clip_config(model_name)
    return _shared_tokenizer()


@lru_cache(maxsize=1)
def _shared_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenize with the shared :class:`Tokenizer` (see ``Tokenizer.__call__``)."""
    return get_tokenizer()(texts, context_length)
