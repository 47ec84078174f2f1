"""How resumable jobs name the files their results depend on: registered names as is, files by
absolute path + sha256, so that a resume compares content, not spelling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ovsam.recognizers import LabelOptions
from ovsam.run_settings import clip_weights_record, file_record, settings_changes
from ovsam.weight_sources import sha256_file


def test_clip_weights_are_a_tag_or_a_file_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert clip_weights_record(None) is None
    assert clip_weights_record(LabelOptions(clip_model="RN50", clip_weights="openai")) == "openai"
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"weights v1")
    monkeypatch.chdir(tmp_path)
    relative = clip_weights_record(LabelOptions(clip_model="RN50", clip_weights="clip.pt"))
    absolute = clip_weights_record(LabelOptions(clip_model="RN50", clip_weights=str(weights)))
    assert relative == absolute == {"path": str(weights), "sha256": sha256_file(weights)}
    os.symlink(weights, tmp_path / "link.pt")
    assert clip_weights_record(LabelOptions(clip_model="RN50", clip_weights="link.pt")) == absolute
    weights.write_bytes(b"weights v2")
    changed = clip_weights_record(LabelOptions(clip_model="RN50", clip_weights="clip.pt"))
    assert settings_changes({"clip_weights": absolute}, {"clip_weights": changed}).startswith(
        "clip_weights.sha256 "
    )
    missing = LabelOptions(clip_model="RN50", clip_weights="./gone.pt")
    assert clip_weights_record(missing) == "./gone.pt"  # loading it will say it is missing
    assert file_record(weights) == changed


def test_a_large_file_is_hashed_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--checkpoint FILE`` is recorded by sha256 on every command: a large file's digest is
    remembered in the cache for as long as its size, mtime, inode and device stay the same."""
    from ovsam import weights_cache

    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_cache, "REMEMBERED_BYTES", 8)  # "large" from 8 bytes on
    hashed: list[Path] = []
    monkeypatch.setattr(
        weights_cache, "sha256_file", lambda path: hashed.append(path) or sha256_file(path)
    )
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights v1")
    first = file_record(weights)
    assert file_record(weights) == first and len(hashed) == 1  # remembered
    monkeypatch.chdir(tmp_path)
    assert file_record(Path("model.pt")) == first and len(hashed) == 1  # by absolute path
    weights.write_bytes(b"weights v2")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # another version
    assert file_record(weights)["sha256"] == sha256_file(weights) != first["sha256"]
    other = tmp_path / "copy.pt"
    other.write_bytes(b"weights v3")
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same size and mtime ...
    os.replace(other, weights)  # ... but another inode
    assert file_record(weights)["sha256"] == sha256_file(weights)
    assert len(hashed) == 3
    small = tmp_path / "small.pt"
    small.write_bytes(b"tiny")  # below REMEMBERED_BYTES: hashed every time, never remembered
    for _ in range(2):
        file_record(small)
    assert hashed[-2:] == [small, small]
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "not-a-folder"))  # unwritable cache
    assert file_record(weights)["sha256"] == sha256_file(weights)


def test_a_file_in_a_folder_whose_name_is_not_utf8_is_recorded_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its path's lone surrogates raised UnicodeEncodeError when the digest was remembered."""
    from ovsam import weights_cache

    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_cache, "REMEMBERED_BYTES", 8)
    hashed: list[Path] = []
    monkeypatch.setattr(
        weights_cache, "sha256_file", lambda path: hashed.append(path) or sha256_file(path)
    )
    folder = tmp_path / os.fsdecode(b"w\xe9ights")
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"weights v1")
    first = file_record(folder / "model.pt")
    assert first["sha256"] == sha256_file(folder / "model.pt")
    assert file_record(folder / "model.pt") == first and len(hashed) == 1  # remembered


def test_a_registered_model_or_weights_counts_by_its_name_not_its_spelling() -> None:
    """`--model vit_t` (mobilesam's alias) and `--checkpoint mobile_sam` (its default weights)
    make the same masks as the defaults, but a resume refused them as other settings."""
    from ovsam.run_settings import checkpoint_record, model_record

    assert model_record(None, "vit_t") == model_record(None, "mobilesam") == "mobilesam"
    for spelling in ("mobile_sam", "vit_t"):  # the weights' name and alias
        assert checkpoint_record(spelling, "mobilesam") is None  # the model's own default
        assert checkpoint_record(spelling, "vit_t") is None
        assert checkpoint_record(spelling) == "mobile_sam"  # no model to compare with
    assert checkpoint_record("mobile_sam", "sam_vit_b") == "mobile_sam"  # not its default
    assert checkpoint_record(None, "mobilesam") is None
