"""``ovsam eval`` on real tiny COCO files: resume, settings, --limit, empty splits, skipped
images and class names (bad input: ``test_eval_cli_inputs.py``).

The model is replaced by a fast stand-in (:mod:`eval_stand_in`), so the numbers are known
without MobileSAM.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

import ovsam.recognizers
from eval_stand_in import BoxFiller, run_eval, strict_json
from tiny_coco import write_tiny_coco

pytest_plugins = ("eval_stand_in",)


def test_resume_after_a_cut_line_keeps_every_image(tiny: Path, tmp_path: Path, built: list) -> None:
    assert run_eval(tiny, tmp_path / "full")[0] == 0
    full = strict_json(tmp_path / "full" / "metrics.json")
    lines = (tmp_path / "full" / "records.rank0.jsonl").read_text().splitlines(keepends=True)
    for name, with_settings in (("old", False), ("new", True)):  # an older ovsam's folder / ours
        out = tmp_path / name
        out.mkdir()
        if with_settings:
            (out / "settings.json").write_text((tmp_path / "full" / "settings.json").read_text())
        (out / "records.rank0.jsonl").write_text(lines[0] + lines[1][:60])
        assert run_eval(tiny, out)[0] == 0
        assert strict_json(out / "metrics.json") == full  # image 2 redone, none lost
        rows = (out / "records.rank0.jsonl").read_text().splitlines()
        assert [json.loads(row)["image_id"] for row in rows] == [1, 2, 3, 4]


def test_resume_with_other_settings_is_refused(tiny: Path, tmp_path: Path, built: list) -> None:
    out = tmp_path / "out"
    assert run_eval(tiny, out)[0] == 0
    before = (out / "metrics.json").read_text()
    status, stdout, stderr = run_eval(tiny, out, "--prompt", "point", "--method", "pointrun")
    assert status == 2 and stdout == "" and len(stderr.splitlines()) == 1
    assert "prompt 'box' -> 'point'" in stderr and "use a new --out" in stderr
    assert (out / "metrics.json").read_text() == before
    status, _, stderr = run_eval(tiny, out, "--clip", "RN50")
    assert status == 2 and "clip 'RN50x16' -> 'RN50'" in stderr
    # --method only names the row: renaming it reuses the records
    status, stdout, _ = run_eval(tiny, out, "--method", "renamed")
    assert status == 0 and "| renamed |" in stdout and built == ["mobilesam"] * 2
    # records embedded with other synonyms (an older ovsam's rule) are not mixed in
    settings = json.loads((out / "settings.json").read_text())
    vocabulary_sha256, settings["vocabulary_sha256"] = settings["vocabulary_sha256"], "0" * 64
    (out / "settings.json").write_text(json.dumps(settings))
    status, _, stderr = run_eval(tiny, out)
    assert status == 2 and "vocabulary_sha256 '000" in stderr
    # records of the earlier instance and point rules (no protocol_rules) are not mixed in
    del settings["protocol_rules"]
    settings["vocabulary_sha256"] = vocabulary_sha256
    (out / "settings.json").write_text(json.dumps(settings))
    status, _, stderr = run_eval(tiny, out)
    assert status == 2 and "vocabulary" not in stderr
    assert "(protocol_rules None -> \"instances: mmdet's" in stderr


def test_a_checkpoint_file_names_the_row_and_counts_by_its_content(
    tiny: Path, tmp_path: Path, built: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trained OV-SAM file and the official model get rows of their own; the file is recorded
    by absolute path and sha256: another spelling resumes, other content is refused."""
    monkeypatch.chdir(tmp_path)
    Path("model.safetensors").write_bytes(b"trained")
    argv = ["--recognizer", "ovsam", "--clip", "RN50", "--checkpoint"]
    status, stdout, _ = run_eval(tiny, tmp_path / "out", *argv, "model.safetensors")
    metrics = strict_json(tmp_path / "out" / "metrics.json")
    digest = hashlib.sha256(b"trained").hexdigest()
    record = {"path": str(tmp_path.resolve() / "model.safetensors"), "sha256": digest}
    assert status == 0 and metrics["model"] == "ovsam_coco" and metrics["checkpoint"] == record
    assert metrics["method"].startswith("ovsam (ovsam_coco + model.safetensors, ")
    assert f"| {metrics['method']} |" in stdout and f"(sha256 {digest})" in stdout
    status, _, _ = run_eval(tiny, tmp_path / "out", *argv, str(tmp_path / "model.safetensors"))
    assert status == 0 and len(built) == 2  # the same file, spelled otherwise: resumed
    Path("model.safetensors").write_bytes(b"retrained")
    status, _, stderr = run_eval(tiny, tmp_path / "out", *argv, "model.safetensors")
    changed = hashlib.sha256(b"retrained").hexdigest()
    assert status == 2 and f"(checkpoint.sha256 {digest!r} -> {changed!r})" in stderr


def test_point_prompts_in_a_new_folder_give_other_numbers(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    run_eval(tiny, tmp_path / "box")
    assert run_eval(tiny, tmp_path / "point", "--prompt", "point")[0] == 0
    box = strict_json(tmp_path / "box" / "metrics.json")
    point = strict_json(tmp_path / "point" / "metrics.json")
    assert point["instances"] == box["instances"] and point["IoU"] < box["IoU"] - 10


def test_limit_selects_exactly_the_images_reported(tiny: Path, tmp_path: Path, built: list) -> None:
    out = tmp_path / "out"
    assert run_eval(tiny, out)[0] == 0
    first = json.loads((out / "records.rank0.jsonl").read_text().splitlines()[0])
    status, stdout, _ = run_eval(tiny, out, "--limit", "1")
    metrics = strict_json(out / "metrics.json")
    assert status == 0 and metrics["instances"] == len(first["records"])
    assert metrics["images"] == 1
    assert f"instances: {len(first['records'])} in 1 of 1 images ->" in stdout


@pytest.mark.parametrize("limit", ["0", "-2"])
def test_limit_below_one_is_refused(tiny: Path, tmp_path: Path, built: list, limit: str) -> None:
    status, _, stderr = run_eval(tiny, tmp_path / "out", "--limit", limit)
    assert status == 2 and "--limit must be at least 1" in stderr and not built


def test_empty_novel_split_is_null_not_nan(tiny: Path, tmp_path: Path, built: list) -> None:
    out = tmp_path / "out"
    assert run_eval(tiny, out, "--split", "all")[0] == 0
    metrics = strict_json(out / "metrics.json")
    assert metrics["instances_n"] == 0 and metrics["IoU_n"] is None and metrics["Acc_n"] is None
    assert metrics["IoU_b"] > 50 and metrics["instances_b"] == metrics["instances"]
    row = (out / "table.md").read_text().splitlines()[2].split(" | ")
    assert row[2] == "n/a" and row[1] != "n/a"


def test_image_without_usable_instances_is_skipped(tiny: Path, tmp_path: Path, built: list) -> None:
    data = json.loads(tiny.read_text())
    full = run_eval(tiny, tmp_path / "full")[0], strict_json(tmp_path / "full" / "metrics.json")
    dropped = 0
    for ann in data["annotations"]:
        if ann["image_id"] == 2 and ann["category_id"] != 10:  # 10 is outside OV-COCO
            dropped += 1
            ann["segmentation"] = [[5, 5, 9, 5, 9, 5]] if dropped == 1 else [[]]
    path = tmp_path / "coco" / "degenerate.json"
    path.write_text(json.dumps(data))
    status, stdout, stderr = run_eval(path, tmp_path / "out")
    metrics = strict_json(tmp_path / "out" / "metrics.json")
    assert status == 0 and full[0] == 0 and dropped >= 1, stderr
    assert metrics["images"] == 4 and metrics["images_skipped"] == 1
    assert metrics["images_skipped_empty_masks"] == 1 and metrics["instances_skipped"] == dropped
    assert 0 < metrics["instances"] == full[1]["instances"] - dropped
    assert "skipped images: 1 (1 with only empty masks)" in stdout
    assert f"skipped annotations with an empty mask: {dropped}" in stdout


def test_crowd_only_and_unannotated_images_are_counted_as_skipped(
    tmp_path: Path, built: list
) -> None:
    path = write_tiny_coco(tmp_path / "coco", images=4, crowd=(2,), unannotated=(3,))
    status, stdout, stderr = run_eval(path, tmp_path / "out")
    metrics = strict_json(tmp_path / "out" / "metrics.json")
    assert status == 0 and "warning" not in stderr, stderr
    assert (metrics["images"], metrics["images_evaluated"], metrics["images_skipped"]) == (4, 2, 2)
    assert metrics["images_skipped_only_crowd"] == metrics["images_skipped_no_annotations"] == 1
    assert metrics["images_missing"] == metrics["instances_skipped"] == 0
    assert (
        f"instances: {metrics['instances']} in 2 of 4 images; skipped images: 2 (1 without"
        " annotations, 1 with only crowd annotations) -> "
    ) in stdout
    records = (tmp_path / "out" / "records.rank0.jsonl").read_text().splitlines()
    assert [json.loads(row)["image_id"] for row in records] == [1, 4]
    # resumed after a cut line and limited to the first 2 images of the file: 1 and the crowd one
    (tmp_path / "out" / "records.rank0.jsonl").write_text(records[0] + "\n" + records[1][:30])
    assert run_eval(path, tmp_path / "out")[0] == 0
    assert strict_json(tmp_path / "out" / "metrics.json") == metrics
    status, stdout, _ = run_eval(path, tmp_path / "out", "--limit", "2")
    limited = strict_json(tmp_path / "out" / "metrics.json")
    assert status == 0 and (limited["images"], limited["images_evaluated"]) == (2, 1)
    assert limited["images_skipped"] == limited["images_skipped_only_crowd"] == 1
    assert "in 1 of 2 images; skipped images: 1 (1 with only crowd annotations)" in stdout


@pytest.mark.parametrize(
    ("field", "values", "message"),
    [
        ("image_id", (77,), "1 annotations .* have an image_id not among its images"),
        ("category_id", (999, 998), "2 annotations .* have a category_id not among its categories"),
        (
            "bbox",
            ([0, 0, 0.5, 9],),
            "1 annotations .* have a box under 1 pixel wide or high or "
            r"outside its image, or no area \(mmdet's rule",
        ),
    ],
)
def test_ignored_annotations_are_counted_in_one_warning(
    tiny: Path, tmp_path: Path, built: list, field: str, values: tuple, message: str
) -> None:
    data = json.loads(tiny.read_text())
    for annotation, value in zip(data["annotations"], values, strict=False):
        annotation[field] = value
    path = tmp_path / "coco" / "ignored.json"
    path.write_text(json.dumps(data))
    status, _, stderr = run_eval(path, tmp_path / "out")
    assert status == 0 and stderr.count("warning") == 1
    assert re.search(message, stderr)


def test_records_of_an_older_ovsam_are_resumed_with_a_warning(
    tiny: Path, tmp_path: Path, built: list
) -> None:
    run_eval(tiny, tmp_path / "full")
    out = tmp_path / "old"
    out.mkdir()
    (out / "records.rank0.jsonl").write_text(
        (tmp_path / "full" / "records.rank0.jsonl").read_text()
    )
    status, _, stderr = run_eval(tiny, out)
    assert status == 0 and "no settings.json" in stderr
    assert (out / "settings.json").read_text() == (tmp_path / "full" / "settings.json").read_text()


def test_classes_are_embedded_with_the_official_bank_synonyms(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Category names as the official banks embed them (split at ``_or_``, ``/``, ``,``;
    underscores as spaces), while predictions keep the categories' own names."""
    data = json.loads(tiny.read_text())
    data["categories"][2]["name"] = "traffic_light/stoplight"
    data["categories"][4]["name"] = "cup_or_mug"
    tiny.write_text(json.dumps(data))
    seen: list = []

    def build(options: object, model: str, checkpoint: object, device: str) -> BoxFiller:
        seen.append(options.vocabulary)  # type: ignore[attr-defined]
        return BoxFiller()

    monkeypatch.setattr(ovsam.recognizers, "build_labeled_predictor", build)
    status, _, err = run_eval(tiny, tmp_path / "out", "--split", "all")
    assert status == 0, err
    (vocabulary,) = seen
    assert vocabulary.classes == ("person", "car", "traffic_light/stoplight", "cat", "cup_or_mug")
    assert vocabulary.synonyms == (
        ("person",),
        ("car",),
        ("traffic light", "stoplight"),
        ("cat",),
        ("cup", "mug"),
    )
