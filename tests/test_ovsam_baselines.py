"""SAM + CLIP crop baselines on the real MobileSAM (labels from a small random CLIP)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
from ovsam.clip.model import CLIP
from ovsam.clip.region_classifier import classify_regions
from ovsam.clip.text_bank import TextBank
from ovsam.errors import InputError, NotReadyError
from ovsam.image_io import load_image
from ovsam.image_state import PIXELS, ImageState
from ovsam.ov.baselines import CropBaselinePredictor
from ovsam.ov.roi_align import roi_align

TINY = CLIPConfig(
    32,
    VisionConfig("vit", 64, (2,), 64, 16),
    replace(get_clip_config("RN50").text, width=64, heads=1, layers=1),
    True,
)
NAMES = ["cup", "saucer", "spoon", "table"]
# these tests use a random CLIP on purpose (the warning itself is tested below)
pytestmark = pytest.mark.filterwarnings("ignore:CLIP model has random weights")


@pytest.fixture(scope="module")
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY).eval()


@pytest.mark.parametrize("kind", ["image-crop", "feature-crop"])
def test_baselines_segment_for_real_and_label_every_mask(
    mobilesam_model, clip: CLIP, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = CropBaselinePredictor(mobilesam_model, clip, kind, templates="none", top_k=3)
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    decoded: list[object] = []
    decode = predictor.decode_low_res
    monkeypatch.setattr(predictor, "decode_low_res", lambda *a: decoded.append(a) or decode(*a))
    with pytest.raises(NotReadyError, match="no vocabulary"):
        predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    with pytest.raises(NotReadyError, match="no vocabulary"):
        predictor.predict_boxes(np.array([SAMPLE_BOX]))
    assert decoded == []  # refused before any mask was decoded
    predictor.set_vocabulary(NAMES, progress=False)
    masks, scores, _, labels = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    assert len(decoded) == 1
    x0, y0, x1, y1 = SAMPLE_BOX
    inside = masks[0, int(y0) : int(y1), int(x0) : int(x1)].sum()
    assert masks[0].sum() > 30_000 and inside / masks[0].sum() > 0.95  # the real cup
    assert len(labels) == 1 and [n for n, _ in labels[0].top][0] in NAMES
    assert sum(p for _, p in labels[0].top) <= 1.0 + 1e-6 and labels[0].background == 0.0
    _, _, _, multi = predictor.predict(
        point_coords=np.array([[290, 120]]), point_labels=np.array([1])
    )
    assert len(multi) == 3


def test_image_crop_equals_direct_classification(mobilesam_model, clip: CLIP) -> None:
    predictor = CropBaselinePredictor(
        mobilesam_model, clip, "image-crop", templates="none", top_k=4
    )
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    bank = predictor.set_vocabulary(NAMES, progress=False)
    masks, _, _, labels = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    direct = classify_regions(clip, image, bank, masks=masks, top_k=4).top_k()[0]
    assert [n for n, _ in labels[0].top] == [n for n, _ in direct]
    assert [p for _, p in labels[0].top] == pytest.approx([p for _, p in direct], abs=1e-6)


def test_feature_crop_region_equal_to_a_class_ranks_first(mobilesam_model, clip: CLIP) -> None:
    predictor = CropBaselinePredictor(mobilesam_model, clip, "feature-crop", templates="none")
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[50:300, 200:400] = True
    frame = torch.as_tensor(
        predictor.transform.apply_boxes(
            np.array([[200, 50, 400, 300]], np.float32), predictor.original_size
        )
    )
    rois = torch.cat([torch.zeros(1, 1), frame], dim=1)
    with torch.inference_mode():
        region = clip.visual.pool(
            roi_align(predictor.export_state().extras["clip_last"], rois, 4, 1 / 16)
        )
    bank = torch.cat([F.normalize(torch.randn(2, 32), dim=-1), F.normalize(region, dim=-1)])
    predictor.bank = TextBank(("a", "b", "target"), bank, torch.arange(3), "k")
    assert predictor.recognize_masks(mask[None])[0].label == "target"


def test_unknown_baseline_kind(mobilesam_model, clip: CLIP) -> None:
    with pytest.raises(InputError, match="unknown baseline 'pixel-crop'"):
        CropBaselinePredictor(mobilesam_model, clip, "pixel-crop")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["image-crop", "feature-crop"])
def test_random_clip_warns_once_and_marks_every_label(mobilesam_model, kind: str) -> None:
    import warnings

    torch.manual_seed(1)
    clip = CLIP(TINY)  # no weights loaded, as create_model(name) without pretrained
    with pytest.warns(UserWarning) as caught:
        predictor = CropBaselinePredictor(mobilesam_model, clip, kind, templates="none")
    assert [str(w.message) for w in caught] == [
        "CLIP model has random weights: labels are meaningless"
    ]
    predictor.set_image(load_image(SAMPLE_PHOTO))
    predictor.set_vocabulary(NAMES, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: not per prediction, not when opted in
        labels = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)[3]
        assert predictor.random_weights and labels[0].random_weights
        CropBaselinePredictor(mobilesam_model, clip, kind, allow_random_weights=True)
    clip.load_state_dict(clip.state_dict())  # weights loaded: the labels are no longer marked
    labels = predictor.recognize_masks(np.ones((1, 400, 600), dtype=bool))
    assert not predictor.random_weights and not labels[0].random_weights


@pytest.mark.parametrize("kind", ["image-crop", "feature-crop"])
def test_clip_sees_the_rgb_pixels_sam_embeds(mobilesam_model, clip: CLIP, kind: str) -> None:
    """BGRA (OpenCV's IMREAD_UNCHANGED) and greyscale images: SAM and CLIP get the same RGB."""
    predictor = CropBaselinePredictor(mobilesam_model, clip, kind, templates="none", top_k=4)
    predictor.set_vocabulary(NAMES, progress=False)
    image = load_image(SAMPLE_PHOTO)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[50:300, 200:400] = True

    def labels_of(picture: np.ndarray, image_format: str = "RGB") -> list:
        predictor.set_image(picture, image_format)
        return predictor.recognize_masks(mask[None])[0].top

    alpha = np.full((*image.shape[:2], 1), 255, np.uint8)
    bgra = np.concatenate([image[:, :, ::-1], alpha], axis=2)
    assert labels_of(bgra, "BGR") == labels_of(image)
    alpha[:] = 0  # fully transparent: composited on white for both (as load_image does)
    white = np.full_like(image, 255)
    assert labels_of(np.concatenate([image[:, :, ::-1], alpha], axis=2), "BGR") == labels_of(white)
    grey = image[:, :, 1].copy()
    assert labels_of(grey, "BGR") == labels_of(np.repeat(grey[:, :, None], 3, axis=2))


def test_failed_set_image_keeps_the_previous_image(mobilesam_model, clip: CLIP) -> None:
    predictor = CropBaselinePredictor(mobilesam_model, clip, templates="none", top_k=4)
    predictor.set_vocabulary(NAMES, progress=False)
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    state = predictor.export_state()
    before = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
    for bad, message in (
        (image.astype(np.float32), "image must be uint8"),
        (image[:, :, :2], r"image must be HxWx3 .*got shape \(400, 600, 2\)"),
        (np.zeros((0, 600, 3), np.uint8), "image is empty"),
    ):
        with pytest.raises(InputError, match=message):
            predictor.set_image(bad, "BGR")
        assert predictor.export_state() is state
        after = predictor.predict(box=np.array(SAMPLE_BOX), multimask_output=False)
        assert after[3][0].top == before[3][0].top


def test_a_restored_state_is_cropped_from_its_own_pixels(mobilesam_model, clip: CLIP) -> None:
    from ovsam.predictor import SamPredictor

    predictor = CropBaselinePredictor(mobilesam_model, clip, templates="none", top_k=4)
    predictor.set_vocabulary(NAMES, progress=False)
    image = load_image(SAMPLE_PHOTO).copy()
    mask = np.zeros((1, *image.shape[:2]), dtype=bool)
    mask[:, 50:300, 200:400] = True
    predictor.set_image(image)
    first, state = predictor.recognize_masks(mask), predictor.export_state()
    image[:] = 0  # the caller reuses its buffer (a video frame): the state kept a copy
    predictor.set_image(load_image(SAMPLE_PHOTO)[::-1])  # another picture of the same size
    assert predictor.recognize_masks(mask) != first
    predictor.load_state(state)
    assert predictor.recognize_masks(mask) == first
    plain = SamPredictor(mobilesam_model)
    plain.set_image(image)
    predictor.load_state(plain.export_state())
    with pytest.raises(NotReadyError, match="image-crop baseline needs the image's 'pixels'"):
        predictor.recognize_masks(mask)


@pytest.mark.parametrize("kind", ["image-crop", "feature-crop"])
def test_no_masks_and_no_boxes_give_no_labels(mobilesam_model, clip: CLIP, kind: str) -> None:
    predictor = CropBaselinePredictor(mobilesam_model, clip, kind, templates="none")
    predictor.set_image(load_image(SAMPLE_PHOTO))
    predictor.set_vocabulary(NAMES, progress=False)
    assert predictor.recognize_masks(np.zeros((0, 400, 600), dtype=bool)) == []
    with pytest.raises(InputError, match=r"masks must be NxHxW with HxW = \(400, 600\)"):
        predictor.recognize_masks(np.ones((1, 40, 60), dtype=bool))
    for empty in (np.zeros((0, 4)), []):
        for multimask, masks_per_box in ((False, 1), (True, 3)):
            masks, scores, low_res, labels = predictor.predict_boxes(empty, multimask)
            assert masks.shape == (0, masks_per_box, 400, 600) and masks.dtype == bool
            assert scores.shape == (0, masks_per_box) and labels == []
            assert low_res.shape == (0, masks_per_box, 256, 256)
    boxes = np.array([SAMPLE_BOX, [0, 0, 100, 80]])
    masks, scores, low_res, labels = predictor.predict_boxes(boxes)
    assert masks.shape == (2, 1, 400, 600) and scores.shape == (2, 1) and len(labels) == 2
    assert labels == predictor.recognize_masks(masks[:, 0])


def test_empty_masks_are_labelled_by_their_box() -> None:
    masks = np.zeros((3, 6, 8), dtype=bool)
    masks[1, 2, 3] = True
    fixed = CropBaselinePredictor._non_empty(
        masks, np.array([[1, 2, 4, 5], [0, 0, 8, 6], [7, 5, 8, 6]])
    )
    assert fixed[0].sum() == 9 and fixed[0, 2:5, 1:4].all()
    assert np.array_equal(fixed[1], masks[1]) and fixed[2].sum() == 1 and fixed[2, 5, 7]
    assert CropBaselinePredictor._non_empty(masks, None)[0].all()
    full = masks[1:2]
    assert CropBaselinePredictor._non_empty(full, None) is full  # none empty: no copy


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 1, got 2.5"),
        ({"top_k": True}, "top_k must be an integer >= 1, got True"),
        ({"unknown_threshold": 1.5}, r"unknown_threshold must be a probability in \[0, 1\]"),
        ({"unknown_threshold": float("nan")}, "unknown_threshold must be a probability"),
        ({"templates": []}, "no prompt templates given"),
        ({"templates": ["a photo"]}, "each template needs exactly one '{}' placeholder"),
        ({"templates": ["a {}", 3]}, "templates must be a template set's name or a list of str"),
        ({"templates": "nope"}, "unknown template set 'nope'"),
    ],
)
def test_settings_are_checked_when_built(
    mobilesam_model, clip: CLIP, setting: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        CropBaselinePredictor(mobilesam_model, clip, **setting)
    predictor = CropBaselinePredictor(mobilesam_model, clip, top_k=np.int64(2))
    assert predictor.top_k == 2 and type(predictor.top_k) is int


def test_roi_align_takes_numpy_integer_sizes() -> None:
    features = torch.randn(1, 3, 16, 16)
    rois = torch.tensor([[0.0, 8, 8, 120, 100]])
    expected = roi_align(features, rois, 4, 1 / 8)
    assert torch.equal(roi_align(features, rois, np.int64(4), 1 / 8), expected)
    assert torch.equal(roi_align(features, rois, (np.int32(4), 4), 1 / 8), expected)


def test_feature_crop_states_carry_the_clip_that_made_their_feature_map(
    mobilesam_model, clip: CLIP
) -> None:
    first = CropBaselinePredictor(mobilesam_model, clip, "feature-crop", templates="none")
    first.set_image(np.full((64, 96, 3), 120, dtype=np.uint8))
    state = first.export_state()
    other = copy.deepcopy(clip)
    CropBaselinePredictor(mobilesam_model, other, "feature-crop").load_state(state)  # equal
    with torch.no_grad():
        next(other.visual.parameters()).mul_(-3)
    CropBaselinePredictor(mobilesam_model, other, "image-crop").load_state(state)  # no CLIP map
    with pytest.raises(InputError, match="computed by another clip visual"):
        CropBaselinePredictor(mobilesam_model, other, "feature-crop").load_state(state)


def test_the_image_kept_for_crops_stays_on_the_cpu_when_a_state_moves() -> None:
    """load_state moves a state to the predictor's device: the image-crop baseline's pixels
    went along and its crops then failed (``.numpy()`` of a GPU tensor; meta stands in)."""
    pixels = torch.zeros(4, 6, 3, dtype=torch.uint8)
    extras = {PIXELS: pixels, "clip_last": torch.zeros(1, 8, 2, 2)}
    state = ImageState(torch.zeros(1, 256, 64, 64), (4, 6), (683, 1024), extras)
    moved = state.to(torch.device("meta"))
    assert moved.features.is_meta and moved.extras["clip_last"].is_meta
    assert moved.extras[PIXELS] is pixels
