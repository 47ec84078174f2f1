"""One command at a time in an ``--out`` folder: ``everything``, ``train`` and ``eval`` refuse
a folder another ovsam process is writing into (here the test holds its lock), in one line,
before writing anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from eval_stand_in import run_eval
from ovsam.cli.main import main
from ovsam.errors import InputError
from ovsam.output_lock import LOCK_FILE, output_lock
from synthetic_scenes import make_scene
from train_harness import TINY, make_train, one_line_error

pytest_plugins = ("eval_stand_in",)


def _in_use(out: Path, command: str) -> str:
    return (
        f"{out} is in use by ovsam {command} (pid {os.getpid()}): wait for it to end, or "
        "choose another --out"
    )


def test_a_second_holder_is_refused_and_the_lock_leaves_no_trace(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with output_lock(out, "everything"):
        assert (out / LOCK_FILE).is_file()
        with pytest.raises(InputError) as refused, output_lock(out, "train"):
            pass
        assert str(refused.value) == _in_use(out, "everything")
    assert not out.exists()  # made for the lock and left empty: removed again
    with output_lock(tmp_path, "eval"):
        (tmp_path / "result.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "result.json"]
    with output_lock(tmp_path, "eval"):  # free again once released
        pass
    with output_lock(out, "train"), output_lock(out, "train", holder=False):  # rank 1 of a job
        assert (out / LOCK_FILE).read_text().startswith("ovsam train (pid ")


def test_everything_refuses_a_folder_in_use_before_building_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(make_scene(1, 64, 64)[0]).save(image)
    monkeypatch.setattr("ovsam.build.build_model", lambda *a, **k: pytest.fail("model built"))
    out = tmp_path / "out"
    with output_lock(out, "everything"):
        assert main(["everything", str(image), "--out", str(out)]) == 2
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert capsys.readouterr().err == f"ovsam everything: error: {_in_use(out, 'everything')}\n"


def test_train_refuses_a_run_folder_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    train = make_train(tmp_path, monkeypatch, capsys)
    run = tmp_path / "run"
    with output_lock(run, "train"):
        code, _, err = train(*TINY, "steps=2")
        assert code == 2 and one_line_error(err) == f"ovsam train: error: {_in_use(run, 'train')}\n"
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
    code, _, err = train(*TINY, "steps=2")
    assert code == 0, err
    assert not (run / LOCK_FILE).exists()


def test_eval_refuses_a_folder_in_use(tiny: Path, tmp_path: Path, built: list) -> None:
    out = tmp_path / "out"
    with output_lock(out, "eval"):
        status, stdout, stderr = run_eval(tiny, out)
        assert (status, stdout) == (2, "") and built == []
        assert stderr == f"ovsam eval: error: {_in_use(out, 'eval')}\n"
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert run_eval(tiny, out)[0] == 0 and (out / "metrics.json").is_file()
