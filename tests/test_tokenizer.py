"""CLIP tokenizer: exact parity with OpenAI's reference implementation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ovsam.clip.tokenizer import CONTEXT_LENGTH, get_tokenizer, pre_tokens, tokenize

GOLDEN = json.loads((Path(__file__).parent / "data" / "tokenizer_golden.json").read_text("utf-8"))


def test_golden_fixture_is_large_enough() -> None:
    assert len(GOLDEN) >= 50


@pytest.mark.parametrize("case", GOLDEN, ids=[f"s{i}" for i in range(len(GOLDEN))])
def test_ids_equal_reference_fixture(case: dict) -> None:
    assert get_tokenizer().encode(case["text"]) == case["ids"]


def test_live_parity_with_reference_tokenizer() -> None:
    spec = importlib.util.find_spec("clip")
    if spec is None or spec.origin is None:
        pytest.skip("clip-anytorch (reference tokenizer) is not installed")
    path = Path(spec.origin).parent / "simple_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("clip_reference_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    reference = module.SimpleTokenizer(str(path.parent / "bpe_simple_vocab_16e6.txt.gz"))
    extra = ["a photo of a {} in the wild", "Zürich's Hauptbahnhof", "x" * 300, "1,000,000 ducks"]
    for text in [case["text"] for case in GOLDEN] + extra:
        assert get_tokenizer().encode(text) == reference.encode(text), text


def test_framing_padding_and_truncation() -> None:
    tok = get_tokenizer()
    assert tok.vocab_size == 49408 and (tok.sot_id, tok.eot_id) == (49406, 49407)
    ids = tokenize(["a photo of a cat.", ""])
    assert ids.shape == (2, CONTEXT_LENGTH) and ids.dtype == torch.long
    body = tok.encode("a photo of a cat.")
    assert ids[0, : len(body) + 2].tolist() == [49406, *body, 49407]
    assert ids[0, len(body) + 2 :].eq(0).all()
    assert ids[1, :3].tolist() == [49406, 49407, 0]
    long = tokenize("word " * 200)
    assert long.shape == (1, 77) and long[0, -1].item() == 49407 and long[0].ne(0).all()


def test_decode_round_trip() -> None:
    tok = get_tokenizer()
    assert tok.decode(tok.encode("A Photo of a hot-dog!")) == "a photo of a hot - dog !"
    assert tok.decode(tokenize("café")[0].tolist()) == "café"


def test_decode_keeps_token_0_and_drops_only_the_padding_after_the_end() -> None:
    tok = get_tokenizer()
    assert tok.encode("!@#") == [0, 39397] and tok.encode("hi !—") == [1883, 0, 2005]
    assert tok.decode(tok.encode("hi !—")) == "hi !—"
    row = tokenize("!@# hi")[0].tolist()
    assert tok.decode(row) == "!@# hi"
    row[row.index(tok.eot_id) + 1] = 1883  # whatever follows the end token is not text
    assert tok.decode(row) == "!@# hi"


def test_pre_tokens_are_what_the_bpe_merges() -> None:
    assert pre_tokens(" Hot-dog!!  it's ") == ["hot", "-", "dog", "!!", "it", "'s"]
    expected = ["cup", "café", "x"]  # fullwidth, NBSP, NFD accent
    assert pre_tokens("ＣＵＰ café\u00a0x") == pre_tokens("cup cafe\u0301 x") == expected
    assert pre_tokens("a<|EndOfText|>") == ["a", "<|endoftext|>"]
    tok = get_tokenizer()
    assert tok.encode("ﬁsh  “x”") == tok.encode('fish "x"')  # ftfy's ligatures and quotes


def test_count_includes_start_and_end_and_sees_past_the_context() -> None:
    tok = get_tokenizer()
    assert tok.count("a photo of a cat.") == len(tok.encode("a photo of a cat.")) + 2 == 8
    assert tok.count("") == 2
    assert tok.count("word " * 200) == 202  # what tokenize() would cut to 77


def test_the_piece_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """It kept every pre-token ever seen: a server's posted vocabularies only added up."""
    from ovsam.clip import tokenizer

    monkeypatch.setattr(tokenizer, "CACHE_PIECES", 50)
    tok = tokenizer.Tokenizer()
    words = [f"word{i}" for i in range(200)]
    ids = [tok.encode(w) for w in words]
    assert 0 < len(tok._cache) <= 50
    assert [tok.encode(w) for w in words] == ids == [get_tokenizer().encode(w) for w in words]
