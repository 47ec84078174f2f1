"""Weights cache integrity: damaged cached files are fetched again, stamps vouch only for
data on disk, ``ovsam download`` re-hashes."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ovsam.checkpoint import read_state_dict
from ovsam.errors import CheckpointError
from ovsam.weights import download_weights
from weights_helpers import PAYLOAD, file_source, toy_spec


def test_corrupted_cache_file_is_replaced_and_the_reason_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    out.write_bytes(b"garbage")  # size/mtime change invalidates the verification stamp
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    again = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=True)
    assert again.read_bytes() == PAYLOAD
    assert f"cached {out} failed its check (size 7 bytes, expected 14000" in err.getvalue()


def test_a_download_is_on_disk_before_its_stamp_vouches_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss after the stamp must not leave a stamp for data that never reached disk."""
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    events: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    real_write = Path.write_text
    monkeypatch.setattr(
        Path, "write_text", lambda p, *a, **k: events.append("stamp") or real_write(p, *a, **k)
    )
    download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert events == ["fsync toy.bin", "fsync weights", "stamp"]


def test_verify_rehashes_a_file_whose_stamp_still_matches(tmp_path: Path) -> None:
    spec = toy_spec((file_source(tmp_path / "good.bin", PAYLOAD),))
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    stat = out.stat()
    out.write_bytes(b"Y" * len(PAYLOAD))  # same size, and the same mtime put back:
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the stamp still matches
    cached = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert cached.read_bytes() != PAYLOAD  # automatic use trusts the stamp...
    download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False, verify=True)
    assert out.read_bytes() == PAYLOAD  # ...an explicit download re-hashes and re-fetches


def _zip_with_a_bad_member_name(state: dict) -> bytes:
    """``torch.save(state)`` whose first directory entry is flagged UTF-8 but starts with a
    byte that is not (one flipped bit's worth of damage: ``ZipFile`` raises
    ``UnicodeDecodeError`` on opening it)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = bytearray(buffer.getvalue())
    entry = data.index(b"PK\x01\x02")
    data[entry + 9] |= 0x08  # general-purpose flag bit 11: the name is UTF-8
    data[entry + 46] = 0xFF
    return bytes(data)


def test_a_zip_with_a_damaged_directory_is_a_checkpoint_error_and_is_fetched_again(
    tmp_path: Path,
) -> None:
    good = {"layer.weight": torch.ones(3, 3)}
    bad = tmp_path / "bad.pth"
    bad.write_bytes(_zip_with_a_bad_member_name(good))
    with pytest.raises(CheckpointError, match=f"^cannot read checkpoint {bad}: "):
        read_state_dict(bad)  # was a UnicodeDecodeError from zipfile
    buffer = io.BytesIO()
    torch.save(good, buffer)
    spec = replace(
        toy_spec((file_source(tmp_path / "good.pth", buffer.getvalue()),), buffer.getvalue()),
        sha256=None,
        size=None,
    )  # no published sha256: checked by content
    out = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    out.write_bytes(bad.read_bytes())
    again = download_weights(spec, cache_dir_override=tmp_path / "cache", progress=False)
    assert torch.equal(read_state_dict(again)["layer.weight"], good["layer.weight"])
