"""``ovsam eval`` records what it measured, on what, and refuses input it would misread.

Same stand-in model as :mod:`test_eval_cli` (:mod:`eval_stand_in`: each box prompt gives its
filled box).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ovsam
import ovsam.recognizers
from eval_stand_in import BoxFiller, run_eval, strict_json
from ovsam.errors import OVSamError

pytest_plugins = ("eval_stand_in",)


def one_line_error(status: int, stderr: str) -> str:
    assert status == 2 and stderr.startswith("ovsam eval: error: "), stderr
    assert len(stderr.splitlines()) == 1, stderr
    return stderr


def test_coco_ov_refuses_category_ids_that_are_not_cocos(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    data = json.loads(tiny.read_text())
    ids = {"person": 47, "cup": 1}  # swapped: the split would swap base and novel
    remap = {c["id"]: ids.get(c["name"], c["id"]) for c in data["categories"]}
    for category in data["categories"]:
        category["id"] = remap[category["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(data))
    stderr = one_line_error(*run_eval(path, tmp_path / "out", images=tiny.parent / "images")[::2])
    assert "category 'person' has id 47, but COCO's id 47 is 'cup'" in stderr and not built
    assert run_eval(path, tmp_path / "all", "--split", "all", images=tiny.parent / "images")[0] == 0


def test_coco_ov_compares_category_names_as_labels_are_matched(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    """``Traffic_Light`` is COCO's ``traffic light`` (id 10), as label matching reads names."""
    data = json.loads(tiny.read_text())
    (light,) = (c for c in data["categories"] if c["name"] == "traffic light")
    light["name"] = "Traffic_Light"
    path = tmp_path / "spelled.json"
    path.write_text(json.dumps(data))
    assert run_eval(path, tmp_path / "out", images=tiny.parent / "images")[0] == 0


def test_mask_ap_covers_the_selected_images_and_classes_only(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    pytest.importorskip("pycocotools")
    data = json.loads(tiny.read_text())
    first = data["images"][0]["id"]
    dets = [  # exact on the first image; elsewhere every detection has a wrong class
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"]
            if a["image_id"] == first
            else 1 + (a["category_id"] == 1),
            "bbox": a["bbox"],
            "score": 1,
        }
        for a in data["annotations"]
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    status, stdout, _ = run_eval(
        tiny, tmp_path / "out", "--limit", "1", "--detections", str(tmp_path / "dets.json")
    )
    stats = strict_json(tmp_path / "out" / "mask_ap.json")
    assert status == 0 and stats["AP50"] == pytest.approx(100.0)
    results = json.loads((tmp_path / "out" / "segm_results.json").read_text())
    assert {r["image_id"] for r in results} == {first}
    assert 10 not in {r["category_id"] for r in results}  # traffic light: not an OV-COCO class
    assert "Average Precision" not in stdout and "loading annotations" not in stdout
    assert "mask AP (1 images, 4 classes, " in stdout


def test_settings_of_a_run_that_failed_before_any_record_can_change(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object) -> BoxFiller:
        raise OVSamError("no such checkpoint")

    monkeypatch.setattr(ovsam.recognizers, "build_labeled_predictor", fail)
    assert run_eval(tiny, tmp_path / "out", "--checkpoint", "typo.pt")[0] == 2
    monkeypatch.setattr(ovsam.recognizers, "build_labeled_predictor", lambda *_: BoxFiller())
    status, _, stderr = run_eval(tiny, tmp_path / "out")
    assert status == 0, stderr
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["checkpoint"] is None


def test_missing_images_are_refused_up_front(tiny: Path, tmp_path: Path, built: list) -> None:
    images = tiny.parent / "images"
    stderr = one_line_error(*run_eval(tiny, tmp_path / "a", images=tmp_path / "nope")[::2])
    assert f"image folder {tmp_path / 'nope'} does not exist" in stderr
    stderr = one_line_error(*run_eval(tiny, tmp_path / "a", images=tiny)[::2])
    assert f"{tiny} is not a folder (given as the image folder)" in stderr
    missing = sorted(images.iterdir())[1]
    missing.unlink()
    stderr = one_line_error(*run_eval(tiny, tmp_path / "b")[::2])
    assert f"1 image file(s) of the evaluation are missing: {missing}" in stderr
    assert not built and not (tmp_path / "b" / "settings.json").exists()
    assert run_eval(tiny, tmp_path / "c", "--limit", "1")[0] == 0  # not among the selected


def test_metrics_record_prompt_split_version_and_the_model_used(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    status, stdout, _ = run_eval(
        tiny, tmp_path / "out", "--prompt", "point", "--recognizer", "ovsam"
    )
    metrics = strict_json(tmp_path / "out" / "metrics.json")
    assert status == 0 and metrics["method"].startswith("ovsam (ovsam_coco, ")
    assert {k: metrics[k] for k in ("prompt", "split", "model", "ovsam")} == {
        "prompt": "point",
        "split": "coco-ov",
        "model": "ovsam_coco",
        "ovsam": ovsam.__version__,
    }
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["model"] == "ovsam_coco"
    table = (tmp_path / "out" / "table.md").read_text()
    assert f"prompt: point; split: coco-ov; model: ovsam_coco; ovsam: {ovsam.__version__}" in table
