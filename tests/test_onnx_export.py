"""ONNX export of the real MobileSAM prompt decoder: ONNX Runtime equals torch and the predictor."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.errors import InputError
from ovsam.export_onnx import INPUT_NAMES, example_inputs, export_decoder_onnx, onnx_parity
from ovsam.image_io import load_image
from ovsam.predictor import SamPredictor

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def onnx_path(mobilesam_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of a model that has decoded before (its positional encoding is cached)."""
    with torch.no_grad():
        mobilesam_model.prompt_encoder.get_dense_pe()
    return export_decoder_onnx(mobilesam_model, tmp_path_factory.mktemp("onnx") / "decoder.onnx")


def test_the_graph_computes_the_positional_encoding_and_declares_its_output_shapes(
    onnx_path: Path,
) -> None:
    """A model that had decoded before exported its cached dense positional encoding as
    constants (16.5 -> 29 MB); the outputs' fixed shapes were left symbolic."""
    assert onnx_path.stat().st_size < 20e6
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shapes = {o.name: o.shape for o in session.get_outputs()}
    assert shapes == {"low_res_masks": [1, 4, 256, 256], "iou_predictions": [1, 4]}
    assert session.get_inputs()[1].shape == [1, "num_points", 2]


@pytest.mark.parametrize("points", [1, 2, 6])
def test_onnx_runtime_equals_torch(
    mobilesam_model: torch.nn.Module, onnx_path: Path, points: int
) -> None:
    """points=1 (a lone click) gave two labels for one point: ONNX Runtime refused it."""
    assert onnx_parity(mobilesam_model, onnx_path, points) < 1e-3


@pytest.mark.parametrize(
    "part", ["prompt_encoder.mask_downscaling", "prompt_encoder.point_embeddings.2"]
)
def test_the_parity_check_covers_mask_inputs_and_box_corners(
    mobilesam_model: torch.nn.Module, onnx_path: Path, part: str
) -> None:
    """The check that lets an export take --out's place fed clicks only, with no mask input:
    an export whose mask-input or box-corner weights were wrong passed it (6.9e-5)."""
    other = copy.deepcopy(mobilesam_model)
    with torch.no_grad():
        for parameter in other.get_submodule(part).parameters():
            parameter.neg_()
    assert onnx_parity(other, onnx_path) > 0.1


def test_export_keeps_the_modules_training_flags_and_refuses_half_precision(
    mobilesam_model: torch.nn.Module, tmp_path: Path
) -> None:
    model = copy.deepcopy(mobilesam_model).train()
    model.image_encoder.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    export_decoder_onnx(model, tmp_path / "a.onnx")
    onnx_parity(model, tmp_path / "a.onnx", 2)
    assert {name: m.training for name, m in model.named_modules()} == flags
    with pytest.raises(InputError, match="ONNX export needs float32 weights .* torch.float16"):
        export_decoder_onnx(model.half(), tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()


def test_example_inputs_give_a_label_per_point_and_refuse_none() -> None:
    assert example_inputs(1)[2].tolist() == [[1.0]]
    assert example_inputs(4)[2].tolist() == [[1.0, 0.0, 0.0, -1.0]]
    assert [tuple(t.shape) for t in example_inputs(2)[1:3]] == [(1, 2, 2), (1, 2)]
    with pytest.raises(InputError, match="needs at least one point, got 0"):
        example_inputs(0)


def test_box_and_refinement_match_the_predictor(
    mobilesam_model: torch.nn.Module, onnx_path: Path
) -> None:
    predictor = SamPredictor(mobilesam_model)
    predictor.set_image(load_image(SAMPLE_PHOTO))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    frame = predictor.transform.apply_boxes(np.array([SAMPLE_BOX]), predictor.original_size)
    embedding = predictor.get_image_embedding().numpy()
    feeds = dict(zip(INPUT_NAMES, [
        embedding, frame.reshape(1, 2, 2).astype(np.float32), np.array([[2.0, 3.0]], np.float32),
        np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32),
    ], strict=True))  # fmt: skip
    low_res, iou = session.run(None, feeds)
    _, scores, expected = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    np.testing.assert_allclose(low_res[0, :1], expected, atol=2e-3)
    assert iou[0, 0] == pytest.approx(scores[0], abs=1e-4)
    # refinement: the previous low-res mask as input, plus a background click
    click = predictor.transform.apply_coords(np.array([[40.0, 40.0]]), predictor.original_size)
    feeds["point_coords"] = np.concatenate([frame.reshape(1, 2, 2), click[None]], axis=1).astype(
        np.float32
    )
    feeds["point_labels"] = np.array([[2.0, 3.0, 0.0]], np.float32)
    feeds["mask_input"], feeds["has_mask_input"] = (
        expected[None].astype(np.float32),
        np.ones(1, np.float32),
    )
    refined = session.run(None, feeds)[0]
    _, _, again = predictor.predict(
        point_coords=np.array([[40.0, 40.0]]), point_labels=np.array([0]), box=np.array(SAMPLE_BOX),
        mask_input=expected, multimask_output=False,
    )  # fmt: skip
    np.testing.assert_allclose(refined[0, :1], again, atol=2e-3)


@pytest.mark.parametrize(("difference", "status"), [(3e-5, 0), (0.5, 1), (float("nan"), 1)])
def test_the_command_fails_when_the_export_disagrees_with_torch(
    tmp_path: Path,
    mobilesam_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    difference: float,
    status: int,
) -> None:
    from ovsam.cli.main import main

    monkeypatch.setattr("ovsam.export_onnx.onnx_parity", lambda *args: difference)
    out = tmp_path / "decoder.onnx"
    out.write_bytes(b"an earlier, good export")
    assert main(["export-onnx", "--out", str(out), "--checkpoint", str(mobilesam_checkpoint)]) == (
        status
    )
    rejected = tmp_path / "decoder.rejected.onnx"
    if status:  # the earlier export stays (it was replaced before the check); this one is kept
        assert out.read_bytes() == b"an earlier, good export" and rejected.is_file()
    else:
        assert out.stat().st_size > 1e6 and not rejected.exists()
    assert (
        sorted(p.name for p in tmp_path.iterdir())
        == sorted(  # no temporary file left
            ["decoder.onnx", "decoder.rejected.onnx"][: 1 + status]
        )
    )
    err = capsys.readouterr().err
    assert ("the export disagrees with torch by" in err) == bool(status)
    assert (f"{out} is left as it was; the export is kept as {rejected}" in err) == bool(status)


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"),
         "onnxruntime is not installed: parity not checked"),
        (ImportError("libonnxruntime.so.1: cannot open shared object file"),
         "onnxruntime cannot be imported (libonnxruntime.so.1: cannot open shared object file): "
         "parity not checked"),
    ],
)  # fmt: skip
def test_an_unchecked_export_says_why_onnxruntime_could_not_check_it(
    tmp_path: Path,
    mobilesam_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    failure: ImportError,
    said: str,
) -> None:
    from ovsam.cli.main import main

    def parity(*args: object) -> float:
        raise failure

    monkeypatch.setattr("ovsam.export_onnx.onnx_parity", parity)
    out = tmp_path / "decoder.onnx"
    assert main(["export-onnx", "--out", str(out), "--checkpoint", str(mobilesam_checkpoint)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == said
    assert [p.name for p in tmp_path.iterdir()] == ["decoder.onnx"]


@pytest.fixture()
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any weights download fails the test."""

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were fetched")

    monkeypatch.setattr("ovsam.weights.download_weights", no_download)


@pytest.mark.usefixtures("no_downloads")
def test_a_model_that_cannot_be_exported_is_refused_before_any_download(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """export-onnx --model ovsam_coco fetched about 3.5 GB of weights before refusing it."""
    from ovsam.cli.main import main

    argv = ["export-onnx", "--out", str(tmp_path / "d.onnx"), "--model", "ovsam_coco"]
    assert main(argv) == 2
    assert "CLIP2SAMHead (OV-SAM's CLIP2SAM head) is not exported" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_downloads")
@pytest.mark.parametrize("opset", ["13", "21"])
def test_an_opset_it_cannot_write_is_refused_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, opset: str
) -> None:
    from ovsam.cli.main import main

    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "empty cache"))
    argv = ["export-onnx", "--out", str(tmp_path / "d.onnx"), "--model", "sam_vit_h"]
    assert main([*argv, "--opset", opset]) == 2
    assert f"ONNX opset {opset} is" in capsys.readouterr().err


def test_the_export_replaces_out_as_atomic_writes_do(
    tmp_path: Path, mobilesam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command moved a fixed '.NAME.unchecked' file over --out: the file's mode and a
    symbolic link were lost, a 251-byte name failed, and two runs into one --out shared the
    staging file (one installed the other's export and the other failed)."""
    from ovsam.cli.main import main

    monkeypatch.setattr("ovsam.export_onnx.onnx_parity", lambda *args: 1e-5)
    target = tmp_path / "models" / "decoder-v1.onnx"
    target.parent.mkdir()
    target.write_bytes(b"v1")
    target.chmod(0o600)
    link = tmp_path / "decoder.onnx"
    link.symlink_to(target)
    argv = ["--checkpoint", str(mobilesam_checkpoint)]
    assert main(["export-onnx", "--out", str(link), *argv]) == 0
    assert link.is_symlink() and target.stat().st_size > 1e6
    assert target.stat().st_mode & 0o777 == 0o600
    long = tmp_path / ("d" * 246 + ".onnx")
    assert main(["export-onnx", "--out", str(long), *argv]) == 0
    assert long.stat().st_size > 1e6
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["decoder.onnx", "models", long.name]
    )


def test_a_rejected_export_is_kept_beside_a_linked_out_on_another_file_system(
    tmp_path: Path, mobilesam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export is staged beside the link's file; moving it to NAME.rejected.onnx beside
    the link failed across file systems (EXDEV, exit 2) and the rejected export was lost."""
    import os
    import tempfile

    from ovsam.cli.main import main

    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    monkeypatch.setattr("ovsam.export_onnx.onnx_parity", lambda *args: 1.0)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        target = Path(other) / "decoder-v1.onnx"
        target.write_bytes(b"a good export")
        link = tmp_path / "decoder.onnx"
        link.symlink_to(target)
        argv = ["export-onnx", "--out", str(link), "--checkpoint", str(mobilesam_checkpoint)]
        assert main(argv) == 1
        assert target.read_bytes() == b"a good export" and link.is_symlink()
        assert (Path(other) / "decoder-v1.rejected.onnx").stat().st_size > 1e6
