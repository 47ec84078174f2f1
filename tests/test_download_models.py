"""``ovsam download``: failures said as they happen, model names as weights names, the OV-SAM
part files checked by their keys; ``ovsam models``: aliases and weights per model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ovsam.cli.main import main
from ovsam.registry_info import weights_specs
from ovsam.weights import UrlSource
from weights_helpers import PAYLOAD, file_source, register, toy_spec


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache in ``tmp_path/cache`` (``$OVSAM_CACHE_DIR``); the test runs in tmp_path."""
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


@dataclass(frozen=True)
class _Interrupted:
    """A source whose download the user interrupts (Ctrl-C)."""

    def describe(self) -> str:
        return "a slow mirror"

    def fetch(self, dest: Path, name: str, progress: bool) -> None:
        raise KeyboardInterrupt


def test_a_failure_is_said_before_a_later_interrupt(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    bad = toy_spec((UrlSource((tmp_path / "gone").as_uri()),), name="bad")
    register(monkeypatch, bad, toy_spec((_Interrupted(),), name="slow"))
    assert main(["download", "bad", "slow", "--quiet"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("ovsam download: error: could not obtain weights 'bad' from any")
    assert lines[-1] == "interrupted"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mobilesam", ["mobile_sam"]),
        ("vit_b", ["sam_vit_b_01ec64"]),
        ("sam_vit_h", ["sam_vit_h_4b8939"]),
        ("ovsam_lvis_rn50x16", ["ovsam_sam2clip_vith_rn50x16", "ovsam_clip2sam_lvis_rn50x16",
                                "clip_RN50x16_openai", "sam_vit_h_4b8939"]),
    ],
)  # fmt: skip
def test_a_model_name_stands_for_its_weights(name: str, expected: list[str]) -> None:
    assert [spec.name for spec in weights_specs([name])] == expected


def test_download_a_model_by_name(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    register(
        monkeypatch, toy_spec((file_source(tmp_path / "src.bin", PAYLOAD),), name="mobile_sam")
    )
    assert main(["download", "mobilesam", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "weights" / "mobile_sam.bin")
    assert main(["download", "--list", "mobilesam", "mobile_sam"]) == 0  # one entry
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["mobile_sam", "cached"]  # header + 1


def test_from_with_a_model_of_several_files_names_them(
    cache: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["download", "ovsam_coco", "--from", "part.pth"]) == 2
    assert capsys.readouterr().err.strip() == (
        "ovsam download: error: --from FILE adds one weights file, but ovsam_coco loads 4: name "
        "one of ovsam_sam2clip_vith_rn50x16, ovsam_clip2sam_coco_rn50x16, clip_RN50x16_openai, "
        "sam_vit_h_4b8939"
    )


def test_an_unknown_name_lists_weights_and_models(
    cache: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["download", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such file" not in err
    assert err.startswith("ovsam download: error: unknown weights 'nope'; registered weights: ")
    assert "or a model, for its weights: mobilesam, sam_vit_b," in err


def test_models_lists_aliases_and_weights_with_their_status(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    register(
        monkeypatch, toy_spec((file_source(tmp_path / "src.bin", PAYLOAD),), name="mobile_sam")
    )
    assert main(["download", "mobile_sam", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines.index("  mobilesam (alias vit_t)")
    assert lines[first + 1].split() == ["mobile_sam", "cached"]
    coco = lines.index("  ovsam_coco (alias ovsam_coco_rn50x16)")
    assert [line.split()[0] for line in lines[coco + 1 : coco + 5]] == [
        "ovsam_sam2clip_vith_rn50x16", "ovsam_clip2sam_coco_rn50x16", "clip_RN50x16_openai",
        "sam_vit_h_4b8939",
    ]  # fmt: skip
    assert lines[coco + 1].split()[1:] == ["not", "downloaded"]


@pytest.mark.parametrize(
    ("name", "keys", "missing"),
    [
        ("ovsam_sam2clip_vith_rn50x16", ["mask_decoder.w", "image_encoder.w"], "'neck_student.*'"),
        ("ovsam_clip2sam_coco_rn50x16", ["mask_decoder.w", "image_encoder.w"], "'fpn_neck.*'"),
        ("ovsam_clip2sam_lvis_rn50x16", ["neck_student.w"], "'fpn_neck.*', 'mask_decoder.*'"),
    ],
)
def test_from_refuses_another_file_as_an_ovsam_part(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, keys: list[str],
    missing: str,
) -> None:  # fmt: skip
    torch.save({key: torch.zeros(2) for key in keys}, tmp_path / "mobile_sam.pt")  # e.g. SAM's
    assert main(["download", name, "--from", "mobile_sam.pt"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ovsam download: error: mobile_sam.pt is not {name}: it has no {missing} keys"
    )
    assert not (cache / "weights").exists()  # nothing copied: never listed as cached


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("ovsam_sam2clip_vith_rn50x16", ["neck_student.conv.weight"]),
        ("ovsam_clip2sam_coco_rn50x16", ["fpn_neck.w", "mask_decoder.w"]),
    ],
)
def test_from_accepts_a_file_with_the_part_keys(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, keys: list[str]
) -> None:
    torch.save({key: torch.zeros(2) for key in keys}, tmp_path / "part.pth")
    assert main(["download", name, "--from", "part.pth"]) == 0
    assert "loads as a state dict of tensors with keys under" in capsys.readouterr().err
    assert main(["download", "--list", name]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == [name, "cached"]
