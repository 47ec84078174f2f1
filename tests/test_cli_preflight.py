"""Bad ``--device`` / ``--out`` and file-system errors: one line, exit 2, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.cli import segment_cmd
from ovsam.cli.main import build_parser, main
from ovsam.errors import InputError, OVSamError
from ovsam.export_onnx import export_decoder_onnx


def _segment(out: Path, *extra: str) -> list[str]:
    box = [str(v) for v in SAMPLE_BOX]
    return ["segment", str(SAMPLE_PHOTO), "--box", *box, "--out", str(out), *extra]


def _error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("foo", "unknown device 'foo' (expected cpu, cuda, cuda:N or mps)"),
        ("cuda", "device 'cuda': CUDA is not available"),
        ("cuda:7", "device 'cuda:7': "),
        ("meta", "device 'meta' is not supported"),
    ],
)
def test_bad_device_is_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture, device: str, message: str
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    for argv in (
        _segment(tmp_path / "out", "--device", device),
        [
            "eval",
            "no.json",
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "e"),
            "--device",
            device,
        ],
        ["serve", "--port", "0", "--device", device],
    ):
        assert main(argv) == 2
        assert message in _error(capsys)
    assert not any(tmp_path.iterdir())


def test_output_paths_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(_segment(a_file)) == 2
    assert f"output folder {a_file} is a file" in _error(capsys)
    assert main(_segment(a_file / "sub" / "dir")) == 2
    assert f"cannot create output folder {a_file / 'sub' / 'dir'}: {a_file} is a file" in _error(
        capsys
    )
    assert main(["export-onnx", "--out", str(tmp_path)]) == 2
    assert f"output file {tmp_path} is a folder" in _error(capsys)
    assert main(["export-onnx", "--out", str(a_file / "decoder.onnx")]) == 2
    assert "is a file" in _error(capsys)
    assert a_file.read_text() == "x"


@pytest.mark.parametrize(
    ("command", "name"),
    [("segment", "mask.png"), ("segment", "overlay.png"), ("everything", "overlay.png")],
)
def test_an_input_image_among_the_outputs_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: str, name: str
) -> None:
    """An image that sits in --out under a name the results take is refused before any
    work (``everything`` deleted it; ``segment`` overwrote it), also through a symlink."""
    image = tmp_path / name
    image.write_bytes(SAMPLE_PHOTO.read_bytes())
    link = tmp_path / "elsewhere" / "photo.jpg"
    link.parent.mkdir()
    link.symlink_to(image)
    for source in (image, link):
        prompt = ["--box", *[str(v) for v in SAMPLE_BOX]] if command == "segment" else []
        assert main([command, str(source), *prompt, "--out", str(tmp_path)]) == 2
        assert f"is {image}, which the results would replace: choose another --out" in _error(
            capsys
        )
    assert image.read_bytes() == SAMPLE_PHOTO.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", name]


def test_an_empty_out_and_a_second_box_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--out ""`` would be the current folder; a second ``--box`` replaced the first."""
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(SAMPLE_PHOTO), "--point", "5", "5", "--out", ""])
    assert exit_info.value.code == 2
    assert (
        "argument --out: an empty path: give a folder or file to write to"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        main(_segment(tmp_path / "out", "--box", "1", "2", "30", "40"))
    assert exit_info.value.code == 2
    assert "--box given twice: give it once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "x.png", "--box", "1", "2", "3"], "argument --box: expected 4 arguments"),
        (["segment", "x.png", "--point", "5", "5", "--random-recognition", "--clip-weights",
          "w.pt"], "argument --clip-weights: not allowed with argument --random-recognition"),
        ([], "the following arguments are required: COMMAND"),
        # named by the sub-command, not "ovsam: error: ... (ovsam --help ...)"
        (["segment", "x.png", "--bogus", "--out", "o"], "unrecognized arguments: --bogus"),
    ],
)  # fmt: skip
def test_a_usage_error_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    """argparse printed its whole usage block above the error; random recognition weights load
    no file, so --clip-weights with them was accepted and only recorded."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    prog = " ".join(["ovsam", *argv[:1]])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err == f"{prog}: error: {message} ({prog} --help lists the options)\n"
    )


def test_an_unknown_option_of_a_nested_command_names_that_command(
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "sam2clip", "--data", "d", "--out", "o", "--bogus", "1"])
    prog = "ovsam train sam2clip"
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"{prog}: error: unrecognized arguments: --bogus 1 ({prog} --help lists the options)\n"
    )


def test_negative_numbers_in_any_form_are_values_not_options(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """argparse alone reads ``-1e3`` and ``-inf`` as options ("expected 4 arguments")."""
    argv = "segment x.jpg --box -1e3 -2.5E-1 -.5 -7 --point -5e0 3 --out o".split()
    args = build_parser().parse_args(argv)
    assert args.box == [-1000.0, -0.25, -0.5, -7.0]
    assert args.point == [[-5.0, 3.0]]
    with pytest.raises(SystemExit) as exit_:  # a negative-looking word is still an option
        build_parser().parse_args("segment x.jpg --box -e3 0 1 1 --out o".split())
    assert exit_.value.code == 2 and "--box: expected 4 arguments" in capsys.readouterr().err
    assert (
        main(["segment", str(SAMPLE_PHOTO), "--box", "-inf", "0", "9", "9", "--out", str(tmp_path)])
        == 2
    )
    assert "box contains NaN or infinite values" in _error(capsys)
    assert not any(tmp_path.iterdir())


def test_file_system_errors_while_writing_are_one_line(
    tmp_path: Path, mobilesam_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "mask.png").mkdir()  # a folder where the mask file goes
    assert main(_segment(tmp_path, "--checkpoint", str(mobilesam_checkpoint))) == 2
    assert "Is a directory: " in _error(capsys)


def test_export_onnx_opset_errors(mobilesam_model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ONNX opset 13 is too old: the decoder needs 14 or newer"):
        export_decoder_onnx(mobilesam_model, tmp_path / "d.onnx", opset=13)
    with pytest.raises(
        InputError, match=r"ONNX opset 21 is newer than torch .* \(opsets 14 to 20\)"
    ):
        export_decoder_onnx(mobilesam_model, tmp_path / "d.onnx", opset=21)
    assert not (tmp_path / "d.onnx").exists()
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_export_onnx_failure_inside_torch_is_one_error_and_no_file(
    mobilesam_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unsupported: ONNX export of operator foo\nlong IR dump ...")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(OVSamError, match=r"^ONNX export at opset 17 failed: Unsupported: .* foo$"):
        export_decoder_onnx(mobilesam_model, tmp_path / "d.onnx")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("link", ["missing", "loop"])
def test_an_output_folder_that_is_a_link_to_nothing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, link: str
) -> None:
    """Such a --out passed the check (it does not exist, its parent is writable); the run
    failed after loading the model with "File exists", or a link loop gave a traceback."""
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere" if link == "missing" else out)
    for target in (out, out / "sub"):
        for argv in (_segment(target), ["everything", str(SAMPLE_PHOTO), "--out", str(target)]):
            assert main(argv) == 2
            assert _error(capsys) == (
                f"ovsam {argv[0]}: error: cannot create output folder {target}: {out} is a link to a missing "
                "target (or a loop of links)\n"
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity"
                " of 79.10 GiB of which 3.06 MiB is free.\nIncluding non-PyTorch memory..."
            ),
            "ran out of GPU memory (asked for 20.00 MiB more): use smaller images, fewer",
        ),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't"
                " allocate memory: you tried to allocate 40000000000000 bytes. Error code 12"
            ),
            "ran out of memory (asked for 40000000000000 bytes more): use smaller images",
        ),
        (MemoryError(), "ran out of memory: use smaller images, fewer prompts or a smaller"),
    ],
)
def test_running_out_of_memory_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    error: BaseException,
    message: str,
) -> None:
    def out_of_memory(args: object) -> int:
        raise error

    monkeypatch.setattr(segment_cmd, "run", out_of_memory)
    assert main(_segment(tmp_path)) == 2
    assert f"ovsam segment: error: {message}" in _error(capsys)


def test_other_runtime_errors_are_not_called_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("shape mismatch in some kernel")

    monkeypatch.setattr(segment_cmd, "run", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(_segment(tmp_path))


def test_device_auto_is_resolved_for_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """segment, demo, everything and serve passed "auto" to torch: a traceback."""
    seen: list[str] = []
    monkeypatch.setattr(segment_cmd, "run", lambda args: seen.append(args.device) or 0)
    assert main([*_segment(tmp_path), "--device", "auto"]) == 0
    assert seen == ["cuda" if torch.cuda.is_available() else "cpu"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a process count or index"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set: start"),
        ({"WORLD_SIZE": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' is not a process count"),
    ],
)
def test_a_broken_torchrun_environment_is_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict, message: str
) -> None:
    from ovsam.distributed import init_distributed

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message):
        init_distributed("cpu")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--labels", "--model", "bogus"], "unknown model 'bogus'; available models: "),
        (["--recognizer", "ovsam", "--model", "bogus"], "unknown model 'bogus'; available"),
        (["--labels", "--checkpoint", "/no/such.pt"], "checkpoint file not found: /no/such.pt"),
    ],
)
def test_model_and_checkpoint_are_named_before_recognition_weights_download(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    """They were checked after CLIP (630 MB) was fetched; with --recognizer ovsam a typo was
    silently replaced by ovsam_coco."""
    monkeypatch.setattr(
        "ovsam.ov.checkpoints.resolve_all", lambda names: pytest.fail("weights fetched")
    )
    assert main([*_segment(tmp_path), *extra]) == 2
    assert f"ovsam segment: error: {message}" in _error(capsys)


def test_clip_names_are_checked_and_aliases_find_their_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--clip ViT-B/32 worked with random weights only ("no pretrained weights 'openai' for
    CLIP ViT-B/32"), and a typo read as missing weights."""
    from ovsam.recognizers import LabelOptions, required_weights

    options = LabelOptions(clip_model="ViT-B/32")
    assert options.clip_model == "ViT-B-32"
    assert required_weights(options) == ["clip_ViT-B-32_openai"]
    assert main([*_segment(tmp_path), "--clip", "rn50x16"]) == 2
    assert "error: unknown CLIP model 'rn50x16'; registered: RN50, " in _error(capsys)
    for flag in ("--clip", "--clip-weights"):  # an empty value silently meant the default
        with pytest.raises(SystemExit) as usage:
            main([*_segment(tmp_path), flag, " "])
        assert usage.value.code == 2
        assert f"argument {flag}: an empty value: give a name" in _error(capsys)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"points": [(10, 20), (30,)]}, "point_coords must be numeric (Nx2 XY pixels): "),
        ({"negatives": [(10, 20, 5)]}, "point_coords must have shape Nx2 (XY pixels), got (1, 3)"),
        ({"box": [10, 20, "x", 40]}, "box must be numeric (XYXY pixels), got text"),
        ({"box": [10, 20, [30], 40]}, "box must be numeric (XYXY pixels): "),
    ],
)
def test_segment_image_refuses_malformed_prompts_by_name(
    tmp_path: Path, prompt: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library call behind ``ovsam segment`` checks its prompt lists before building a
    model: a ragged point list or a box holding text is an InputError, not numpy's ValueError."""
    from ovsam import segment_job

    monkeypatch.setattr(segment_job, "build_model", None)  # never reached
    with pytest.raises(InputError) as info:
        segment_job.segment_image(SAMPLE_PHOTO, out_dir=tmp_path / "out", **prompt)
    assert str(info.value).startswith(message)
    assert not (tmp_path / "out").exists()


def test_a_class_name_too_long_for_clip_is_refused_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """It was refused only when the text bank was built, after the models had loaded."""
    import ovsam.build
    import ovsam.segment_job

    def never_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ovsam.build, "build_model", never_called)  # everything's import
    monkeypatch.setattr(ovsam.segment_job, "build_model", never_called)
    long_name = " ".join(["word"] * 80)
    for command in ("segment", "everything"):
        argv = [command, str(SAMPLE_PHOTO), "--out", str(tmp_path / command)]
        argv += ["--box", "1", "1", "30", "30"] if command == "segment" else []
        assert main([*argv, "--random-recognition", "--vocab", f"cup; {long_name}"]) == 2
        err = capsys.readouterr().err
        assert "class name 'word word word word word word word wo...' is too long" in err, err
        assert "CLIP's text context holds 77" in err and "a model was loaded" not in err
