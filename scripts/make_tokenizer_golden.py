"""Write tests/data/tokenizer_golden.json: token ids from OpenAI's reference tokenizer.

Usage: .venv/bin/python scripts/make_tokenizer_golden.py
Needs ``clip-anytorch`` (installed by scripts/setup.sh with --no-deps) plus ftfy and regex. Its
``simple_tokenizer.py`` is loaded by file path, because ``clip/__init__.py`` imports torchvision.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizer_golden.json"

STRINGS = [
    "", "a photo of a cat.", "A PHOTO OF A DOG!", "This is a photo of a {}", "hello, world",
    "it's a dog's life; they're here, we've gone, I'm ok, you'll see, he'd know",
    "café crème brûlée", "naïve façade coöperate", "Ångström Ørsted Łódź", "straße Größe",
    "東京タワー", "猫が好きです", "고양이", "кошка и собака", "γάτα", "القط", "बिल्ली",
    "emoji 🐱🐶🚀 end", "👩‍👩‍👧‍👦 family", "tabs\tand\nnew\r\nlines", "   leading and trailing   ",
    "multiple     spaces", "&amp; &lt;tag&gt; &quot;quoted&quot; &amp;amp;", "Tom &amp; Jerry",
    "numbers 1234567890 3.14159 -42 1e10", "version v1.2.3-beta+build.5", "50% off!!! $9.99",
    "e-mail: someone@example.com", "https://example.com/path?q=1&r=2", "C++ and C# and F#",
    "snake_case and camelCase and kebab-case", "under_score__double", "hot-dog / hot dog",
    "teddy_bear", "traffic light", "fire hydrant", "baseball glove", "wine glass",
    "potted plant", "cell phone", "hair drier", "toothbrush",
    "(parentheses) [brackets] {braces} <angles>", "quotes \"double\" 'single' `back`",
    "ellipsis... and — em dash – en dash", "mojibake cafÃ© crÃ¨me", "fullwidth ＡＢＣ１２３",
    "ligature ﬁ ﬂ", "zero\u200bwidth space", "combining e\u0301 accent",
    "a " * 40, "supercalifragilisticexpialidocious " * 6,
    "<|startoftext|> special <|endoftext|>", "ALL CAPS SENTENCE WITH MANY WORDS IN IT",
    "a photo of the large {}.", "itap of a {}.", "a bad photo of the {}.",
]  # fmt: skip


def load_reference() -> object:
    spec = importlib.util.find_spec("clip")
    if spec is None or spec.origin is None:
        raise SystemExit("clip-anytorch is not installed")
    path = Path(spec.origin).parent / "simple_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("clip_reference_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(path.parent / "bpe_simple_vocab_16e6.txt.gz"))


def main() -> int:
    reference = load_reference()
    golden = [{"text": s, "ids": reference.encode(s)} for s in STRINGS]
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(json.dumps(golden, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {len(golden)} reference encodings to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
