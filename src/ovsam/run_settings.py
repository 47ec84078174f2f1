"""Settings a resumable job records beside its results (``settings.json``), read back and
compared: ``ovsam eval`` and ``ovsam everything`` refuse to resume with other settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ovsam.errors import InputError


def read_settings(path: Path, hint: str) -> dict[str, Any]:
    """The JSON object of settings in ``path``; an unreadable file or another JSON value is an
    :class:`InputError` ending with ``hint`` (what the user can do instead)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} ({exc}): {hint}") from exc
    if not isinstance(saved, dict):
        raise InputError(f"{path} is not a JSON object of settings: {hint}")
    return saved


def settings_changes(saved: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """``"key old -> new; ..."`` for every setting that differs between two runs ('' if none)."""
    return "; ".join(
        f"{key} {saved.get(key)!r} -> {settings.get(key)!r}"
        for key in sorted(set(saved) | set(settings))
        if saved.get(key) != settings.get(key)
    )
