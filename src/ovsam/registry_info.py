"""Human-readable listing of registered weights (cache status, size, licence, description) and
of registered models (aliases, the weights they load); model names as weights names."""

from __future__ import annotations

from collections.abc import Sequence

from ovsam.errors import InputError, WeightsUnavailableError
from ovsam.weights import (
    WeightsSpec,
    cache_status,
    find_weights_spec,
    get_weights_spec,
    list_weights,
)

_HEADER = ("name", "status", "size", "licence", "description")


def _megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def model_weights(model: str) -> list[str]:
    """The registered weights ``build_model(model)`` loads by default (``model``: a registered
    model name or alias, :mod:`ovsam.build`): its ``default_weights``, or for an official
    OV-SAM model every file it is assembled from (:func:`ovsam.ov.official_weights`); ``[]``
    for a model with none. An unknown model is an :class:`~ovsam.errors.InputError`."""
    from ovsam.build import get_model_entry
    from ovsam.ov import official_weights

    entry = get_model_entry(model)
    if entry.default_weights is not None:
        return [entry.default_weights]
    return official_weights(entry.name)


def _specs_of(name: str) -> list[WeightsSpec]:
    """The spec registered under ``name``, else the specs of the model called ``name``
    (:func:`model_weights`); an unknown name is a :class:`WeightsUnavailableError` listing the
    registered weights and models."""
    spec = find_weights_spec(name)
    if spec is not None:
        return [spec]
    from ovsam.build import list_models

    try:
        weights = model_weights(name)
    except InputError:  # no model either
        raise WeightsUnavailableError(
            f"unknown weights {name!r}; registered weights: {', '.join(list_weights())}; "
            f"or a model, for its weights: {', '.join(list_models())}"
        ) from None
    return [get_weights_spec(w) for w in weights]


def weights_specs(names: Sequence[str]) -> list[WeightsSpec]:
    """The specs of ``names`` in order, each once (a name and its alias give one spec); a name
    that is no weights name but a registered model's (``mobilesam``, ``vit_b``, ``ovsam_coco``)
    stands for its weights (:func:`model_weights`). Every name is checked first: an unknown one
    is a :class:`~ovsam.errors.WeightsUnavailableError`."""
    return list({spec.name: spec for name in names for spec in _specs_of(name)}.values())


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


def describe_models() -> list[str]:
    """Per registered model, a line with its name and aliases, then an indented line per
    weights file it loads by default, with that file's cache status (no hashing)."""
    from ovsam.build import get_model_entry, list_models

    lines: list[str] = []
    for model in list_models():
        aliases = ", ".join(get_model_entry(model).aliases)
        lines.append(f"{model} (alias {aliases})" if aliases else model)
        names = model_weights(model)
        width = max(map(len, names), default=0)
        for name in names:
            spec = find_weights_spec(name)
            status = "not registered" if spec is None else cache_status(spec)
            lines.append(f"  {name.ljust(width)}  {status}")
        if not names:
            lines.append("  (no registered weights)")
    return lines
