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
