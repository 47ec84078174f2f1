"""Builders, registry and official key names of the SAM family (no real weights needed)."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from ovsam.build import build_model, get_model_entry, list_models, register_model
from ovsam.errors import CheckpointError, InputError
from ovsam.modeling import Sam

# Official segment-anything layout: image_encoder = patch_embed (2) + pos_embed (1) +
# 14 per block (norm1, attn.qkv, attn.proj, norm2, mlp.lin1, mlp.lin2: weight+bias each;
# attn.rel_pos_h/w) + neck (conv, LayerNorm2d, conv, LayerNorm2d: 6); the prompt encoder
# and mask decoder are the same for every size.
OFFICIAL_COUNTS = {
    "sam_vit_b": {"image_encoder": 9 + 14 * 12, "prompt_encoder": 17, "mask_decoder": 120},
    "sam_vit_l": {"image_encoder": 9 + 14 * 24, "prompt_encoder": 17, "mask_decoder": 120},
    "sam_vit_h": {"image_encoder": 9 + 14 * 32, "prompt_encoder": 17, "mask_decoder": 120},
    "mobilesam": {"image_encoder": 302, "prompt_encoder": 17, "mask_decoder": 120},
}
# Parameter counts of the official models (segment-anything / MobileSAM code).
OFFICIAL_PARAMS = {
    "sam_vit_b": 93_735_472,
    "sam_vit_l": 312_342_832,
    "sam_vit_h": 641_090_608,
    "mobilesam": 10_130_092,
}
SAMPLE_KEYS = {
    "sam_vit_b": {
        "image_encoder.pos_embed": (1, 64, 64, 768),
        "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
        "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),
        "image_encoder.blocks.2.attn.rel_pos_w": (127, 64),
        "image_encoder.blocks.11.mlp.lin2.weight": (768, 3072),
        "image_encoder.neck.0.weight": (256, 768, 1, 1),
        "image_encoder.neck.3.bias": (256,),
    },
    "sam_vit_h": {
        "image_encoder.blocks.31.attn.qkv.weight": (3840, 1280),
        "image_encoder.blocks.7.attn.rel_pos_h": (127, 80),
        "image_encoder.blocks.8.attn.rel_pos_h": (27, 80),
    },
    "mobilesam": {
        "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
        "image_encoder.layers.0.blocks.1.conv2.bn.running_var": (256,),
        "image_encoder.layers.1.blocks.0.attn.attention_biases": (4, 49),
        "image_encoder.layers.2.blocks.5.attn.attention_biases": (5, 196),
        "image_encoder.layers.2.downsample.conv2.c.weight": (320, 1, 3, 3),
        "image_encoder.layers.3.blocks.1.local_conv.bn.num_batches_tracked": (),
        "image_encoder.head.weight": (1000, 320),
        "image_encoder.norm_head.bias": (320,),
    },
}
COMMON_KEYS = {
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "prompt_encoder.point_embeddings.3.weight": (1, 256),
    "prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
    "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight": (256, 256),
    "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
    "mask_decoder.transformer.layers.1.cross_attn_image_to_token.k_proj.weight": (128, 256),
    "mask_decoder.transformer.final_attn_token_to_image.out_proj.weight": (256, 128),
    "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
    "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
}


def _meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return get_model_entry(name).builder()


@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_state_dict_keys_match_official_layout(name: str) -> None:
    model = _meta_model(name)
    state = model.state_dict()
    assert Counter(k.split(".")[0] for k in state) == OFFICIAL_COUNTS[name]
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    for key, shape in {**SAMPLE_KEYS.get(name, {}), **COMMON_KEYS}.items():
        assert tuple(state[key].shape) == shape, key
    assert not any("pixel_" in k or "attention_bias_idxs" in k for k in state)


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h"])
def test_vit_forward_shapes_on_meta(name: str) -> None:
    sam = _meta_model(name)
    emb = sam.image_encoder(torch.empty(1, 3, 1024, 1024, device="meta"))
    assert tuple(emb.shape) == (1, 256, 64, 64)
    sparse, dense = sam.prompt_encoder(
        points=None, boxes=torch.zeros(2, 4, device="meta"), masks=None
    )
    masks, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    assert (tuple(masks.shape), tuple(iou.shape)) == ((2, 3, 256, 256), (2, 3))


@pytest.mark.slow
def test_random_vit_b_forward_on_cpu() -> None:
    sam = build_model("vit_b", pretrained=False)
    with torch.inference_mode():
        emb = sam.image_encoder(torch.randn(1, 3, 1024, 1024))
    assert emb.shape == (1, 256, 64, 64) and torch.isfinite(emb).all()


def test_registry_names_aliases_and_unknown_name() -> None:
    assert list_models()[:4] == ["mobilesam", "sam_vit_b", "sam_vit_l", "sam_vit_h"]
    assert get_model_entry("vit_t").name == "mobilesam"
    assert get_model_entry("vit_h").default_weights == "sam_vit_h_4b8939"
    assert get_model_entry("mobilesam").default_weights == "mobile_sam"
    with pytest.raises(InputError, match=r"unknown model 'vit_x'; available models: mobilesam, "):
        build_model("vit_x")
    # a Path is a name too (it was an AttributeError), and a missing model file is named so
    with pytest.raises(InputError, match=r"unknown model 'vit_x'; available models: mobilesam, "):
        build_model(Path("vit_x"))
    assert type(build_model(Path("vit_t"), pretrained=False)).__name__ == "Sam"
    with pytest.raises(InputError, match=r"^model file gone\.safetensors not found$"):
        build_model(Path("gone.safetensors"))


def test_register_model_extends_build_and_rejects_taken_names() -> None:
    def tiny() -> torch.nn.Module:
        return torch.nn.Linear(2, 2)

    register_model("test_tiny_linear", tiny, None, aliases=("test_tiny_alias",))
    register_model("test_tiny_linear", tiny, None, aliases=("test_tiny_alias",))  # re-import
    model = build_model("test_tiny_alias")
    assert isinstance(model, torch.nn.Linear) and not model.training
    with pytest.raises(ValueError, match="'vit_t' is already registered"):
        register_model("other", tiny, None, aliases=("vit_t",))


def test_a_model_built_for_loading_skips_random_init_and_nothing_else(
    mobilesam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import ovsam.checkpoint as checkpoint

    drawn: list[str] = []
    real_normal = torch.nn.init.normal_

    def normal(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        drawn.append(threading.current_thread().name)
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", normal)
    inside, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        inside.wait()
        torch.nn.Embedding(3, 2)  # drawn: only the thread that loads skips
        done.set()

    worker = threading.Thread(target=other_thread, name="other")
    worker.start()
    with checkpoint.weights_to_be_loaded(), checkpoint.weights_to_be_loaded():  # re-entered
        torch.nn.Embedding(3, 2)
        inside.set()
        assert done.wait(10)
    worker.join()
    assert drawn == ["other"] and torch.nn.init.normal_ is normal  # restored after
    with pytest.raises(RuntimeError, match="boom"), checkpoint.weights_to_be_loaded():
        raise RuntimeError("boom")
    assert torch.nn.init.normal_ is normal
    drawn.clear()
    sam = build_model("mobilesam", mobilesam_checkpoint, fuse=False)
    assert drawn == []  # the embeddings of a model built to be loaded are not drawn
    random = build_model("mobilesam", pretrained=False, fuse=False)
    assert drawn  # those of a random one are
    state = torch.load(mobilesam_checkpoint, weights_only=True)
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in state.items())
    for name, buffer in sam.named_buffers():
        if name not in state:  # pixel statistics, attention bias indices: computed as usual
            assert torch.equal(buffer, random.get_buffer(name))


def test_random_mobilesam_is_eval_fused_and_has_non_persistent_pixel_stats() -> None:
    sam = build_model("mobilesam", pretrained=False)
    assert isinstance(sam, Sam) and not sam.training
    state = sam.state_dict()  # 27 conv+BatchNorm pairs (6 tensors each) folded into 2 each
    assert len(state) == 439 - 27 * 4 and "image_encoder.patch_embed.seq.0.bias" in state
    assert torch.allclose(sam.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))
    assert (sam.mask_threshold, sam.image_format, sam.img_size) == (0.0, "RGB", 1024)


def test_preprocess_normalises_and_pads_bottom_right() -> None:
    sam = build_model("mobilesam", pretrained=False, fuse=False)
    x = torch.full((1, 3, 1024, 600), 255.0)
    out = sam.preprocess(x)
    assert out.shape == (1, 3, 1024, 1024)
    expected = (255.0 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375]
    )
    assert torch.allclose(out[0, :, 10, 599], expected)
    assert out[..., 600:].abs().max() == 0


def test_postprocess_masks_crops_padding_then_resizes() -> None:
    sam = build_model("mobilesam", pretrained=False, fuse=False)
    low = torch.full((1, 1, 256, 256), -5.0)
    low[..., :, :64] = 5.0  # x < 256 of the 1024 frame: the left half of the 512-wide image
    low[..., :, 132:] = 5.0  # padding only (x >= 528)
    out = sam.postprocess_masks(low, input_size=(1024, 512), original_size=(300, 150))
    assert out.shape == (1, 1, 300, 150)
    positive = out > sam.mask_threshold
    assert positive[..., :73].all() and not positive[..., 77:].any()


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = build_model("mobilesam", pretrained=False, fuse=False).state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["image_encoder.blocks.0.attn.rel_pos_h"] = torch.zeros(27, 64)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_model("mobilesam", checkpoint=path)
    message = str(err.value)
    assert "1 missing keys: mask_decoder.iou_token.weight" in message
    assert "1 unexpected keys: image_encoder.blocks.0.attn.rel_pos_h" in message
    assert str(path) in message


def test_a_checkpoint_holding_nan_is_refused(tmp_path: Path) -> None:
    state = build_model("mobilesam", pretrained=False, fuse=False).state_dict()
    state["mask_decoder.iou_prediction_head.layers.2.bias"][1] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    message = f"{path}: tensor mask_decoder.iou_prediction_head.layers.2.bias holds NaN values"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        build_model("mobilesam", checkpoint=path)
    state["mask_decoder.iou_prediction_head.layers.2.bias"][1] = float("-inf")  # allowed
    torch.save(state, path)
    assert build_model("mobilesam", checkpoint=path) is not None


def test_mobilesam_checkpoint_into_vit_b_is_refused(mobilesam_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        build_model("sam_vit_b", checkpoint=mobilesam_checkpoint)
    message = str(err.value)
    # 177 ViT-B encoder keys minus the 6 neck keys both encoders share.
    assert "171 missing keys: image_encoder.blocks.0.attn.proj.bias" in message
    assert "296 unexpected keys: image_encoder.head.bias" in message
    assert "image_encoder.neck.0.weight: checkpoint (256, 320, 1, 1) vs model (256, 768" in message


def test_another_models_registered_weights_are_refused_before_fetching(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--checkpoint sam_vit_b_01ec64`` for mobilesam fetched 375 MB, then failed to load."""

    def fetch(name: str) -> Path:
        raise AssertionError(f"fetched {name}")

    monkeypatch.setattr("ovsam.weights.resolve_weights", fetch)
    with pytest.raises(InputError, match="weights sam_vit_b_01ec64 are sam_vit_b's, not mobil"):
        build_model("mobilesam", checkpoint="sam_vit_b_01ec64")
    with pytest.raises(InputError, match="weights vit_t are mobilesam's, not sam_vit_h's"):
        build_model("vit_h", checkpoint="vit_t")  # aliases of model and weights alike


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a checkpoint at all", r"not a PyTorch checkpoint, or a corrupt one \(Unsupported"),
        (None, r"it pickles Python objects besides tensors \(Unsupported global: GLOBAL argp"),
    ],
)
def test_unreadable_checkpoint_names_the_reason_without_unsafe_advice(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"args": argparse.Namespace(lr=1.0), "model": {"w": torch.zeros(2)}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(
        CheckpointError, match=f"cannot read checkpoint {re.escape(str(path))}: {expected}"
    ) as err:
        build_model("mobilesam", checkpoint=path)
    assert "weights_only` set to `False`" not in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, whole)
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(
        CheckpointError, match="cannot read checkpoint .*cut.pt: RuntimeError: .*zip"
    ):
        build_model("mobilesam", checkpoint=cut)


def test_wrong_argument_types_are_named() -> None:
    with pytest.raises(InputError, match="model name must be a string"):
        build_model(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="checkpoint must be a file path .* got dict"):
        build_model("mobilesam", checkpoint={"w": torch.zeros(1)})  # type: ignore[arg-type]
    from ovsam.predictor import SamPredictor

    with pytest.raises(InputError, match="SamPredictor needs a SAM-family model"):
        SamPredictor("mobilesam")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, to write one
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "checkpoint file not found: {path}"),
        (lambda p: p.mkdir(), "checkpoint {path} is a folder"),
        (lambda p: p.write_bytes(b""), "checkpoint {path} is empty"),
        (
            lambda p: p.write_text("hello world\n"),
            "checkpoint {path} is not a PyTorch checkpoint (neither a zip archive nor a pickle: "
            "it starts with b'hello world\\n')",
        ),
        (
            lambda p: p.write_bytes(_damaged_index(torch.nn.Linear(2, 2).state_dict())),
            "cannot read checkpoint {path}: RuntimeError: PytorchStreamReader failed reading "
            "zip archive: invalid header or archive is corrupted.",  # then torch's advice
        ),  # the index of the zip cannot be read (it was a raw zipfile.BadZipFile)
        (
            lambda p: torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(p)),
            "checkpoint {path} is a TorchScript archive (a whole scripted model, such as an "
            "OpenAI CLIP release), not a state dict of weights",
        ),
    ],
)
def test_bad_checkpoint_paths_are_one_line_each(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "x.pt"
    if make is not None:
        make(path)  # type: ignore[operator]
    with pytest.raises(CheckpointError) as info:
        build_model("mobilesam", checkpoint=str(path))
    assert str(info.value).startswith(message.format(path=path))
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def _damaged_index(state: dict) -> bytes:
    """``torch.save`` bytes of ``state`` with the zip's central directory signature damaged."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = bytearray(buffer.getvalue())
    at = data.rfind(b"PK\x01\x02")
    data[at : at + 4] = b"XXXX"
    return bytes(data)
