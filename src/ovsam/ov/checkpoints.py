"""OV-SAM weights: the official release (four files, key-mapped) and our one-file format.

Official files (Hugging Face repo ``HarborYuan/ovsam_models``; no sha256 is published, loading
is strict instead):

===================================  ==================================  ====================
file                                 keys                                goes to
===================================  ==================================  ====================
``sam2clip_vith_rn50x16.pth``        ``neck_student.*``                  ``image_encoder.neck``
``clip2sam_{coco,lvis}_rn50x16.pth`` ``fpn_neck.*``, ``mask_decoder.*``  same names
OpenAI ``RN50x16.pt``                ``visual.*`` (TorchScript archive)  ``image_encoder.backbone``
SAM ``sam_vit_h_4b8939.pth``         ``prompt_encoder.*`` (others unused) ``prompt_encoder``
===================================  ==================================  ====================

Our format is one ``.safetensors`` file holding every tensor under our key names plus the
:class:`~ovsam.ov.model.OVSamConfig` as JSON metadata, so ``load_ovsam(path)`` (and
``ovsam.build_model(path)``) need nothing else.
"""

from __future__ import annotations

import functools
import json
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import torch

from ovsam.checkpoint import load_state_dict_strict, read_state_dict, weights_to_be_loaded
from ovsam.clip.factory import read_clip_state_dict
from ovsam.clip.pretrained import pretrained_weights_name
from ovsam.errors import CheckpointError, InputError, WeightsUnavailableError, first_line
from ovsam.fileio import atomic_path
from ovsam.ov.model import OVSam, OVSamConfig, build_ovsam
from ovsam.weights import (
    SourcesFailed,
    UrlSource,
    WeightsSpec,
    register_weights,
    resolve_weights,
)

FORMAT = "ovsam-checkpoint-1"
_HF = "https://huggingface.co/HarborYuan/ovsam_models/resolve/main/"
#: the keys of the official part files that :func:`official_state_dict` takes (each must be
#: there: ``ovsam download`` checks a file by them, as no sha256 is published)
SAM2CLIP_PREFIXES = ("neck_student.",)
CLIP2SAM_PREFIXES = ("fpn_neck.", "mask_decoder.")


def _register(name: str, file: str, description: str, key_prefixes: tuple[str, ...]) -> str:
    return register_weights(
        WeightsSpec(
            name=name,
            filename=file,
            sha256=None,
            size=None,
            sources=(UrlSource(_HF + file),),
            license="NTU S-Lab License 1.0 (non-commercial)",
            description=description,
            key_prefixes=key_prefixes,
        )
    ).name


SAM2CLIP = _register(
    "ovsam_sam2clip_vith_rn50x16",
    "sam2clip_vith_rn50x16.pth",
    "OV-SAM SAM2CLIP adapter (RN50x16 student of SAM ViT-H)",
    SAM2CLIP_PREFIXES,
)
CLIP2SAM = {
    "coco": _register(
        "ovsam_clip2sam_coco_rn50x16",
        "clip2sam_coco_rn50x16.pth",
        "OV-SAM CLIP2SAM decoder + FPN trained on COCO base classes",
        CLIP2SAM_PREFIXES,
    ),
    "lvis": _register(
        "ovsam_clip2sam_lvis_rn50x16",
        "clip2sam_lvis_rn50x16.pth",
        "OV-SAM CLIP2SAM decoder + FPN trained on LVIS base classes",
        CLIP2SAM_PREFIXES,
    ),
}
SAM_VIT_H = "sam_vit_h_4b8939"


#: how :func:`~ovsam.weights.resolve_weights` begins a plain "every source failed" message
_ALL_SOURCES_FAILED = "could not obtain weights"


class WeightsMissing(WeightsUnavailableError):
    """Registered weights that could not be obtained; ``missing`` names every one, ``reason``
    is the first line of the first failure that was more than "every source failed" (e.g.
    an unwritable cache folder), else why the first source of each failed, one entry per
    distinct reason naming its hosts (:func:`source_failures_text`), or ''."""

    def __init__(self, what: str, missing: Sequence[str], reason: str = "") -> None:
        self.missing = tuple(missing)
        self.reason = reason
        names = ", ".join(self.missing)
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"{what}: {names} could not be obtained{why}; get them with "
            f"'ovsam download {' '.join(self.missing)}'"
        )


def resolve_all(names: Sequence[str], what: str = "weights", progress: bool = True) -> list[Path]:
    """Local files of the registered weights ``names`` (fetched into the cache on first use);
    :class:`WeightsMissing` (one line, ``what`` first) names every one that cannot be had,
    with the first reason that is not a plain "all sources failed", else the first source's
    failure (shortened)."""
    files: list[Path] = []
    missing: list[str] = []
    reasons: list[str] = []
    source_failures: list[tuple[str, str]] = []
    for name in names:
        try:
            files.append(resolve_weights(name, progress=progress))
        except WeightsUnavailableError as exc:
            missing.append(name)
            line = first_line(exc)
            if isinstance(exc, SourcesFailed):
                if (failure := exc.first_source_failure()) is not None:
                    source_failures.append(failure)
            elif line and not line.startswith(_ALL_SOURCES_FAILED):
                reasons.append(line)
    if missing:
        reason = reasons[0] if reasons else source_failures_text(source_failures)
        raise WeightsMissing(what, missing, reason)
    return files


def source_failures_text(failures: Sequence[tuple[str, str]], width: int = 120) -> str:
    """``(host, reason)`` pairs as one text, one entry per distinct reason (shortened to
    ``width`` characters) after the hosts it came from, in order: ``a.org, b.org: URLError:
    ...; c.org: HTTP Error 404``."""
    hosts: dict[str, list[str]] = {}
    for host, reason in failures:
        if host not in hosts.setdefault(reason, []):
            hosts[reason].append(host)
    return "; ".join(
        f"{', '.join(where)}: {textwrap.shorten(reason, width, placeholder=' ...')}"
        for reason, where in hosts.items()
    )


def official_weights_names(dataset: str = "coco", clip_model: str = "RN50x16") -> list[str]:
    """The registered weights the official OV-SAM of ``dataset`` (coco, lvis) is built from."""
    if dataset not in CLIP2SAM:
        known = ", ".join(CLIP2SAM)
        raise InputError(f"no official OV-SAM release for dataset {dataset!r} (known: {known})")
    return [SAM2CLIP, CLIP2SAM[dataset], pretrained_weights_name(clip_model, "openai"), SAM_VIT_H]


def take_prefix(
    state: Mapping[str, torch.Tensor], prefix: str, new_prefix: str
) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, renamed to start with ``new_prefix``."""
    return {new_prefix + k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_adapter_state(source: str | Path) -> dict[str, torch.Tensor]:
    """A SAM2CLIP adapter's state dict (:class:`~ovsam.ov.sam2clip.SAM2CLIPAdapter` keys) from
    registered weights (the official ``ovsam_sam2clip_vith_rn50x16``: fetched, verified), the
    official file (keys under ``neck_student.``) or a file of adapter keys (a sam2clip run's
    ``step_N.pt``)."""
    from ovsam.weights import resolve_weights

    state = read_state_dict(resolve_weights(source))
    (neck,) = SAM2CLIP_PREFIXES
    return take_prefix(state, neck, "") or state


def official_state_dict(
    sam2clip: str | Path, clip2sam: str | Path, clip: str | Path, sam: str | Path
) -> dict[str, torch.Tensor]:
    """Our state dict assembled from the four official files (see the module docstring)."""
    adapter = read_state_dict(sam2clip)
    decoder = read_state_dict(clip2sam)
    (neck,) = SAM2CLIP_PREFIXES
    state = take_prefix(adapter, neck, "image_encoder.neck.")
    if not state:
        raise CheckpointError(f"{sam2clip} has no '{neck}*' keys: not a SAM2CLIP checkpoint")
    head = {k: v for p in CLIP2SAM_PREFIXES for k, v in take_prefix(decoder, p, p).items()}
    if not head:
        keys = "/".join(f"'{p}*'" for p in CLIP2SAM_PREFIXES)
        raise CheckpointError(f"{clip2sam} has no {keys} keys: not a CLIP2SAM checkpoint")
    state |= head
    state |= take_prefix(read_clip_state_dict(clip), "visual.", "image_encoder.backbone.")
    # mapped, not read: 2.4 GB of SAM ViT-H for its few KB of prompt encoder
    state |= take_prefix(read_state_dict(sam, mmap=True), "prompt_encoder.", "prompt_encoder.")
    return state


def load_official_ovsam(model: OVSam, dataset: str = "coco", progress: bool = True) -> OVSam:
    """Fetch (cache, verify) the four official files for ``dataset`` and load them strictly.

    Raises :class:`WeightsMissing` naming every file that cannot be had (e.g. offline) and
    the one ``ovsam download`` command that fetches them.
    """
    names = official_weights_names(dataset, model.config.clip_model)
    files = resolve_all(names, "OV-SAM weights missing", progress)
    load_state_dict_strict(
        model, official_state_dict(*files), source=", ".join(str(f) for f in files)
    )
    return model.eval()


def save_ovsam(model: OVSam, path: str | Path) -> Path:
    """Write ``model`` (weights + config) as one safetensors file, atomically, with the
    permissions of the other outputs (:mod:`ovsam.fileio`: the umask's, or an old file's).
    Written by ``save_file``, which streams the tensors: serialising to bytes first would hold
    a second copy of the weights (about 1.2 GB for RN50x16)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict())}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), meta)  # streams (into a new file, which atomic_path chmods)
    return path


def _ovsam_metadata(path: str | Path) -> dict[str, str] | None:
    """The header metadata of a safetensors file written by :func:`save_ovsam`; None for
    anything else (another or unreadable file, a name, no file)."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return None
    return meta if meta.get("format") == FORMAT else None


def is_ovsam_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file written by :func:`save_ovsam`."""
    return _ovsam_metadata(path) is not None


def load_ovsam(path: str | Path) -> OVSam:
    """Build and strictly load an OV-SAM saved by :func:`save_ovsam`."""
    config = ovsam_checkpoint_config(path)
    if config is None:
        raise CheckpointError(
            f"{path} is not an ovsam checkpoint (safetensors with format {FORMAT!r})"
        )
    state = read_state_dict(path)
    with weights_to_be_loaded():
        model = build_ovsam(config)
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()


def ovsam_checkpoint_config(path: str | Path) -> OVSamConfig | None:
    """The :class:`OVSamConfig` recorded in a file written by :func:`save_ovsam` (read from its
    header, no weights loaded); None for anything else (another file, a name, no file).
    Settings this version does not know (written by a newer one) are ignored with a warning
    naming them; a damaged config is a :class:`CheckpointError`. A file is read again only
    once it changes (a command asks several times: for its defaults, checks and the load)."""
    if Path(path).suffix != ".safetensors":
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return _recorded_config(str(path), str(Path(path).resolve()), version)


@functools.lru_cache(maxsize=16)
def _recorded_config(path: str, target: str, version: tuple[int, ...]) -> OVSamConfig | None:
    """:func:`ovsam_checkpoint_config` of ``path`` (named so in messages), the file ``target``
    as it is at ``version`` (its stat)."""
    meta = _ovsam_metadata(path)
    if meta is None:
        return None
    try:  # not JSON, not an object, or settings of the wrong type or range (ValueError)
        recorded = json.loads(meta["config"])
        if not isinstance(recorded, dict):
            raise ValueError(f"a JSON {type(recorded).__name__}, not an object")
        known = {f.name for f in fields(OVSamConfig)}
        unknown = sorted(set(recorded) - known)
        if unknown:
            warnings.warn(
                f"{path} records settings this ovsam does not know, ignored: "
                f"{', '.join(unknown)} (written by a newer ovsam?)",
                stacklevel=3,
            )
        return OVSamConfig(**{k: v for k, v in recorded.items() if k in known})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is an ovsam checkpoint whose recorded config is damaged ({first_line(exc)})"
        ) from exc
