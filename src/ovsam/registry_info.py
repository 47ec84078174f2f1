"""Human-readable listing of registered weights: cache status, size, licence, description."""

from __future__ import annotations

from collections.abc import Sequence

from ovsam.weights import WeightsSpec, cache_status, get_weights_spec, list_weights

_HEADER = ("name", "status", "size", "licence", "description")


def _megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def weights_specs(names: Sequence[str]) -> list[WeightsSpec]:
    """The specs of ``names`` in order, each once (a name and its alias give one spec); every
    name is checked first (:func:`ovsam.weights.get_weights_spec` raises for an unknown one)."""
    return list({spec.name: spec for spec in map(get_weights_spec, names)}.values())


def describe_weights(names: Sequence[str] | None = None) -> list[str]:
    """A header and one line per weights entry (:func:`weights_specs` of ``names``, or every
    registered one): name, cache status (:func:`ovsam.weights.cache_status`, no hashing),
    size in MB (``?`` where unpublished), licence and description. Columns are as wide as
    their content. An unknown name raises :class:`~ovsam.errors.WeightsUnavailableError`."""
    specs = weights_specs(list_weights() if names is None else names)
    rows = [_HEADER] + [
        (spec.name, cache_status(spec), _megabytes(spec.size), spec.license, spec.description)
        for spec in specs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    widths[-1] = 0  # the description is not padded
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
