"""The per-image decoder cache gives the plain decoder's outputs (exact algebra, fp32 rounding)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from ovsam.modeling.image_token_cache import build_image_token_cache
from ovsam.modeling.mask_decoder import MaskDecoder
from ovsam.modeling.transformer import TwoWayTransformer
from ovsam.predictor import SamPredictor
from ovsam_fixtures import small_ovsam

ASSET = "src/ovsam/assets/coffee.jpg"


def _random_decoder(depth: int, seed: int = 0) -> MaskDecoder:
    """A small SAM decoder with every parameter random (LayerNorm gains far from 1 too)."""
    torch.manual_seed(seed)
    transformer = TwoWayTransformer(depth=depth, embedding_dim=64, num_heads=4, mlp_dim=96)
    decoder = MaskDecoder(transformer_dim=64, transformer=transformer, iou_head_hidden_dim=32)
    for name, p in decoder.named_parameters():
        if "norm" in name and name.endswith("weight"):
            torch.nn.init.uniform_(p, 0.5, 1.5)
        else:
            torch.nn.init.normal_(p, std=0.2)
    return decoder.eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("multimask", [True, False])
def test_cached_decoder_equals_plain_decoder(depth: int, multimask: bool) -> None:
    decoder = _random_decoder(depth)
    image, pe = torch.randn(1, 64, 12, 10), torch.randn(1, 64, 12, 10)
    no_mask = torch.randn(1, 64, 1, 1)
    sparse = torch.randn(5, 3, 64)
    with torch.inference_mode():
        cache = build_image_token_cache(decoder, image, pe, no_mask)
        masks, iou = decoder.forward_cached(cache, sparse, multimask)
        plain = decoder(image, pe, sparse, no_mask.expand(5, -1, 12, 10), multimask)
        empty = decoder.forward_cached(cache, sparse[:0], multimask)
    count = 3 if multimask else 1
    assert masks.shape == (5, count, 48, 40) and iou.shape == (5, count)
    scale = plain[0].abs().max()
    assert (masks - plain[0]).abs().max() < 1e-4 * scale
    assert torch.allclose(iou, plain[1], atol=1e-4)
    assert empty[0].shape == (0, count, 48, 40) and empty[1].shape == (0, count)
    # the cache holds level-0 keys/values/queries, ..., and the upscaling map
    assert [sorted(level) for level in cache.levels[:-1]] == [["i2t_q", "t2i_k", "t2i_v"]] * depth
    assert sorted(cache.levels[-1]) == ["final_k", "final_v", "upscale"]
    assert cache.nbytes() > 0


def test_cache_is_not_a_copy_of_one_prompt() -> None:
    """Different prompts get different masks from one cache (the cache is prompt-independent)."""
    decoder = _random_decoder(2)
    image, pe, no_mask = torch.randn(1, 64, 8, 8), torch.randn(1, 64, 8, 8), torch.zeros(1)
    with torch.inference_mode():
        cache = build_image_token_cache(decoder, image, pe, no_mask)
        first, _ = decoder.forward_cached(cache, torch.randn(1, 2, 64), False)
        second, _ = decoder.forward_cached(cache, torch.randn(1, 2, 64), False)
    assert (first - second).abs().max() > 1e-2


def test_ovsam_head_cached_equals_plain() -> None:
    model = small_ovsam(seed=1)
    head = model.mask_decoder
    for p in head.mask_decoder.parameters():  # official init leaves LayerNorms at 1/0
        torch.nn.init.normal_(p, std=0.1)
    image, pe = torch.randn(1, 256, 64, 64), model.prompt_encoder.get_dense_pe()
    boxes = torch.tensor([[10.0, 20.0, 500.0, 700.0], [300.0, 100.0, 900.0, 400.0]])
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        cache = head.build_image_cache(image, pe, dense[:1])
        masks, quality = head.forward_cached(cache, sparse, False)
        plain_masks, plain_quality = head(image, pe, sparse, dense)
    assert masks.shape == plain_masks.shape == (2, 1, 256, 256)
    assert (masks - plain_masks).abs().max() < 1e-4 * plain_masks.abs().max()
    assert torch.allclose(quality, plain_quality, atol=1e-3)


@pytest.fixture(scope="module")
def predictors(mobilesam_model: torch.nn.Module) -> tuple[SamPredictor, SamPredictor]:
    cached, plain = SamPredictor(mobilesam_model), SamPredictor(mobilesam_model, False)
    cached.set_image(np.asarray(Image.open(ASSET).convert("RGB")))
    plain.load_state(cached.export_state())
    return cached, plain


@pytest.mark.parametrize(
    "prompt",
    [
        {"box": np.array([60, 40, 420, 330])},
        {"point_coords": np.array([[300, 200]]), "point_labels": np.array([1])},
        {
            "point_coords": np.array([[300, 200], [100, 50]]),
            "point_labels": np.array([1, 0]),
            "box": np.array([50, 20, 600, 400]),
        },
    ],
)
def test_real_weights_cached_predictor_equals_plain(
    predictors: tuple[SamPredictor, SamPredictor], prompt: dict
) -> None:
    cached, plain = predictors
    for multimask in (True, False):
        masks, scores, logits = cached.predict(**prompt, multimask_output=multimask)
        ref_masks, ref_scores, ref_logits = plain.predict(**prompt, multimask_output=multimask)
        assert np.mean(masks == ref_masks) > 0.9999
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
        np.testing.assert_allclose(logits, ref_logits, atol=2e-3 * np.abs(ref_logits).max())
    assert cached.export_state().decoder_cache is not None


def test_real_weights_batched_cached_boxes_equal_single_and_plain(
    predictors: tuple[SamPredictor, SamPredictor],
) -> None:
    """Five boxes decoded together (chunks of 2, 2, 1) give each box's lone result."""
    cached, plain = predictors
    boxes = torch.tensor(
        [
            [60, 40, 420, 330],
            [0, 0, 200, 150],
            [300, 100, 640, 420],
            [10, 200, 90, 300],
            [5, 5, 9, 9],
        ]
    )
    boxes = cached.transform.apply_boxes_torch(boxes.float(), cached.original_size)
    masks, scores, logits = cached.predict_torch(None, None, boxes, multimask_output=False)
    ref_masks, ref_scores, ref_logits = plain.predict_torch(
        None, None, boxes, multimask_output=False
    )
    assert masks.shape[0] == scores.shape[0] == logits.shape[0] == 5
    for i in range(5):
        one_masks, one_scores, one_logits = cached.predict_torch(
            None, None, boxes[i : i + 1], multimask_output=False
        )
        assert torch.allclose(one_logits[0], logits[i], atol=1e-3)
        assert torch.allclose(one_scores[0], scores[i], atol=1e-5)
    assert (masks == ref_masks).float().mean() > 0.9999
    assert torch.allclose(scores, ref_scores, atol=1e-4)
    assert (logits - ref_logits).abs().max() < 2e-3 * ref_logits.abs().max()
    for predictor, ref in ((cached, logits), (plain, ref_logits)):  # ONNX's corner labels
        corners = boxes.reshape(5, 2, 2), torch.tensor([[2, 3]]).expand(5, 2)
        as_points = predictor.predict_torch(*corners, multimask_output=False)[2]
        assert (as_points - ref).abs().max() < 1e-3  # the boxes' own: no padding point


def test_cache_lives_with_the_image_state_and_skips_mask_prompts(
    mobilesam_model: torch.nn.Module,
) -> None:
    cached, plain = SamPredictor(mobilesam_model), SamPredictor(mobilesam_model, False)
    image = np.asarray(Image.open(ASSET).convert("RGB"))
    cached.set_image(image)
    state = cached.export_state()
    size = state.nbytes()
    assert state.decoder_cache is None  # built on the first prompt, not by set_image
    box = np.array([60, 40, 420, 330])
    _, _, logits = cached.predict(box=box, multimask_output=False)
    first_cache = state.decoder_cache
    assert first_cache is not None and state.nbytes() == size + first_cache.nbytes()
    plain.load_state(state)
    refined = cached.predict(box=box, mask_input=logits, multimask_output=False)
    reference = plain.predict(box=box, mask_input=logits, multimask_output=False)
    np.testing.assert_array_equal(refined[2], reference[2])  # mask prompts: the plain path
    cached.set_image(np.ascontiguousarray(image[:, ::-1]))
    flipped = cached.predict(box=box, multimask_output=False)
    assert cached.export_state().decoder_cache is not first_cache
    cached.reset_image()
    cached.load_state(state)  # a restored state brings its cache along
    again = cached.predict(box=box, multimask_output=False)
    assert state.decoder_cache is first_cache
    np.testing.assert_array_equal(again[2], logits)  # same cache, same prompt
    assert not np.array_equal(flipped[0], again[0])


def test_a_state_from_another_device_is_copied_to_the_predictors(
    mobilesam_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU state loaded by a GPU predictor gave a device-mismatch error at the first prompt
    (no GPU here: "meta" stands in for the other device)."""
    predictor = SamPredictor(mobilesam_model)
    predictor.set_image(np.asarray(Image.open(ASSET).convert("RGB"))[:64, :96])
    predictor.predict(box=np.array([4, 4, 60, 40]), multimask_output=False)
    state = predictor.export_state()
    state.extras["clip_last"] = torch.ones(1, 2, 3, 3)
    assert state.to(torch.device("cpu")) is state and state.decoder_cache is not None
    meta = torch.device("meta")
    monkeypatch.setattr(SamPredictor, "device", property(lambda self: meta))
    predictor.load_state(state)
    moved = predictor.export_state()
    assert moved.features.device == meta and moved.extras["clip_last"].device == meta
    assert moved.decoder_cache is None  # rebuilt on the predictor's device
    assert moved.original_size == state.original_size == (64, 96)
    assert state.features.device.type == "cpu" and state.decoder_cache is not None  # untouched


def test_cache_is_rebuilt_for_other_decoder_weights(mobilesam_model: torch.nn.Module) -> None:
    """A state restored into a predictor whose decoder differs never uses a stale cache."""
    predictor = SamPredictor(mobilesam_model)
    predictor.set_image(np.asarray(Image.open(ASSET).convert("RGB"))[:200, :300])
    box = np.array([20, 20, 200, 150])
    predictor.predict(box=box, multimask_output=False)
    state = predictor.export_state()
    original = state.decoder_cache
    other = copy.deepcopy(mobilesam_model)
    with torch.no_grad():
        other.mask_decoder.output_upscaling[0].bias.add_(0.5)
    changed, plain = SamPredictor(other), SamPredictor(other, cache_image_tokens=False)
    changed.load_state(state)
    plain.load_state(state)
    masks, _, logits = changed.predict(box=box, multimask_output=False)
    assert state.decoder_cache is not original
    reference = plain.predict(box=box, multimask_output=False)
    np.testing.assert_allclose(logits, reference[2], atol=2e-3 * np.abs(reference[2]).max())
    rebuilt = state.decoder_cache
    changed.predict(box=box, multimask_output=False)
    assert state.decoder_cache is rebuilt  # same weights: reused
    with torch.no_grad():  # in-place edits of the same model are noticed too
        other.mask_decoder.output_upscaling[0].bias.sub_(0.5)
    _, _, restored = changed.predict(box=box, multimask_output=False)
    assert state.decoder_cache is not rebuilt
    np.testing.assert_allclose(
        restored, predictor.predict(box=box, multimask_output=False)[2], atol=1e-4
    )


@pytest.mark.gpu
def test_cached_decoder_on_cuda_equals_cpu(mobilesam_model: torch.nn.Module) -> None:
    decoder = copy.deepcopy(mobilesam_model.mask_decoder)
    prompt = copy.deepcopy(mobilesam_model.prompt_encoder)
    image = torch.randn(1, 256, 64, 64)
    boxes = torch.tensor([[100.0, 200.0, 500.0, 700.0], [0.0, 0.0, 1000.0, 900.0]])
    outputs = []
    for device in ("cpu", "cuda"):
        decoder.to(device)
        prompt.to(device)
        with torch.inference_mode():
            sparse, dense = prompt(points=None, boxes=boxes.to(device), masks=None)
            cache = decoder.build_image_cache(image.to(device), prompt.get_dense_pe(), dense[:1])
            outputs.append([t.cpu() for t in decoder.forward_cached(cache, sparse, True)])
    (cpu_masks, cpu_iou), (gpu_masks, gpu_iou) = outputs
    assert (gpu_masks - cpu_masks).abs().max() < 1e-3 * cpu_masks.abs().max()
    assert torch.allclose(gpu_iou, cpu_iou, atol=1e-3)


def test_cache_is_rebuilt_when_a_prompt_encoder_buffer_changes(
    mobilesam_model: torch.nn.Module,
) -> None:
    """The cache folds in the positional encoding, made from a buffer (not a parameter)."""
    model = copy.deepcopy(mobilesam_model)
    cached, plain = SamPredictor(model), SamPredictor(model, cache_image_tokens=False)
    cached.set_image(np.asarray(Image.open(ASSET).convert("RGB"))[:200, :300])
    plain.load_state(cached.export_state())
    click = {"point_coords": np.array([[48, 32]]), "point_labels": np.array([1])}
    before = cached.predict(**click)[2]
    with torch.no_grad():
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(1.1)
    ours, reference = cached.predict(**click)[2], plain.predict(**click)[2]
    assert np.abs(reference - before).max() > 1.0  # the change matters
    np.testing.assert_allclose(ours, reference, atol=2e-3 * np.abs(reference).max())


def test_prompts_of_many_points_take_the_plain_decoder(
    mobilesam_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache's cost grows with the square of a prompt's tokens: 2,000 points took 65 s
    and 2.3 GB (the plain decoder 0.4 s), 10,000 ended in a 25 GB allocation failure."""
    from ovsam.modeling.image_token_cache import MAX_CACHED_PROMPT_TOKENS

    cached, plain = SamPredictor(mobilesam_model), SamPredictor(mobilesam_model, False)
    image = np.asarray(Image.open(ASSET).convert("RGB"))
    cached.set_image(image)
    plain.load_state(cached.export_state())
    decoder, calls = mobilesam_model.mask_decoder, []
    forward_cached = decoder.forward_cached
    monkeypatch.setattr(
        decoder, "forward_cached", lambda *a: (calls.append(a[1].shape[1]), forward_cached(*a))[1]
    )
    rng = np.random.default_rng(0)
    for n in (MAX_CACHED_PROMPT_TOKENS - 1, MAX_CACHED_PROMPT_TOKENS, 3000):  # + 1 pad token
        points = rng.random((n, 2)) * [image.shape[1] - 1, image.shape[0] - 1]
        labels = np.ones(n)
        got = cached.predict(point_coords=points, point_labels=labels, multimask_output=False)
        ref = plain.predict(point_coords=points, point_labels=labels, multimask_output=False)
        assert np.abs(got[2] - ref[2]).max() < 1e-3
    assert calls == [MAX_CACHED_PROMPT_TOKENS]  # 15 points + the pad: cached; more: plain
