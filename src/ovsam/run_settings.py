"""Settings a resumable job records beside its results (``settings.json``), read back and
compared: ``ovsam eval`` and ``ovsam everything`` refuse to resume with other settings.

Also how every record (those settings, ``segment``'s ``result.json``, ``eval``'s
``metrics.json``) names the model and checkpoint that segmented: a registered name as is, a
file as :func:`file_record` (absolute path + sha256), so that the same file spelled another
way compares equal and a file whose content changed does not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovsam.errors import InputError
from ovsam.fileio import json_safe
from ovsam.weights_cache import remembered_sha256

if TYPE_CHECKING:
    from ovsam.recognizers import LabelOptions

FileRecord = dict[str, str]  # {"path": absolute path, "sha256": hex digest}


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
    """``"key old -> new; ..."`` for every setting that differs between two runs ('' if none);
    a setting that is a mapping in both (a :func:`file_record`) names the keys that differ
    inside it: ``checkpoint.sha256 'ab..' -> 'cd..'``. ``saved`` is read back from a file,
    ``settings`` compared in the form it is written in (:func:`~ovsam.fileio.json_safe`: a
    file name that is not UTF-8 escaped)."""
    return "; ".join(_changes(saved, json_safe(dict(settings)), ""))


def _changes(saved: Mapping[str, Any], settings: Mapping[str, Any], prefix: str) -> list[str]:
    """The changes of :func:`settings_changes`, each key preceded by ``prefix``."""
    changes = []
    for key in sorted(set(saved) | set(settings)):
        old, new = saved.get(key), settings.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changes += _changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key} {old!r} -> {new!r}")
    return changes


def file_record(path: Path) -> FileRecord:
    """``{"path": absolute path, "sha256": hex}`` of the file at ``path`` (hashed once per
    version of the file: :func:`~ovsam.weights_cache.remembered_sha256`; a 1.2 GB checkpoint
    takes a few seconds the first time)."""
    return {"path": str(path.resolve()), "sha256": remembered_sha256(path)}


def checkpoint_record(
    checkpoint: str | Path | None, model: str | None = None
) -> str | FileRecord | None:
    """How a record names ``--checkpoint``: None; a registered weights name by its own name,
    aliases resolved (it always means those weights), and None when it names the default
    weights of the registered ``model`` (the same as no ``--checkpoint``); else the file's
    :func:`file_record`. A missing, empty or folder path is a
    :class:`~ovsam.errors.CheckpointError`, an unknown name a
    :class:`~ovsam.errors.WeightsUnavailableError`, as when the model loads it."""
    from ovsam.build import get_model_entry, is_model_file
    from ovsam.weights import find_weights_spec, resolve_weights

    if checkpoint is None:
        return None
    spec = find_weights_spec(checkpoint) if isinstance(checkpoint, str) else None
    if spec is None:
        return file_record(resolve_weights(checkpoint, progress=False))
    if model is not None and not is_model_file(model):
        default = get_model_entry(model).default_weights
        if default is not None and find_weights_spec(default) == spec:
            return None
    return spec.name


def clip_weights_record(options: LabelOptions | None) -> str | FileRecord | None:
    """How a record names the CLIP weights that embed class names: None without labels, a
    registered tag (``openai``) as is, a file as its :func:`file_record` (so that a resume
    compares its content, not its spelling; a missing file as given: loading it will say)."""
    from ovsam.clip.pretrained import clip_weights_file

    if options is None:
        return None
    path = clip_weights_file(options.clip_model, options.clip_weights)
    if path is None or not path.is_file():
        return str(options.clip_weights)
    return file_record(path)


def model_record(options: LabelOptions | None, sam_model: str) -> str | FileRecord:
    """How a record names the model that segments
    (:func:`~ovsam.recognizers.segmentation_model_name`: ``ovsam_coco`` for the ``ovsam``
    recognizer with a SAM ``sam_model``): a registered name (an alias as the name it stands
    for), an OV-SAM file (``--model model.safetensors``, loaded as the model itself) as its
    :func:`file_record`."""
    from ovsam.build import get_model_entry, is_model_file
    from ovsam.recognizers import segmentation_model_name

    model = segmentation_model_name(options, sam_model)
    if is_model_file(model):
        return file_record(Path(model))
    return get_model_entry(model).name  # aliases resolved: they build the same model


def record_label(record: str | FileRecord | None) -> str | None:
    """The short name of a :func:`model_record` / :func:`checkpoint_record` for ``eval``'s
    table row: a registered name, or the file's name (``model.safetensors``)."""
    return Path(record["path"]).name if isinstance(record, dict) else record
