"""Human-readable listing of registered weights and whether each is in the cache."""

from __future__ import annotations

from ovsam.weights import cache_dir, get_weights_spec, list_weights


def describe_weights() -> list[str]:
    """One line per registered weights entry: name, cache status, licence, description."""
    lines = []
    names = list_weights()
    width = max(len(n) for n in names)
    for name in names:
        spec = get_weights_spec(name)
        cached = (cache_dir() / "weights" / spec.filename).is_file()
        status = "cached" if cached else "not downloaded"
        lines.append(f"{name:{width}s} {status:15s} {spec.license:12s} {spec.description}")
    return lines
