"""The ``ovsam`` command line: segment, demo, download, models, and its error reporting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.cli.main import main
from ovsam.masks import decode_rle, mask_iou
from ovsam.predictor import SamPredictor
from ovsam.weights import get_weights_spec
from synthetic_scenes import make_scene


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    image, shapes = make_scene(0)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(image).save(path)
    return path, shapes


def test_segment_box_writes_mask_overlay_and_json(
    scene_file: tuple[Path, list],
    tmp_path: Path,
    mobilesam_checkpoint: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    path, shapes = scene_file
    disc = shapes[0]
    box = [str(v) for v in disc.box]
    code = main(
        [
            "segment",
            str(path),
            "--box",
            *box,
            "--out",
            str(tmp_path),
            "--checkpoint",
            str(mobilesam_checkpoint),
        ]
    )
    assert code == 0
    assert "predicted IoU" in capsys.readouterr().out
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == disc.mask.shape and set(np.unique(mask)) <= {0, 255}
    assert mask_iou(mask == 255, disc.mask) >= 0.95
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape == (*disc.mask.shape, 3)
    record = json.loads((tmp_path / "result.json").read_text())
    assert np.array_equal(decode_rle(record["segmentation"]), mask == 255)
    assert record["area"] == int((mask == 255).sum())
    x, y, w, h = record["bbox"]
    assert abs(x - disc.box[0]) <= 3 and abs(x + w - disc.box[2]) <= 3
    assert record["prompt"]["box_xyxy"] == [float(v) for v in disc.box]
    assert 0.0 < record["predicted_iou"] <= 1.5
    assert record["image_size"] == {"height": 360, "width": 480}
    # the model that segmented and the checkpoint file it loaded: absolute path + sha256
    assert record["model"] == "mobilesam"
    sha256 = get_weights_spec("mobile_sam").sha256  # the published digest of the real file
    assert record["checkpoint"] == {"path": str(mobilesam_checkpoint.resolve()), "sha256": sha256}


def test_segment_records_the_default_weights_named_as_everything_does(
    scene_file: tuple[Path, list], tmp_path: Path
) -> None:
    """--checkpoint mobile_sam (the model's default weights) was recorded by name, where
    everything and eval record None: the same run looked like two settings."""
    path, shapes = scene_file
    box = [str(v) for v in shapes[0].box]
    argv = ["segment", str(path), "--box", *box, "--out", str(tmp_path)]
    assert main([*argv, "--checkpoint", "mobile_sam"]) == 0
    assert json.loads((tmp_path / "result.json").read_text())["checkpoint"] is None


def test_segment_single_point_uses_best_of_three(
    scene_file: tuple[Path, list],
    tmp_path: Path,
    mobilesam_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The three candidates come back best last (for this click the model puts it first, so
    taking the first candidate passed too): the highest-scoring one is written."""
    path, shapes = scene_file
    rect = shapes[1]
    predict = SamPredictor.predict
    best_score: list[float] = []

    def best_last(self: SamPredictor, **prompt: object) -> tuple[np.ndarray, ...]:
        masks, scores, logits = predict(self, **prompt)
        assert len(scores) == 3 and prompt["multimask_output"]
        order = np.argsort(scores)  # ascending: the best candidate last
        best_score.append(float(scores[order[-1]]))
        return masks[order], scores[order], logits[order]

    monkeypatch.setattr(SamPredictor, "predict", best_last)
    x, y = (str(v) for v in rect.inner_point)
    assert (
        main(
            [
                "segment",
                str(path),
                "--point",
                x,
                y,
                "--out",
                str(tmp_path),
                "--checkpoint",
                str(mobilesam_checkpoint),
            ]
        )
        == 0
    )
    mask = np.asarray(Image.open(tmp_path / "mask.png")) == 255
    assert mask_iou(mask, rect.mask) >= 0.95
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["predicted_iou"] == pytest.approx(best_score[0], abs=1e-6)
    assert record["prompt"]["points"] == [[float(x), float(y)]] and record["prompt"][
        "point_labels"
    ] == [1]


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--box", "10", "10", "5", "50"], "is inverted"),
        (["--point", "9999", "5"], "outside the 480x360 image"),
        ([], "give a prompt"),
        (["--negative", "5", "5"], "--point X Y (--negative points only mark"),
    ],
)
def test_segment_errors_are_one_line(
    scene_file: tuple[Path, list], tmp_path: Path, capsys: pytest.CaptureFixture,
    mobilesam_checkpoint: Path, argv_tail: list[str], message: str,
) -> None:  # fmt: skip
    path, _ = scene_file
    argv = [
        "segment",
        str(path),
        "--out",
        str(tmp_path),
        "--checkpoint",
        str(mobilesam_checkpoint),
        *argv_tail,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ovsam segment: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "mask.png").exists()


def test_corrupt_image_and_wrong_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["segment", str(bad), "--box", "1", "1", "5", "5", "--out", str(tmp_path)]) == 2
    assert "bad.jpg is not a readable image (unknown format" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pt"
    import torch

    torch.save({"something.weight": torch.zeros(3)}, wrong)
    argv = [
        "segment",
        str(SAMPLE_PHOTO),
        "--box",
        "1",
        "1",
        "5",
        "5",
        "--out",
        str(tmp_path),
        "--checkpoint",
        str(wrong),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing keys" in err and "unexpected keys: something.weight" in err


def test_demo_entry_point_segments_the_cup(tmp_path: Path, mobilesam_checkpoint: Path) -> None:
    exe = Path(sys.executable).with_name("ovsam")
    done = subprocess.run(
        [str(exe), "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert str((tmp_path / "overlay.png").resolve()) in done.stdout
    mask = np.asarray(Image.open(tmp_path / "mask.png")) == 255
    x0, y0, x1, y1 = (int(v) for v in SAMPLE_BOX)
    inside = mask[y0:y1, x0:x1].sum()
    assert inside >= 0.97 * mask.sum()  # the mask lies inside the box
    assert inside >= 0.5 * (x1 - x0) * (y1 - y0)  # and fills most of it (the cup is large)


def test_download_list_and_models(
    capsys: pytest.CaptureFixture, mobilesam_checkpoint: Path
) -> None:
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert "mobile_sam" in out and "sam_vit_h_4b8939" in out
    assert (
        "clip_RN50x16_openai" in out and "ovsam_sam2clip_vith_rn50x16" in out
    )  # recognition weights
    assert main(["models"]) == 0
    models = capsys.readouterr().out
    assert "mobilesam" in models and "ovsam_coco" in models and "ovsam_lvis" in models
    assert main(["download", "no_such_weights"]) == 2
    assert "unknown weights 'no_such_weights'" in capsys.readouterr().err


def test_models_with_a_bad_cache_folder_print_only_the_error(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list's header was printed to stdout before the error."""
    monkeypatch.setenv("OVSAM_CACHE_DIR", "relative")
    assert main(["models"]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == (
        "ovsam models: error: OVSAM_CACHE_DIR must be an absolute path, got 'relative'\n"
    )


def test_building_the_parser_imports_no_torch() -> None:
    """``ovsam --help`` stays fast: registering the sub-commands imports neither torch nor the
    models (checked in a fresh interpreter, as this one has imported torch already)."""
    code = (
        "import sys; import ovsam.cli.main as m; m.build_parser(); "
        "print(sorted(n for n in ('torch', 'ovsam.build') if n in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_library_warning_is_one_line_too(
    tmp_path: Path, capsys: pytest.CaptureFixture, mobilesam_checkpoint: Path
) -> None:
    """Pillow's "Corrupt EXIF data" warning printed two lines naming Pillow's source file,
    also before a one-line error."""
    import io
    import struct

    picture = io.BytesIO()
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(picture, format="JPEG")
    jpeg = picture.getvalue()
    exif = b"Exif\x00\x00II\x2a\x00\xff\xff\x00\x00"  # its IFD offset points past its end
    damaged = tmp_path / "damaged_exif.jpg"
    damaged.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:])
    argv = ["segment", str(damaged), "--box", "10", "10", "50", "40", "--out", str(tmp_path)]
    assert main([*argv, "--checkpoint", str(mobilesam_checkpoint)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("ovsam segment: warning: Corrupt EXIF data.") and err.count("\n") == 1
