"""Open-Vocabulary SAM checkpoints: official file layouts, our self-describing files, random
weights and missing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ovsam.build import build_model
from ovsam.clip.text_bank import TextBank
from ovsam.errors import CheckpointError, InputError
from ovsam.ov import build_ovsam, save_ovsam
from ovsam.ov.checkpoints import official_state_dict
from ovsam.ov.predictor import OVSamPredictor
from ovsam_fixtures import small_ovsam

# these tests use random models on purpose (the warning itself is tested below)
pytestmark = pytest.mark.filterwarnings("ignore:OVSam model has random weights")


def test_official_files_map_to_our_keys_and_load_strictly(tmp_path: Path) -> None:
    model = small_ovsam(2)
    ours = model.state_dict()

    def pick(prefix: str, new: str) -> dict[str, torch.Tensor]:
        return {new + k[len(prefix) :]: v for k, v in ours.items() if k.startswith(prefix)}

    files = {
        "sam2clip": pick("image_encoder.neck.", "neck_student."),
        "clip2sam": pick("fpn_neck.", "fpn_neck.") | pick("mask_decoder.", "mask_decoder."),
        "clip": pick("image_encoder.backbone.", "visual.") | {"text_projection": torch.zeros(2, 2)},
        "sam": pick("prompt_encoder.", "prompt_encoder.")
        | {"image_encoder.pos_embed": torch.zeros(1)},
    }
    paths = {}
    for name, state in files.items():
        paths[name] = tmp_path / f"{name}.pth"
        torch.save({"state_dict": state} if name != "clip" else state, paths[name])
    mapped = official_state_dict(paths["sam2clip"], paths["clip2sam"], paths["clip"], paths["sam"])
    fresh = small_ovsam(3)
    fresh.load_state_dict(mapped, strict=True)
    for key in (
        "image_encoder.neck.pos_embed",
        "mask_decoder.label_mlp.layers.0.weight",
        "fpn_neck.lateral_convs.0.conv.weight",
    ):
        torch.testing.assert_close(fresh.state_dict()[key], ours[key])
    with pytest.raises(CheckpointError, match="no 'neck_student"):
        official_state_dict(paths["clip2sam"], paths["clip2sam"], paths["clip"], paths["sam"])


def test_own_checkpoint_is_self_describing(tmp_path: Path) -> None:
    model = small_ovsam(4)
    path = save_ovsam(model, tmp_path / "mine.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        build_model(str(path))  # small adapter is not the config's default architecture
    official_like = build_ovsam()
    path = save_ovsam(official_like, tmp_path / "official.safetensors")
    loaded = build_model(str(path))
    assert loaded.config == official_like.config
    assert official_like.random_weights and not loaded.random_weights
    torch.testing.assert_close(
        loaded.state_dict()["mask_decoder.label_token.weight"],
        official_like.state_dict()["mask_decoder.label_token.weight"],
    )


def test_an_exported_model_chooses_its_own_clip_and_is_refused_as_sam_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written by save_ovsam names the CLIP it was trained with (read from its header):
    the default for --recognizer ovsam, and a mismatch is refused before any download."""
    from ovsam.export_onnx import PromptDecoderForOnnx
    from ovsam.recognizers import (
        LabelOptions,
        build_labeled_predictor,
        default_clip_model,
        segmentation_model_name,
    )

    path = save_ovsam(small_ovsam(), tmp_path / "mine.safetensors")  # trained with RN50
    assert default_clip_model("ovsam", "mobilesam", path) == "RN50"
    assert default_clip_model("ovsam", str(path), None) == "RN50"
    assert default_clip_model("ovsam", "ovsam_lvis", None) == "RN50x16"  # the official CLIP
    assert default_clip_model("image-crop", "mobilesam", path) == "RN50x16"
    options = LabelOptions(recognizer="ovsam", clip_model="RN50x16")
    assert segmentation_model_name(options, str(path)) == str(path)  # the file itself segments
    assert segmentation_model_name(options, "mobilesam") == "ovsam_coco"

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were fetched")

    monkeypatch.setattr("ovsam.ov.checkpoints.resolve_all", no_download)
    with pytest.raises(
        InputError, match="trained with CLIP RN50, but .* RN50x16: pass --clip RN50"
    ):
        build_labeled_predictor(options, str(path))
    with pytest.raises(CheckpointError, match="is an OV-SAM model, not weights for mobilesam"):
        build_model("mobilesam", path)
    with pytest.raises(InputError, match="carries its own weights: give no checkpoint"):
        build_model(str(path), "other.safetensors")
    with pytest.raises(InputError, match="--model gone.safetensors is not an OV-SAM model file"):
        segmentation_model_name(options, "gone.safetensors")  # never the official one instead
    with pytest.raises(InputError, match="CLIP2SAMHead .* is not exported"):
        PromptDecoderForOnnx(small_ovsam())


def test_random_weights_warn_once_and_mark_every_label() -> None:
    import warnings

    model = small_ovsam(3)
    with pytest.warns(UserWarning) as caught:
        predictor = OVSamPredictor(model, top_k=2)
    assert [str(w.message) for w in caught] == [
        "OVSam model has random weights: labels are meaningless"
    ]
    predictor.set_text_bank(TextBank(("cup", "cat"), torch.ones(2, 1024), torch.arange(2), "k"))
    predictor.set_image(np.zeros((64, 64, 3), dtype=np.uint8))
    box = np.array([8, 8, 40, 40])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning per prediction
        assert predictor.random_weights and predictor.predict(box=box)[3][0].random_weights
        OVSamPredictor(model, allow_random_weights=True)  # opted in (--random-recognition)
    model.load_state_dict(model.state_dict())  # weights loaded: no longer random
    assert not predictor.random_weights and not predictor.predict(box=box)[3][0].random_weights


def test_missing_official_files_are_all_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import ovsam.weights as weights
    from ovsam.errors import WeightsUnavailableError
    from ovsam.ov import load_official_ovsam, official_weights

    def offline(spec: weights.WeightsSpec, **_: object) -> Path:
        raise WeightsUnavailableError(f"could not obtain weights {spec.name!r}")

    monkeypatch.setattr(weights, "download_weights", offline)
    files = ["ovsam_sam2clip_vith_rn50x16", "ovsam_clip2sam_lvis_rn50x16", "clip_RN50_openai",
             "sam_vit_h_4b8939"]  # fmt: skip
    with pytest.raises(WeightsUnavailableError) as info:
        load_official_ovsam(small_ovsam(), dataset="lvis", progress=False)
    assert str(info.value) == (
        f"OV-SAM weights missing: {', '.join(files)} could not be obtained; "
        f"get them with 'ovsam download {' '.join(files)}'"
    )
    assert official_weights("ovsam_coco_rn50x16")[1] == "ovsam_clip2sam_coco_rn50x16"
    assert official_weights("mobilesam") == []
    with pytest.raises(InputError, match=r"dataset 'v3det' \(known: coco, lvis\)"):
        load_official_ovsam(small_ovsam(), dataset="v3det", progress=False)  # was a KeyError


def test_random_recognition_is_reproducible_and_leaves_the_callers_rng_alone(
    mobilesam_checkpoint: Path,
) -> None:
    """Random recognition weights come from seed 0 (the same labels run after run), drawn
    without reseeding the caller's generator (build_labeled_predictor called manual_seed(0))."""
    from ovsam.recognizers import LabelOptions, build_labeled_predictor

    options = LabelOptions(["cup"], clip_model="RN50", random_weights=True, templates="none")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = build_labeled_predictor(options, "mobilesam", mobilesam_checkpoint)
    assert torch.equal(torch.rand(3), expected)
    second = build_labeled_predictor(options, "mobilesam", mobilesam_checkpoint)
    pairs = zip(first.clip.parameters(), second.clip.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert torch.equal(first.bank.embeddings, second.bank.embeddings)
