"""``ovsam train export``: a tiny sam2clip + clip2sam run becomes one loadable OV-SAM file.

CLIP: a random RN50 saved to a file and named with ``--set clip_weights=FILE`` (a "real",
non-``random_clip`` run); adapter 64 wide, 1 block, 2 heads; one step of each task on the tiny
COCO of ``tiny_coco``; teacher: the real MobileSAM.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ovsam.build import build_model
from ovsam.checkpoint import read_state_dict
from ovsam.cli.main import main
from ovsam.clip.factory import create_model
from ovsam.errors import CheckpointError, InputError, NotReadyError, WeightsUnavailableError
from ovsam.ov.model import OVSam, OVSamConfig
from ovsam.ov.predictor import OVSamPredictor
from ovsam.recognizers import LabelOptions, build_labeled_predictor, default_clip_weights
from ovsam.train.export import export_model
from ovsam.weight_sources import sha256_file
from tiny_coco import write_tiny_coco

SMALL = ["steps=1", "warmup_steps=0", "clip_model=RN50", "adapter_dim=64", "adapter_depth=1",
         "adapter_heads=2", "log_every=1", "checkpoint_every=1", "bf16=false"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mobilesam_checkpoint: Path) -> dict[str, Path]:
    """A finished sam2clip run, the clip2sam run on its adapter, and the CLIP file."""
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    write_tiny_coco(data, images=1)
    torch.manual_seed(0)
    clip_file = root / "clip_rn50.pt"
    torch.save(create_model("RN50").state_dict(), clip_file)
    common = ["--data", str(data / "images"), "--annotations", str(data / "instances.json"),
              "--device", "cpu"]  # fmt: skip
    sets = [*SMALL, f"clip_weights={clip_file}", f"teacher_checkpoint={mobilesam_checkpoint}"]
    adapter_run, head_run = root / "sam2clip", root / "clip2sam"
    argv = ["train", "sam2clip", *common, "--out", str(adapter_run)]
    assert main([*argv, *[f"--set={s}" for s in sets]]) == 0
    adapter = adapter_run / "checkpoints" / "step_1.pt"
    sets += [f"adapter_checkpoint={adapter}", "vocabulary=dataset",
             "lsj=false", "prompts_per_image=2"]  # fmt: skip
    argv = ["train", "clip2sam", *common, "--out", str(head_run)]
    assert main([*argv, *[f"--set={s}" for s in sets]]) == 0
    return {"sam2clip": adapter_run, "clip2sam": head_run, "clip": clip_file, "root": root}


def test_export_loads_with_the_trained_weights_and_predicts(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = runs["root"] / "model.safetensors"
    assert main(["train", "export", str(runs["clip2sam"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{runs['clip2sam']} (step 1 of 1) -> {out}\n"
    model = build_model(str(out))
    assert isinstance(model, OVSam) and not model.random_weights
    config = model.config
    assert (config.clip_model, config.adapter_dim, config.adapter_depth) == ("RN50", 64, 1)
    assert config.adapter_heads == 2 and "person" in config.seen_vocabulary
    assert config.clip_weights == "clip_rn50.pt"  # the run's CLIP file, by name and content
    assert config.clip_weights_sha256 == sha256_file(runs["clip"])
    state = model.state_dict()
    adapter = read_state_dict(runs["sam2clip"] / "checkpoints" / "step_1.pt")
    head = read_state_dict(runs["clip2sam"] / "checkpoints" / "step_1.pt")
    assert adapter and head
    for key, value in adapter.items():
        torch.testing.assert_close(state[f"image_encoder.neck.{key}"], value, rtol=0, atol=0)
    for key, value in head.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    clip = create_model("RN50", pretrained=runs["clip"])
    torch.testing.assert_close(
        state["image_encoder.backbone.conv1.weight"], clip.visual.conv1.weight, rtol=0, atol=0
    )
    # what `ovsam eval --recognizer ovsam --checkpoint FILE` builds: the file's own architecture
    assert build_model("ovsam_coco", str(out)).config == config
    predictor = OVSamPredictor(model, text_model=clip)
    predictor.set_vocabulary(["person", "car", "cup"], progress=False)
    predictor.set_image(np.full((96, 128, 3), 90, dtype=np.uint8))
    masks, scores, low_res, labels = predictor.predict(box=np.array([4, 8, 60, 70]))
    assert masks.shape == (1, 96, 128) and scores.shape == (1,) and low_res.shape[-2:] == (256, 256)
    assert len(labels) == 1 and not labels[0].random_weights
    # class names are embedded with those CLIP weights: the default (openai) and another
    # file are refused before anything loads, that file is taken
    assert default_clip_weights("ovsam", str(out), None) == "openai"
    options = LabelOptions(recognizer="ovsam", clip_model="RN50", templates="none")
    other = runs["root"] / "other_rn50.pt"
    other.write_bytes(b"other weights")
    for chosen in ("openai", str(other)):
        with pytest.raises(InputError) as refused:
            build_labeled_predictor(replace(options, clip_weights=chosen), str(out))
        assert str(refused.value) == (
            f"{out} holds the CLIP RN50 weights from the file clip_rn50.pt "
            f"(sha256 {config.clip_weights_sha256[:12]}...), but the class names would be "
            f"embedded with {chosen!r}: pass --clip-weights that file"
        )
    labeled = build_labeled_predictor(
        replace(options, clip_weights=str(runs["clip"])), str(out), set_vocabulary=False
    )
    assert not labeled.text_model.random_weights
    # its text model embeds names only: the image tower is freed, the bank is the same
    assert labeled.text_model.visual is None
    with pytest.raises(NotReadyError, match="image tower was freed"):
        labeled.text_model.encode_image(torch.zeros(1, 3, 224, 224))
    reference = OVSamPredictor(model, text_model=clip, templates="none")
    names = ["person", "car"]
    torch.testing.assert_close(
        labeled.set_vocabulary(names, progress=False).embeddings,
        reference.set_vocabulary(names, progress=False).embeddings,
    )
    # a checkpoint file names its run as well
    assert export_model(runs["clip2sam"] / "checkpoints" / "step_1.pt").config == config


def _copy_run(runs: dict[str, Path], name: str, **changes: object) -> Path:
    """The clip2sam run copied to ``name`` with ``changes`` made to its config.json."""
    run = runs["root"] / name
    shutil.copytree(runs["clip2sam"], run, ignore=shutil.ignore_patterns("tb"))
    config = json.loads((run / "config.json").read_text()) | changes
    (run / "config.json").write_text(json.dumps(config))
    return run


def _adapter_run(runs: dict[str, Path], name: str, **changes: object) -> Path:
    """The sam2clip run's checkpoint in a run folder ``name`` whose config.json has
    ``changes``."""
    checkpoint = runs["root"] / name / "checkpoints" / "step_1.pt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(runs["sam2clip"] / "checkpoints" / "step_1.pt", checkpoint)
    config = json.loads((runs["sam2clip"] / "config.json").read_text()) | changes
    (checkpoint.parent.parent / "config.json").write_text(json.dumps(config))
    return checkpoint


def test_a_clip2sam_run_keeps_its_adapter_after_its_sam2clip_step_is_deleted(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The sam2clip run's keep_checkpoints deleted the step a clip2sam run had learnt on: the
    clip2sam run could neither resume nor export."""
    adapter = read_state_dict(runs["sam2clip"] / "checkpoints" / "step_1.pt")
    kept = read_state_dict(runs["clip2sam"] / "adapter.pt")
    assert kept.keys() == adapter.keys()
    assert all(torch.equal(kept[k], adapter[k]) for k in adapter)
    gone = _adapter_run(runs, "pruned_sam2clip")
    run = _copy_run(runs, "kept_adapter", adapter_checkpoint=str(gone))
    gone.unlink()
    expected = export_model(runs["clip2sam"]).state_dict()
    exported = export_model(run).state_dict()  # from the run's copy, found in the moved folder
    assert all(torch.equal(exported[k], v) for k, v in expected.items())
    argv = ["train", "clip2sam", "--data", str(runs["root"] / "data" / "images"), "--out", str(run)]
    argv += ["--annotations", str(runs["root"] / "data" / "instances.json"), "--set=steps=2"]
    assert main([*argv, "--device", "cpu"]) == 0, capsys.readouterr().err  # resumes on
    assert (run / "checkpoints" / "step_2.pt").is_file()


def test_export_says_which_step_it_holds_and_gets_the_umask_mode(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ovsam.fileio as fileio

    monkeypatch.setattr(fileio, "_UMASK", 0o027)
    run, out = _copy_run(runs, "unfinished", steps=3), runs["root"] / "unfinished.safetensors"
    assert main(["train", "export", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{run} (step 1 of 3: the run is not finished) -> {out}\n"
    assert out.stat().st_mode & 0o777 == 0o640  # as open() gives, not save_file's 0600
    older = _copy_run(runs, "older", steps=2)  # finished: its last step is saved
    shutil.copy(older / "checkpoints" / "step_1.pt", older / "checkpoints" / "step_2.pt")
    assert main(["train", "export", str(older), "--out", str(out), "--step", "1"]) == 0
    assert capsys.readouterr().out == f"{older} (step 1 of 2) -> {out}\n"


def test_clip2sam_refuses_an_adapter_distilled_on_another_clip(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, adapter = runs["root"] / "data", runs["sam2clip"] / "checkpoints" / "step_1.pt"
    out = runs["root"] / "rn101"
    argv = ["train", "clip2sam", "--data", str(data / "images"), "--annotations",
            str(data / "instances.json"), "--device", "cpu", "--out", str(out)]  # fmt: skip
    sets = [*SMALL, "clip_model=RN101", f"adapter_checkpoint={adapter}", "vocabulary=dataset"]
    assert main([*argv, *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists(), err
    assert (
        f"clip_model=RN101 but adapter_checkpoint {adapter} was distilled with clip_model=RN50 "
        f"(its run's {runs['sam2clip'] / 'config.json'})" in err
    )


def test_export_errors_are_one_line(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(runs["root"] / "bad.safetensors")
    openai_adapter = _adapter_run(runs, "openai_sam2clip", clip_weights="openai")
    cases = {
        str(runs["sam2clip"]): "is a sam2clip run: export the clip2sam run",
        str(runs["root"] / "nope"): "does not exist (expected a clip2sam run folder)",
        str(_copy_run(runs, "random", random_clip=True)): "its CLIP weights are not saved",
        str(_copy_run(runs, "wide", adapter_dim=128)): "has dim/depth/heads 64/1/2 but the run",
        str(_copy_run(runs, "noadapter", adapter_checkpoint="")): "random SAM2CLIP adapter",
        str(_copy_run(runs, "vit_b", teacher="sam_vit_b")): "teacher=sam_vit_b but adapter_",
        str(_copy_run(runs, "openai", adapter_checkpoint=str(openai_adapter))): (
            f"was distilled with clip_weights=openai (its run's {openai_adapter.parent.parent}"
        ),
    }
    for run, message in cases.items():
        assert main(["train", "export", run, "--out", out]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["train", "export", str(runs["clip2sam"]), "--out", out, "--step", "9"]) == 2
    assert "step_9.pt does not exist (steps saved: [1])" in capsys.readouterr().err
    with pytest.raises(InputError, match="must end in .safetensors"):
        from ovsam.train.export import export_ovsam

        export_ovsam(runs["clip2sam"], runs["root"] / "model.pt")
    assert not Path(out).exists()


def test_config_adapter_fields_round_trip_and_old_configs_load() -> None:
    official = OVSamConfig()
    assert (official.adapter_dim, official.adapter_depth, official.adapter_heads) == (1280, 5, 16)
    again = OVSamConfig(**json.loads(json.dumps(official.to_dict())))
    assert again == official
    old = {"clip_model": "RN50x16", "roi_size": 7, "alpha_seen": 0.1, "alpha_unseen": 0.9,
           "logit_scale": 4.6052, "seen_vocabulary": "lvis_base"}  # fmt: skip
    assert OVSamConfig(**old) == OVSamConfig(roi_size=7, seen_vocabulary="lvis_base")
    numpy_typed = OVSamConfig(
        roi_size=np.int64(7), alpha_seen=np.float32(0.5), seen_vocabulary={"a"}
    )
    assert numpy_typed == OVSamConfig(roi_size=7, alpha_seen=0.5, seen_vocabulary=("a",))
    assert type(numpy_typed.roi_size) is int and type(numpy_typed.alpha_seen) is float
    names = OVSamConfig(seen_vocabulary=("person", "car"), adapter_dim=64)
    assert OVSamConfig(**json.loads(json.dumps(names.to_dict()))) == names


def test_settings_of_a_newer_ovsam_are_ignored_with_a_warning(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ovsam.ov.checkpoints import FORMAT, ovsam_checkpoint_config

    recorded = OVSamConfig(clip_model="RN50", clip_weights="openai").to_dict()
    path = tmp_path / "newer.safetensors"
    meta = {"format": FORMAT, "config": json.dumps(recorded | {"future_setting": 3})}
    save_file({"x": torch.zeros(1)}, str(path), meta)
    with pytest.warns(UserWarning, match="does not know, ignored: future_setting"):
        config = ovsam_checkpoint_config(path)
    assert config == OVSamConfig(clip_model="RN50", clip_weights="openai")
    with warnings.catch_warnings():  # asked again (as a command does): not read, not warned
        warnings.simplefilter("error")
        assert ovsam_checkpoint_config(path) is config
    # a rewritten file is read again
    for damaged, why in (
        ("{not json", "Expecting property name"),
        ("[1]", "a JSON list"),
        ('{"seen_vocabulary": 5}', "seen_vocabulary must be a name or a list of names, got 5"),
        ('{"clip_model": 5}', "clip_model must be a string, got 5"),
        ('{"adapter_dim": -1}', "adapter_dim must be a positive integer, got -1"),
        ('{"adapter_depth": true}', "adapter_depth must be a positive integer, got True"),
        ('{"adapter_dim": 100}', "adapter_dim 100 must be a multiple of adapter_heads 16"),
        ('{"alpha_seen": "0.1"}', r"alpha_seen must be a number in \[0, 1\], got '0.1'"),
        ('{"alpha_unseen": 1.5}', r"alpha_unseen must be a number in \[0, 1\], got 1.5"),
        ('{"logit_scale": NaN}', "logit_scale must be a number at most 88, got nan"),
        ('{"logit_scale": 1000}', "logit_scale must be a number at most 88, got 1000"),
    ):
        save_file({"x": torch.zeros(1)}, str(path), {"format": FORMAT, "config": damaged})
        with pytest.raises(CheckpointError, match=f"recorded config is damaged \\({why}"):
            ovsam_checkpoint_config(path)


def test_a_linked_checkpoint_is_read_and_named_as_given(tmp_path: Path) -> None:
    """A Hugging Face style link (``model.safetensors -> blobs/<hash>``) is an OV-SAM file
    under the name given, and messages name the link."""
    from safetensors.torch import save_file

    from ovsam.ov.checkpoints import FORMAT, is_ovsam_checkpoint, ovsam_checkpoint_config

    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    recorded = OVSamConfig(clip_model="RN50").to_dict() | {"future_setting": 1}
    save_file({"x": torch.zeros(1)}, str(blob), {"format": FORMAT, "config": json.dumps(recorded)})
    link = tmp_path / "model.safetensors"
    link.symlink_to(blob)
    assert is_ovsam_checkpoint(link)
    with pytest.warns(UserWarning, match=f"^{link} records settings"):
        assert ovsam_checkpoint_config(link) == OVSamConfig(clip_model="RN50")


def test_resolve_all_keeps_the_real_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import ovsam.ov.checkpoints as checkpoints

    def unwritable(name: str, progress: bool = True) -> Path:
        raise WeightsUnavailableError(f"cache folder /ro is not writable: set X\n({name})")

    monkeypatch.setattr(checkpoints, "resolve_weights", unwritable)
    with pytest.raises(WeightsUnavailableError) as info:
        checkpoints.resolve_all(["a", "b"], "OV-SAM weights missing")
    assert str(info.value) == (
        "OV-SAM weights missing: a, b could not be obtained (cache folder /ro is not writable: "
        "set X); get them with 'ovsam download a b'"
    )


def test_seen_classes_of_a_dataset_vocabulary_are_named_as_training_names_them(
    tmp_path: Path,
) -> None:
    """A category 'cup, mug' is one class called so in training (category_vocabulary); the
    exported seen classes must say the same, not split it at the comma."""
    from ovsam.train.config import TrainConfig
    from ovsam.train.export import seen_vocabulary

    annotations = tmp_path / "instances.json"
    categories = [{"id": 1, "name": "cup, mug"}, {"id": 2, "name": "traffic_light"}]
    # with a UTF-8 BOM, which training's reader (read_annotations) accepts too
    annotations.write_text(json.dumps({"categories": categories}), encoding="utf-8-sig")
    config = TrainConfig(vocabulary="dataset", annotations=str(annotations))
    assert seen_vocabulary(config) == ("cup, mug", "traffic_light")


def test_a_bare_checkpoint_name_is_found_in_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ovsam train export step_2.pt` inside RUN/checkpoints took '.' (the checkpoints
    folder) for the run folder and refused it."""
    from ovsam.train.export import run_checkpoint

    checkpoint = tmp_path / "run" / "checkpoints" / "step_2.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    monkeypatch.chdir(checkpoint.parent)
    assert run_checkpoint("step_2.pt") == (tmp_path / "run", Path("step_2.pt"))
