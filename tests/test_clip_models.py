"""CLIP towers: architectures, official key layouts, checkpoint formats, parity with OpenAI."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clip_reference import INSTALL_HINT, build_reference, reference_module
from ovsam.clip.config import (
    CLIP_CONFIGS,
    CLIPConfig,
    VisionConfig,
    get_clip_config,
    registered_names_of,
)
from ovsam.clip.factory import create_model, infer_clip_config, load_clip, read_clip_state_dict
from ovsam.clip.model import CLIP
from ovsam.clip.pretrained import clip_weights_file, list_pretrained, pretrained_weights_name
from ovsam.clip.tokenizer import tokenize
from ovsam.errors import CheckpointError, InputError
from ovsam.weights import get_weights_spec

# open_clip docs/model_profile.csv: (total, image, text) parameters in millions
OPEN_CLIP_PARAMS_M = {
    "RN50": (102.01, 38.32, 63.69),
    "RN101": (119.69, 56.26, 63.43),
    "RN50x4": (178.3, 87.14, 91.16),
    "RN50x16": (290.98, 167.33, 123.65),
    "RN50x64": (623.26, 420.38, 202.88),
    "ViT-B-32": (151.28, 87.85, 63.43),
    "ViT-B-16": (149.62, 86.19, 63.43),
    "ViT-L-14": (427.62, 303.97, 123.65),
    "ViT-L-14-336": (427.94, 304.29, 123.65),
    "convnext_base": (151.52, 88.09, 63.43),
    "convnext_base_w": (179.39, 88.22, 91.16),
    "convnext_base_w_320": (179.39, 88.22, 91.16),
    "convnext_large_d": (351.77, 199.77, 152.0),
    "convnext_large_d_320": (351.77, 199.77, 152.0),
    "convnext_xxlarge": (1200.58, 846.54, 354.03),
    "convnext_xxlarge_320": (1200.58, 846.54, 354.03),
}
# models small enough to build, save and reload for real in the default suite
FAST = {"RN50", "RN101", "ViT-B-32", "ViT-B-16", "convnext_base"}
ALL = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in CLIP_CONFIGS]


def test_registry_covers_the_required_architectures() -> None:
    assert set(CLIP_CONFIGS) == set(OPEN_CLIP_PARAMS_M)


@pytest.mark.parametrize("name", list(CLIP_CONFIGS))
def test_parameter_counts_match_open_clip(name: str) -> None:
    with torch.device("meta"):
        model = CLIP(get_clip_config(name))
    image = sum(p.numel() for p in model.visual.parameters()) / 1e6
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert (round(total, 2), round(image, 2), round(total - image, 2)) == OPEN_CLIP_PARAMS_M[name]


@pytest.mark.parametrize(
    "name", [n for n, c in CLIP_CONFIGS.items() if c.vision.kind != "convnext"]
)
def test_state_dict_layout_equals_openai_reference(name: str) -> None:
    module = reference_module()
    if module is None:
        pytest.skip(f"reference CLIP code missing: {INSTALL_HINT}")
    config = get_clip_config(name)
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in CLIP(config).state_dict().items()}
        theirs = {
            k: tuple(v.shape) for k, v in build_reference(module, config).state_dict().items()
        }
    assert ours == theirs


def test_convnext_layout_is_open_clip_timm() -> None:
    with torch.device("meta"):
        base = CLIP(get_clip_config("convnext_base_w")).state_dict()
        large = CLIP(get_clip_config("convnext_large_d_320")).state_dict()
    assert base["visual.trunk.stem.0.weight"].shape == (128, 3, 4, 4)
    assert base["visual.trunk.stages.1.downsample.1.weight"].shape == (256, 128, 2, 2)
    assert base["visual.trunk.stages.2.blocks.26.mlp.fc2.weight"].shape == (512, 2048)
    assert base["visual.trunk.stages.3.blocks.2.gamma"].shape == (1024,)
    assert base["visual.trunk.head.norm.weight"].shape == (1024,)
    assert base["visual.head.proj.weight"].shape == (640, 1024)
    assert (
        "visual.head.proj.bias" not in base
        and "visual.trunk.stages.0.downsample.0.weight" not in base
    )
    assert large["visual.head.mlp.fc1.weight"].shape == (1536, 1536)
    assert large["visual.head.mlp.fc2.weight"].shape == (768, 1536)
    assert "visual.head.mlp.fc2.bias" not in large and "visual.head.mlp.fc1.bias" in large


def _probe_size(config: CLIPConfig) -> int:
    return 2 * max(config.vision.patch_size or 32, 32) if config.vision.kind == "vit" else 64


@pytest.mark.parametrize("name", ALL)
def test_round_trip_through_official_layout_and_shapes(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = get_clip_config(name)
    model = CLIP(config).eval()
    state = model.state_dict()
    if config.vision.kind == "convnext":  # open_clip's safetensors
        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a plain OpenAI-layout state dict
        path = tmp_path / "clip.pt"
        torch.save(state, path)
    inferred = infer_clip_config(read_clip_state_dict(path))
    if config.vision.kind == "convnext":  # the training resolution is not in the weights
        inferred = replace(
            inferred, vision=replace(inferred.vision, image_size=config.vision.image_size)
        )
    assert inferred == config
    loaded = create_model(name, pretrained=path, quick_gelu=config.quick_gelu)
    size = _probe_size(config)
    images = torch.randn(2, 3, size, size)
    tokens = tokenize(["a photo of a cat", "a dog"])
    with torch.inference_mode():
        emb, loaded_emb = model.encode_image(images), loaded.encode_image(images)
        text = loaded.encode_text(tokens)
        maps = loaded.image_features(images)
    assert emb.shape == (2, config.embed_dim) and text.shape == (2, config.embed_dim)
    torch.testing.assert_close(loaded_emb, emb)
    strides = loaded.visual.stage_strides
    assert [m.shape for m in maps] == [
        (2, c, size // s, size // s)
        for c, s in zip(loaded.visual.stage_channels, strides, strict=True)
    ]


@pytest.mark.parametrize("name", ["RN50", "ViT-B-32"])
def test_outputs_equal_openai_reference(name: str) -> None:
    module = reference_module()
    if module is None:
        pytest.skip(f"reference CLIP code missing: {INSTALL_HINT}")
    torch.manual_seed(1)
    config = get_clip_config(f"{name}-quickgelu")  # OpenAI's flavour
    ours = CLIP(config).eval()
    for p in ours.visual.modules():  # non-trivial batch-norm statistics
        if isinstance(p, torch.nn.BatchNorm2d):
            p.running_mean.uniform_(-0.1, 0.1)
            p.running_var.uniform_(0.5, 1.5)
    theirs = build_reference(module, config).eval()
    theirs.load_state_dict(ours.state_dict())
    images = torch.randn(2, 3, config.vision.image_size, config.vision.image_size)
    tokens = tokenize(["a photo of a cat.", "Zürich at night, 東京"])
    with torch.inference_mode():
        torch.testing.assert_close(
            ours.encode_image(images), theirs.encode_image(images), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(
            ours.encode_text(tokens), theirs.encode_text(tokens), rtol=1e-4, atol=1e-4
        )


TINY = CLIPConfig(
    64,
    VisionConfig("resnet", 64, (1, 1, 1, 1), 16),
    replace(get_clip_config("RN50").text, width=64, heads=1, layers=1),
    True,
)


def test_resnet_stages_run_channels_last_with_the_default_layouts_values() -> None:
    """The CLIP ResNet computes its stage maps channels-last (faster convolutions on CPU);
    the values are the default (contiguous) layout's, computed module by module."""
    torch.manual_seed(0)
    visual = CLIP(TINY).visual.eval()
    images = torch.randn(2, 3, 96, 80)
    with torch.inference_mode():
        stages = visual.forward_features(images)
        x, expected = visual.stem(images), []
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
            expected.append(x)
    assert all(e.is_contiguous() for e in expected)  # the reference ran in the default layout
    for got, want in zip(stages, expected, strict=True):
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_openai_torchscript_archive_is_read_without_running_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = reference_module()
    if module is None:
        pytest.skip(f"reference CLIP code missing: {INSTALL_HINT}")
    torch.manual_seed(2)
    reference = build_reference(module, TINY).eval()
    images, tokens = torch.randn(1, 3, 64, 64), tokenize("a photo of a dog")
    traced = torch.jit.trace(reference, (images, tokens), check_trace=False)
    path = tmp_path / "RN-tiny.pt"
    torch.jit.save(traced.half(), str(path))  # OpenAI ships fp16 archives
    state = read_clip_state_dict(path)
    assert set(state) == set(reference.state_dict())
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    model = load_clip(path)
    assert model.config == TINY  # QuickGELU: OpenAI's archive
    monkeypatch.setitem(CLIP_CONFIGS, "tiny_rn", replace(TINY, quick_gelu=False))
    assert create_model("tiny_rn", pretrained=path).config == TINY
    with torch.inference_mode():
        expected = reference.half().float().encode_text(tokens)
        torch.testing.assert_close(model.encode_text(tokens), expected, rtol=1e-4, atol=1e-4)


def test_torchscript_archive_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError, match=r"refers to __builtin__\.print.*refusing"):
        read_clip_state_dict(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script and save
@pytest.mark.parametrize("damage", ["storage", "pickle"])
def test_a_damaged_torchscript_archive_is_a_checkpoint_error(tmp_path: Path, damage: str) -> None:
    """Entries cut short inside an intact zip raised torch's RuntimeError / EOFError."""
    whole, path = tmp_path / "whole.pt", tmp_path / "damaged.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(whole))
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0" if damage == "storage" else "/data.pkl"):
                data = data[: len(data) // 2]
            dst.writestr(info, data)
    kind = "ValueError: storage" if damage == "storage" else "(EOFError|UnpicklingError)"
    with pytest.raises(CheckpointError, match=f"cannot read TorchScript archive .*: {kind}"):
        read_clip_state_dict(path)


def test_wrong_checkpoint_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(CLIP(TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match="missing keys: .*visual"):
        create_model("ViT-B-32", pretrained=path)
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=f"^{path}: not a CLIP state dict: key 'visual"):
        load_clip(path)
    for key in ("text_projection", "ln_final.weight", "visual.layer1.0.conv1.weight"):
        state = CLIP(TINY).state_dict()
        state[key] = state[key].flatten()[0]  # was an IndexError from the shape lookup
        torch.save(state, path)
        with pytest.raises(CheckpointError, match="not a CLIP state dict: a tensor has the wrong"):
            load_clip(path)


@pytest.mark.parametrize(("width", "heads"), [(768, 12), (1024, 16), (1280, 16), (1664, 16)])
def test_vit_heads_follow_openai_and_open_clip(width: int, heads: int) -> None:
    """OpenAI's ViTs have 64-wide heads; open_clip's ViT-H-14 (1280) and ViT-bigG-14 (1664)
    have 16 heads of 80 and 104 channels. The shapes fit either way: 20 heads loaded strictly
    and gave wrong embeddings."""
    config = replace(TINY, vision=VisionConfig("vit", 28, (1,), width, 14))
    with torch.device("meta"):
        state = CLIP(config).state_dict()
    inferred = infer_clip_config(state)
    assert inferred.vision.vit_heads == heads
    with torch.device("meta"):
        attention = CLIP(inferred).visual.transformer.resblocks[0].attn
    assert attention.num_heads == heads


def test_convnext_sizes_are_not_in_the_weights() -> None:
    for low, high in (
        ("convnext_base_w", "convnext_base_w_320"),
        ("convnext_large_d", "convnext_large_d_320"),
        ("convnext_xxlarge", "convnext_xxlarge_320"),
    ):
        with torch.device("meta"):
            shapes = [
                {k: v.shape for k, v in CLIP(get_clip_config(n)).state_dict().items()}
                for n in (low, high)
            ]
        assert shapes[0] == shapes[1]  # no positional embedding or other tensor differs
        assert registered_names_of(get_clip_config(high)) == (low, high)
    assert registered_names_of(get_clip_config("ViT-L-14")) == ("ViT-L-14",)  # size in weights
    assert registered_names_of(get_clip_config("convnext_base")) == ("convnext_base",)


def test_load_clip_asks_which_convnext_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two registered sizes of one tiny ConvNeXt, as convnext_base_w / convnext_base_w_320
    vision = VisionConfig("convnext", 256, (1, 1, 1, 1), dims=(8, 16, 32, 64))
    low = CLIPConfig(64, vision, TINY.text)
    monkeypatch.setitem(CLIP_CONFIGS, "tiny_convnext", low)
    monkeypatch.setitem(
        CLIP_CONFIGS, "tiny_convnext_320", replace(low, vision=replace(vision, image_size=320))
    )
    path = tmp_path / "open_clip_model.safetensors"
    torch.manual_seed(4)
    save_file(CLIP(low).state_dict(), str(path))
    with pytest.raises(
        InputError, match="fits the CLIP models tiny_convnext, tiny_convnext_320, which differ"
    ):
        load_clip(path)
    for name, size in (("tiny_convnext", 256), ("tiny_convnext_320", 320)):
        model = load_clip(path, name=name)
        assert model.config == CLIP_CONFIGS[name] and model.visual.image_size == size
    monkeypatch.delitem(CLIP_CONFIGS, "tiny_convnext_320")
    assert load_clip(path).visual.image_size == 256  # one registered size: taken
    monkeypatch.setitem(CLIP_CONFIGS, "tiny_convnext_32", replace(low, embed_dim=32))
    with pytest.raises(CheckpointError, match="does not fit CLIP.*text_projection"):
        load_clip(path, name="tiny_convnext_32")  # a name the weights do not fit


def test_text_embedding_is_causal_and_pooled_at_eot() -> None:
    torch.manual_seed(3)
    model = CLIP(TINY).eval()
    tokens = tokenize(["a red car", "a red car"])
    tokens[1, 6] = 1234  # after EOT (position 4): must not change anything
    with torch.inference_mode():
        emb = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(emb[0], emb[1])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert infer_clip_config(model.state_dict()) == TINY  # a ResNet: QuickGELU


def test_names_tags_and_registered_weights() -> None:
    assert get_clip_config("ViT-L/14@336px") == get_clip_config("ViT-L-14-336")
    assert get_clip_config("RN50x16-quickgelu").quick_gelu
    assert not get_clip_config("convnext_base_w").quick_gelu
    with pytest.raises(InputError, match="unknown CLIP model 'RN42'"):
        get_clip_config("RN42")
    with pytest.raises(InputError, match="known tags: openai"):
        create_model("RN50x16", pretrained="laion2b")
    spec = get_weights_spec(pretrained_weights_name("RN50x16", "openai"))
    assert spec.sha256 is not None and spec.sha256 in spec.sources[0].describe()
    assert ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup") in list_pretrained()


def test_random_weights_are_flagged_until_weights_are_loaded(tmp_path: Path) -> None:
    assert create_model("RN50").random_weights  # no pretrained: random, and it says so
    torch.manual_seed(0)
    model = CLIP(TINY)
    assert model.random_weights
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    assert not load_clip(tmp_path / "tiny.pt").random_weights
    copy = CLIP(TINY)
    copy.load_state_dict(model.state_dict())
    assert not copy.random_weights and model.random_weights  # per instance


def test_a_registered_tag_wins_over_a_file_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("openai").write_text("junk")  # a stray file named like the tag
    Path("mine").write_text("junk")
    assert clip_weights_file("RN50", "openai") is None  # the registered weights
    assert clip_weights_file("RN50", Path("openai")) == Path("openai")  # a Path is a file
    assert clip_weights_file("RN50", "mine") == Path("mine")  # an existing file
    assert clip_weights_file("RN50", "dl/clip.pt") == Path("dl/clip.pt")  # looks like a path
    assert clip_weights_file("RN50", "laion") is None  # an unknown tag, named as such:
    with pytest.raises(InputError, match="no pretrained weights 'laion' for CLIP RN50; known tags"):
        create_model("RN50", pretrained="laion")
    with pytest.raises(CheckpointError, match="^CLIP weights file not found: dl/clip.pt$"):
        create_model("RN50", pretrained="dl/clip.pt")
    # a file that is no checkpoint is named as CLIP weights too, not as "checkpoint mine"
    with pytest.raises(CheckpointError, match="^CLIP weights mine is not a PyTorch checkpoint "):
        create_model("RN50", pretrained="mine")


def test_weights_digests_for_tags_files_and_uncached_laion_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ovsam.clip.pretrained import clip_weights_sha256
    from ovsam.weight_sources import sha256_file
    from ovsam.weights import weights_file

    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))
    openai = get_weights_spec(pretrained_weights_name("RN50", "openai")).sha256
    assert (
        clip_weights_sha256("RN50-quickgelu", "openai") == openai
    )  # an alias, a registered digest
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"some weights")
    assert clip_weights_sha256("RN50", mine) == sha256_file(mine)
    assert clip_weights_sha256("RN50", tmp_path / "missing.pt") is None
    laion = ("convnext_base_w", "laion2b_s13b_b82k_augreg")  # registered without a digest
    assert clip_weights_sha256(*laion) is None  # not downloaded
    cached = weights_file(get_weights_spec(pretrained_weights_name(*laion)))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"some weights")
    assert clip_weights_sha256(*laion) == sha256_file(mine)  # the download's digest
