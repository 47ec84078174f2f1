"""CLIP side of ovsam: tokenizer, text-embedding banks and zero-shot region classification."""
