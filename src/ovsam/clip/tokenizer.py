"""CLIP's byte-level BPE tokenizer (OpenAI CLIP / open_clip compatible token ids).

Text is cleaned (``ftfy.fix_text`` when ftfy is installed, HTML entities unescaped twice,
white space collapsed, lower-cased), split with CLIP's pattern (letters, single digits,
punctuation runs, English contractions), mapped byte by byte onto printable characters and
merged with the 48,894 ranked merges of ``bpe_simple_vocab_16e6.txt.gz`` (shipped in
``ovsam/assets``). Sequences are framed with ``<|startoftext|>`` / ``<|endoftext|>`` and
padded with 0 to the context length (77); longer ones are cut, keeping the end token last.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import regex
import torch

from ovsam.assets import ASSETS_DIR

BPE_PATH = ASSETS_DIR / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


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
    """CLIP's text normalisation: fix mojibake, unescape HTML, collapse spaces, lower-case."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs broken encodings; clean input is unaffected
        pass
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


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
        self._cache: dict[str, list[str]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _merge(self, word: str) -> list[str]:
        """Apply the ranked merges to one pre-token (already mapped to the byte alphabet)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
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
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        ids: list[int] = []
        for piece in _SPLIT.findall(clean_text(text)):
            if piece in (SOT, EOT):  # literal special tokens keep their own ids
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._merge(mapped))
        return ids

    def count(self, text: str) -> int:
        """Tokens of ``text`` framed by start/end (cut by ``__call__`` above the context)."""
        return len(self.encode(text)) + 2

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (start/end/padding ids are dropped; word ends become spaces)."""
        chars = "".join(self.decoder[i] for i in ids if i not in (0, self.sot_id, self.eot_id))
        raw = bytearray(self.char_to_byte[c] for c in chars)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH
    ) -> torch.Tensor:
        """``LongTensor[N, context_length]``: SOT, ids, EOT, zero padding (cut keeping EOT)."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                ids = [*ids[: context_length - 1], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The shared tokenizer built from the shipped BPE file (built once, ~1 s)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenize with the shared :class:`Tokenizer` (see ``Tokenizer.__call__``)."""
    return get_tokenizer()(texts, context_length)
