"""``ovsam download`` / ``ovsam models`` / ``--checkpoint``: cache use, listing, one-line errors."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import ovsam.build as build
from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.cli.main import main
from ovsam.weights import UrlSource, WeightsSpec, get_weights_spec
from weights_helpers import PAYLOAD, file_source, forbid_cache_writes, register, toy_spec


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache in ``tmp_path/cache`` (``$OVSAM_CACHE_DIR``); the test runs in tmp_path."""
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


def _toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "toy") -> WeightsSpec:
    spec = toy_spec((file_source(tmp_path / f"{name}-source.bin", PAYLOAD),), name=name)
    register(monkeypatch, spec)
    return spec


def _one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_every_name_is_tried_and_all_failures_reported(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    bad_a = toy_spec((UrlSource((tmp_path / "gone-a").as_uri()),), name="bad_a")
    bad_b = toy_spec((UrlSource((tmp_path / "gone-b").as_uri()),), name="bad_b")
    register(monkeypatch, bad_a, bad_b)
    _toy(tmp_path, monkeypatch)
    assert main(["download", "bad_a", "toy", "bad_b", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out.strip() == str(cache / "weights" / "toy.bin")
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("ovsam download: error: could not obtain weights 'bad_a'")
    assert lines[1].startswith("ovsam download: error: could not obtain weights 'bad_b'")
    assert "'ovsam download bad_b --from FILE'" in lines[1]
    assert lines[2] == "ovsam download: 2 of 3 weights failed: bad_a, bad_b"


def test_download_rehashes_the_cached_file(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _toy(tmp_path, monkeypatch)
    assert main(["download", "toy", "--quiet"]) == 0
    cached = cache / "weights" / "toy.bin"
    stat = cached.stat()
    cached.write_bytes(b"Q" * len(PAYLOAD))  # same size and mtime: the stamp still matches
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    assert main(["download", "toy"]) == 0
    assert cached.read_bytes() == PAYLOAD
    assert "failed its check (sha256 " in capsys.readouterr().err


def test_registered_name_is_not_shadowed_by_a_local_file(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _toy(tmp_path, monkeypatch)
    (tmp_path / "toy").write_bytes(b"junk")
    assert main(["download", "toy", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "weights" / "toy.bin")


def test_read_only_cache(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _toy(tmp_path, monkeypatch)
    assert main(["download", "toy", "--quiet"]) == 0
    _toy(tmp_path, monkeypatch, "cold")
    capsys.readouterr()
    forbid_cache_writes(monkeypatch)
    assert main(["download", "toy"]) == 0  # present and verified: no write needed
    assert main(["download", "cold", "--quiet"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"ovsam download: error: cache folder {cache / 'weights'} is not writable: "
        "set OVSAM_CACHE_DIR to a writable folder"
    )


def test_relative_cache_dir_is_refused(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("OVSAM_CACHE_DIR", "relcache")
    assert main(["download", "mobile_sam"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "ovsam download: error: OVSAM_CACHE_DIR must be an absolute path, got 'relcache'"
    )


def test_from_copies_a_verified_file_into_the_cache(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    spec = toy_spec((), name="toy")  # no source at all: --from is the only way in
    register(monkeypatch, spec)
    (tmp_path / "mine.bin").write_bytes(PAYLOAD[:-1] + b"!")
    assert main(["download", "toy", "--from", "mine.bin"]) == 2
    assert "mine.bin is not toy: sha256" in _one_line(capsys.readouterr().err)
    assert main(["download", "toy", "--from", "nothing.bin"]) == 2
    assert "nothing.bin is not found" in _one_line(capsys.readouterr().err)
    (tmp_path / "mine.bin").write_bytes(PAYLOAD)
    assert main(["download", "toy", "--from", "mine.bin"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "weights" / "toy.bin")
    assert main(["download", "toy", "--quiet"]) == 0  # cached now, no source needed
    for argv in (["toy", "mobile_sam", "--from", "mine.bin"], ["--list", "--from", "mine.bin"]):
        assert main(["download", *argv]) == 2
        _one_line(capsys.readouterr().err)


@pytest.fixture()
def unhashed(monkeypatch: pytest.MonkeyPatch) -> WeightsSpec:
    """Weights ``toy_net_w`` without sha256 or size, the default weights of a registered model
    ``toy_net`` (an ``nn.Linear(3, 2)``), both registered for the duration of the test."""
    build.list_models()  # registers the ovsam_* models in the real registry, not the copies
    monkeypatch.setattr(build, "_MODELS", dict(build._MODELS))
    monkeypatch.setattr(build, "_ALIASES", dict(build._ALIASES))
    build.register_model("toy_net", lambda: nn.Linear(3, 2), default_weights="toy_net_w")
    spec = WeightsSpec("toy_net_w", "toy_net_w.pt", sha256=None, size=None, sources=())
    register(monkeypatch, spec)
    return spec


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (nn.Linear(3, 3).state_dict(), "2 shape mismatches: bias: checkpoint (3,) vs model (2,), "
         "weight: checkpoint (3, 3) vs model (2, 3)"),
        ({"w": torch.zeros(2, 3), "weight": torch.zeros(2, 3)},
         "1 missing keys: bias; 1 unexpected keys: w"),
    ],
)  # fmt: skip
def test_from_without_a_sha256_must_fit_the_model_of_the_weights(
    cache: Path, tmp_path: Path, unhashed: WeightsSpec, capsys: pytest.CaptureFixture,
    state: dict, expected: str,
) -> None:  # fmt: skip
    torch.save(state, tmp_path / "mine.pt")
    assert main(["download", "toy_net_w", "--from", "mine.pt"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "ovsam download: error: mine.pt is not toy_net_w: it does not fit model toy_net "
        f"({expected})"
    )
    assert not (cache / "weights").exists()  # nothing copied, not even a lock
    assert main(["download", "--list", "toy_net_w"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["toy_net_w", "not", "downloaded"]


@pytest.mark.parametrize("zip_format", [True, False])  # memory-mapped / read as a pickle
def test_from_without_a_sha256_accepts_a_file_that_fits(
    cache: Path, tmp_path: Path, unhashed: WeightsSpec, capsys: pytest.CaptureFixture,
    zip_format: bool,
) -> None:  # fmt: skip
    state = nn.Linear(3, 2).state_dict()
    torch.save(state, tmp_path / "mine.pt", _use_new_zipfile_serialization=zip_format)
    assert main(["download", "toy_net_w", "--from", "mine.pt"]) == 0
    assert "toy_net_w.pt: keys and shapes fit model toy_net" in capsys.readouterr().err
    assert torch.equal(torch.load(cache / "weights" / "toy_net_w.pt")["weight"], state["weight"])
    assert main(["download", "--list", "toy_net_w"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["toy_net_w", "cached"]


def test_a_download_without_a_sha256_must_fit_the_model_too(
    cache: Path, tmp_path: Path, unhashed: WeightsSpec, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "wrong.pt")
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "right.pt")
    sources = tuple(UrlSource((tmp_path / f).as_uri()) for f in ("wrong.pt", "right.pt"))
    register(monkeypatch, replace(unhashed, sources=sources))
    assert main(["download", "toy_net_w"]) == 0
    err = capsys.readouterr().err
    assert "does not fit model toy_net (2 shape mismatches" in err
    assert "(WeightsUnavailableError: the download is not toy_net_w: it does not fit" in err
    assert ".tmp" not in err  # the temporary file, already deleted, was named
    assert "trying the next source" in err
    assert "toy_net_w.pt: keys and shapes fit model toy_net" not in err  # said only by --from
    assert torch.load(cache / "weights" / "toy_net_w.pt")["weight"].shape == (2, 3)


def test_a_cached_file_without_a_sha256_is_checked_by_content_before_it_is_trusted(
    cache: Path, unhashed: WeightsSpec, capsys: pytest.CaptureFixture
) -> None:
    """A file put in the cache by hand (or damaged there) was stamped as verified unread, and
    every model load failed later; now it is checked as a download is, once."""
    cached = cache / "weights" / "toy_net_w.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not weights")
    assert main(["download", "toy_net_w"]) == 2  # no source to fetch it again from
    err = capsys.readouterr().err
    assert f"cached {cached} failed its check ({cached} is not toy_net_w: cannot read" in err
    assert "could not obtain weights 'toy_net_w' from any source (no sources registered)" in err
    assert not cached.exists()  # the bad file is not kept
    torch.save(nn.Linear(3, 2).state_dict(), cached)  # a good one, by hand
    assert main(["download", "toy_net_w"]) == 0 and capsys.readouterr().err == ""
    assert main(["download", "--list", "toy_net_w"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["toy_net_w", "cached"]


def test_from_without_a_sha256_or_a_model_must_be_a_state_dict(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    spec = WeightsSpec("loose_w", "loose_w.bin", sha256=None, size=None, sources=())
    register(monkeypatch, spec)  # no registered model has it as its weights
    mine = tmp_path / "mine.bin"
    mine.write_text("not weights")
    assert main(["download", "loose_w", "--from", "mine.bin"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("ovsam download: error: mine.bin is not loose_w: cannot read checkpoint")
    assert "not a PyTorch checkpoint" in line
    torch.save({"step": 3}, mine)
    assert main(["download", "loose_w", "--from", "mine.bin"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "ovsam download: error: mine.bin is not loose_w: mine.bin does not hold a state dict of "
        "tensors"
    )
    assert not (cache / "weights").exists()
    torch.save({"w": torch.ones(2)}, mine)
    assert main(["download", "loose_w", "--from", "mine.bin"]) == 0
    assert "loose_w.bin: loads as a state dict of tensors" in capsys.readouterr().err


def test_from_mobilesam_weights_are_refused_as_sam_vit_b(
    mobilesam_checkpoint: Path,
    cache: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["download", "sam_vit_b_01ec64", "--from", str(mobilesam_checkpoint)]
    assert main(argv) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"ovsam download: error: {mobilesam_checkpoint} is not sam_vit_b_01ec64: size 40728226 "
        "bytes, expected 375042383 (truncated or wrong file)"
    )
    # weights a registered model loads but without a published sha256 must fit that model
    register(monkeypatch, replace(get_weights_spec("sam_vit_b_01ec64"), sha256=None, size=None))
    assert main(argv) == 2
    assert _one_line(capsys.readouterr().err).startswith(
        f"ovsam download: error: {mobilesam_checkpoint} is not sam_vit_b_01ec64: it does not fit "
        "model sam_vit_b (171 missing keys: image_encoder.blocks.0.attn.proj.bias, "
    )
    assert not (cache / "weights" / "sam_vit_b_01ec64.pth").exists()


def test_listing_shows_status_size_and_licence(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "mobile_sam.pt").write_bytes(os.urandom(100))
    assert main(["download", "--list", "mobile_sam", "vit_t", "ovsam_clip2sam_coco_rn50x16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "status", "size", "licence", "description"]
    assert lines[1].split()[:5] == ["mobile_sam", "wrong", "size", "40.7", "MB"]
    assert len(lines) == 3  # vit_t is mobile_sam's alias: listed once
    assert "NTU S-Lab License 1.0 (non-commercial)" in lines[2]
    # columns as wide as their content, two spaces apart
    assert lines[0].index("status") == len("ovsam_clip2sam_coco_rn50x16") + 2
    assert lines[0].index("size") == lines[0].index("status") + len("not downloaded") + 2
    assert main(["download", "--list", "nope"]) == 2
    assert "unknown weights 'nope'" in _one_line(capsys.readouterr().err)


def test_models_shows_cached_only_for_a_verified_file(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    spec = _toy(tmp_path, monkeypatch)
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / spec.filename).write_bytes(b"Z" * len(PAYLOAD))

    def toy_row() -> list[str]:
        assert main(["models"]) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        return next(row for row in rows if row[0] == "toy")

    assert toy_row() == ["toy", "cached", "(unverified)", "0.0", "MB"]  # right size, not hashed
    assert main(["download", "toy", "--quiet"]) == 0  # hashed: wrong bytes, fetched again
    capsys.readouterr()
    assert toy_row() == ["toy", "cached", "0.0", "MB"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (None, "checkpoint file not found: {path}"),
        (lambda p: p.mkdir(), "checkpoint {path} is a folder"),
        (lambda p: p.write_bytes(b""), "checkpoint {path} is empty"),
        (lambda p: p.write_text("hello"), "checkpoint {path} is not a PyTorch checkpoint ("),
    ],
)
def test_checkpoint_option_errors_are_one_line(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, make: object, expected: str
) -> None:
    path = tmp_path / "x.pt"
    if make is not None:
        make(path)  # type: ignore[operator]
    box = [str(v) for v in SAMPLE_BOX]
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *box, "--out", "out", "--checkpoint", str(path)]
    assert main(argv) == 2
    assert _one_line(capsys.readouterr().err).startswith(
        "ovsam segment: error: " + expected.format(path=path)
    )
