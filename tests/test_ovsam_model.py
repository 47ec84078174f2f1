"""Open-Vocabulary SAM: official architecture, recognition maths, the predictor (checkpoint
layouts: ``test_ovsam_checkpoints``)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.clip.text_bank import TextBank
from ovsam.errors import InputError, NotReadyError
from ovsam.image_io import load_image
from ovsam.ov import OVSamConfig, build_ovsam
from ovsam.ov.classifier import (
    calibrate_unknown_threshold,
    fused_probabilities,
    reaches_clip_map,
    top_labels,
)
from ovsam.ov.label_settings import check_label_settings
from ovsam.ov.predictor import OVSamPredictor
from ovsam_fixtures import small_ovsam

# these tests use random models on purpose (the warning itself: test_ovsam_checkpoints)
pytestmark = pytest.mark.filterwarnings("ignore:OVSam model has random weights")


def test_official_architecture_sizes_and_key_names() -> None:
    with torch.device("meta"):
        model = build_ovsam()
    state = model.state_dict()

    def params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert params(model) == 304_046_908  # the paper: 304M
    assert params(model.image_encoder.backbone) == 167_328_912
    assert params(model.image_encoder.neck) == 128_844_768
    expected = {
        "image_encoder.neck.pos_embed": (1, 64, 64, 1280),
        "image_encoder.neck.level_encoding.weight": (4, 1280),
        "image_encoder.neck.patch_embeds.0.projection.weight": (1280, 384, 4, 4),
        "image_encoder.neck.patch_embeds.2.projection.weight": (1280, 1536, 1, 1),
        "image_encoder.neck.patch_embeds.3.projection.weight": (3072, 1280, 2, 2),
        "image_encoder.neck.blocks.0.attn.rel_pos_h": (27, 80),
        "image_encoder.neck.blocks.4.attn.rel_pos_h": (127, 80),
        "image_encoder.neck.neck.2.weight": (256, 256, 3, 3),
        "fpn_neck.lateral_convs.3.conv.weight": (256, 3072, 1, 1),
        "fpn_neck.fpn_convs.0.conv.bias": (256,),
        "mask_decoder.mask_decoder.mask_tokens.weight": (1, 256),
        "mask_decoder.mask_decoder.output_hypernetworks_mlps.0.layers.2.weight": (32, 256),
        "mask_decoder.label_token.weight": (1, 256),
        "mask_decoder.label_mlp.layers.2.weight": (768, 256),
        "mask_decoder.roi_conv.0.conv.weight": (768, 256, 1, 1),
        "image_encoder.backbone.attnpool.positional_embedding": (145, 3072),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not [k for k in state if "iou" in k]


def test_trained_parts_start_from_the_official_initialisation() -> None:
    """mmdet's FPN: Xavier-uniform, zero biases; mmcv's ConvModule before a ReLU (roi_conv):
    Kaiming-normal on fan out. PyTorch's defaults were about half the FPN's scale, with
    biases."""
    from ovsam.ov.clip2sam import FPN, CLIP2SAMHead

    torch.manual_seed(0)
    fpn = FPN([256, 512, 1024, 2048])
    for conv in [m.conv for m in (*fpn.lateral_convs, *fpn.fpn_convs)]:
        fan_out, fan_in = conv.weight.shape[0], conv.weight[0].numel()
        bound = (6 / (fan_in + fan_out * conv.weight[0, 0].numel())) ** 0.5
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
        assert torch.count_nonzero(conv.bias) == 0
    roi = CLIP2SAMHead(embed_dim=768).roi_conv[0].conv.weight  # 768x256x1x1
    assert roi.std().item() == pytest.approx((2 / 768) ** 0.5, rel=0.02)


def test_forward_shapes_on_a_real_photo() -> None:
    model = small_ovsam()
    predictor = OVSamPredictor(model, top_k=3)
    image = load_image(SAMPLE_PHOTO)
    predictor.set_image(image)
    state = predictor.export_state()
    assert state.features.shape == (1, 256, 64, 64)
    assert [state.extras[f"fpn{i}"].shape[-1] for i in range(4)] == [256, 128, 64, 32]
    assert state.extras["clip_last"].shape == (1, 2048, 32, 32)
    bank = TextBank(("cup", "cat"), F.normalize(torch.randn(2, 1024), dim=-1), torch.arange(2), "k")
    predictor.set_text_bank(bank)
    masks, scores, low_res, labels = predictor.predict(box=np.array(SAMPLE_BOX))
    assert masks.shape == (1, 400, 600) and scores.shape == (1,) and low_res.shape == (1, 256, 256)
    assert len(labels) == 1 and len(labels[0].top) == 2 and labels[0].label in ("cup", "cat")
    probs = sum(p for _, p in labels[0].top) + labels[0].background
    assert probs == pytest.approx(1.0, abs=1e-5)
    boxes = np.array([[10, 10, 200, 200], SAMPLE_BOX])
    masks, scores, low_res, labels = predictor.predict_boxes(boxes)
    assert masks.shape == (2, 1, 400, 600) and len(labels) == 2


def test_states_carry_the_fpn_neck_that_made_their_pyramid() -> None:
    """OV-SAM models may share the image encoder and differ in the FPN neck (coco vs lvis):
    a state is accepted only where both match."""
    first = OVSamPredictor(small_ovsam())
    first.set_image(np.full((64, 96, 3), 120, dtype=np.uint8))
    state = first.export_state()
    twin = OVSamPredictor(small_ovsam())  # equal weights, other objects
    twin.load_state(state)
    other = small_ovsam()
    with torch.no_grad():
        for parameter in other.fpn_neck.parameters():
            parameter.mul_(-3)
    with pytest.raises(InputError, match="computed by another fpn neck"):
        OVSamPredictor(other).load_state(state)


def test_seen_classes_are_matched_by_name_key() -> None:
    """An LVIS file's ``traffic_light`` is the seen class ``traffic light`` (fusion weights
    depend on it); case and spacing do not matter either."""
    predictor = OVSamPredictor(small_ovsam())  # seen: COCO base (traffic light is novel)
    names = ("Traffic_Light", "person", "PERSON  ", "zebra", "cat")
    bank = F.normalize(torch.randn(5, 1024), dim=-1)
    predictor.set_text_bank(TextBank(names, bank, torch.arange(5), "k"))
    assert predictor._bank_and_seen[1].tolist() == [False, True, True, True, False]
    predictor.model.config = replace(predictor.model.config, seen_vocabulary=("traffic light",))
    predictor.set_text_bank(TextBank(names, bank, torch.arange(5), "k"))
    assert predictor._bank_and_seen[1].tolist() == [True, False, False, False, False]
    # assigning the bank sets its flags too: they were kept apart, and a bank of another
    # size failed deep in torch (the same size mixed up the seen and unseen fusion weights)
    predictor.bank = TextBank(names[:2], bank[:2], torch.arange(2), "k2")
    assert predictor.bank.names == names[:2]
    assert predictor._bank_and_seen[1].tolist() == [True, False]
    with pytest.raises(InputError, match="text bank has 8 dims; this OV-SAM embeds regions in"):
        predictor.bank = TextBank(("a",), torch.ones(1, 8), torch.arange(1), "k3")
    predictor.bank = None
    assert predictor.bank is None and predictor._bank_and_seen is None
    # class names a run recorded are whole names: "bag, handbag" is one class, not "bag"
    trained = ("bag, handbag", "person")
    predictor.model.config = replace(predictor.model.config, seen_vocabulary=trained)
    predictor.set_text_bank(TextBank(trained + ("bag",), bank[:3], torch.arange(3), "k4"))
    assert predictor._bank_and_seen[1].tolist() == [True, True, False]


def test_a_class_is_seen_by_any_of_its_synonyms() -> None:
    """Display names alone were compared: "person, human" was seen, "human, person" not."""
    predictor = OVSamPredictor(small_ovsam())  # seen: COCO base, "person" among them
    rows, index = F.normalize(torch.randn(3, 1024), dim=-1), torch.tensor([0, 0, 1])
    for synonyms in (("person", "human"), ("human", "person"), ("human", "man")):
        bank = TextBank((synonyms[0], "zebra"), rows, index, "k", (synonyms, ("zebra",)))
        predictor.set_text_bank(bank)
        assert predictor._bank_and_seen[1].tolist() == ["person" in synonyms, True], synonyms
    predictor.model.config = replace(predictor.model.config, seen_vocabulary=("bag, handbag",))
    predictor.bank = TextBank(("bag", "purse"), rows, index, "k", (("bag", "handbag"), ("purse",)))
    assert predictor._bank_and_seen[1].tolist() == [True, False]


def test_a_plain_sam_state_cannot_be_labelled() -> None:
    """A state from a plain SamPredictor on the same model has the embedding but no pyramid:
    labelling it is a NotReadyError naming what is missing, not a KeyError."""
    from ovsam.predictor import SamPredictor

    model = small_ovsam()
    plain = SamPredictor(model)
    plain.set_image(np.full((64, 96, 3), 120, dtype=np.uint8))
    predictor = OVSamPredictor(model)
    predictor.set_text_bank(TextBank(("cup",), torch.ones(1, 1024) / 32, torch.arange(1), "k"))
    predictor.load_state(plain.export_state())
    with pytest.raises(NotReadyError, match="OV-SAM recognizer needs the image's 'fpn0', 'fpn1'"):
        predictor.predict(box=np.array([10, 10, 50, 40]))


def _region_embeddings(
    predictor: OVSamPredictor, box: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, _, low_res, _ = predictor.predict(box=box)
    head_box = predictor.model.mask_decoder.mask_boxes(torch.as_tensor(low_res)[None])
    frame = torch.as_tensor(
        predictor.transform.apply_boxes(box[None], predictor.original_size)
    ).float()
    state = predictor.export_state()
    with torch.inference_mode():
        head = predictor.model.head_region_embeddings(
            [state.extras[f"fpn{i}"] for i in range(4)], head_box
        )
        clip = predictor.model.clip_region_embeddings(state.extras["clip_last"], frame)
    return head[0], clip[0], head_box


def test_region_equal_to_a_class_embedding_ranks_that_class_first() -> None:
    predictor = OVSamPredictor(small_ovsam(1), top_k=5)
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    predictor.set_image(image)
    box = np.array([100.0, 80.0, 420.0, 400.0])
    predictor.set_text_bank(
        TextBank(("zebra", "cat"), F.normalize(torch.randn(2, 1024), dim=-1), torch.arange(2), "k")
    )
    head, clip, head_box = _region_embeddings(predictor, box)
    assert head_box[0, 2] > head_box[0, 0], "the random decoder must predict a non-empty mask"
    names = (
        "zebra",
        "person",
        "cat",
        "car",
        "dog",
    )  # zebra/person/car seen (COCO base); cat/dog novel
    distractors = F.normalize(torch.randn(3, 1024), dim=-1)
    # seen class = the CLIP2SAM region embedding: the head (weight 0.9) decides
    bank = torch.cat(
        [
            F.normalize(head[None], dim=-1),
            distractors[:1],
            F.normalize(clip[None] * -1, dim=-1),
            distractors[1:],
        ]
    )
    predictor.set_text_bank(TextBank(names, bank, torch.arange(5), "seen"))
    assert predictor.predict(box=box)[3][0].label == "zebra"
    # novel class = the frozen-CLIP region embedding: CLIP (weight 0.9) decides
    bank = torch.cat(
        [
            F.normalize(clip[None] * -1, dim=-1),
            distractors[:1],
            F.normalize(clip[None], dim=-1),
            distractors[1:],
        ]
    )
    predictor.set_text_bank(TextBank(names, bank, torch.arange(5), "novel"))
    # the random decoder's speckled mask does not reach the 32x32 CLIP map (the head alone
    # would name it): name a solid mask of the box, prompted with the box, instead
    solid = np.full((1, 256, 256), -5.0, dtype=np.float32)
    x0, y0, x1, y1 = (predictor.transform.apply_boxes(box[None], (480, 640))[0] / 4).astype(int)
    solid[0, y0:y1, x0:x1] = 5.0
    top = predictor.recognize_logits(solid, box[None])[0].top
    assert top[0][0] == "cat" and top[0][1] > 0.5
    flipped = np.flip(np.flip(solid, 2).copy(), 2)  # negative strides: was a ValueError
    assert predictor.recognize_logits(flipped, box[None])[0].top == top


def test_fusion_formula_and_background() -> None:
    head = torch.tensor([[2.0, 0.0, 1.0, 0.0]])  # 3 classes + background
    clip = torch.tensor([[0.0, 3.0, 0.0, 0.0]])
    seen = torch.tensor([True, False, True])
    probs = fused_probabilities(head, clip, seen, 0.1, 0.9)
    ph, pc = head.softmax(-1), clip.softmax(-1)
    alpha = torch.tensor([0.1, 0.9, 0.1, 0.1])
    manual = ph ** (1 - alpha) * pc**alpha
    torch.testing.assert_close(probs, manual / manual.sum())
    head_only = fused_probabilities(head, clip, seen, 0.1, 0.9, valid=torch.tensor([False]))
    torch.testing.assert_close(head_only, ph)
    labels = top_labels(probs, ("a", "b", "c"), top_k=2, unknown_threshold=0.99)
    assert labels[0].label == "unknown" and len(labels[0].top) == 2
    assert labels[0].background == pytest.approx(float(probs[0, -1]))


def test_fusion_keeps_out_a_class_whose_probability_underflows() -> None:
    """x100 cosines underflow the softmax: clamping at 1e-30 revived the class the head rules
    out (B won with 0.89); the official product gives it 0, and log space agrees."""
    head = torch.tensor([[0.80, -0.70, 0.0]]) * 100  # classes A, B + background
    clip = torch.tensor([[0.10, 0.20, 0.0]]) * 100
    unseen = torch.tensor([False, False])
    probs = fused_probabilities(head, clip, unseen, 0.1, 0.9)
    exact = (0.1 * head.double().log_softmax(-1) + 0.9 * clip.double().log_softmax(-1)).softmax(-1)
    torch.testing.assert_close(probs, exact.float())
    assert top_labels(probs, ("A", "B"), 1)[0].label == "A"
    masked = torch.tensor([[0.0, float("-inf"), 0.0]])  # a class ruled out in one branch
    for alpha in (0.0, 1.0):  # weight 0 on a -inf log is 0, not NaN
        fused = fused_probabilities(masked, masked.flip(-1), unseen, alpha, alpha)
        assert torch.isfinite(fused).all() and fused[0, 1] == 0


def test_a_mask_too_small_for_the_clip_map_is_named_by_the_head_alone() -> None:
    """The official valid_masking: bilinear 256 -> 32 reads rows and columns 8i+3 and 8i+4,
    so a 2x2 blob elsewhere vanishes and only the CLIP2SAM head names it."""
    blob = torch.full((3, 256, 256), -5.0)
    blob[0, 0:2, 0:2] = 5.0  # between the rows the resize reads
    blob[1, 3:5, 3:5] = 5.0  # on them
    blob[2, 100:110, 50:60] = 5.0  # 40 px at 1024: anywhere reaches the map
    assert reaches_clip_map(blob, (32, 32)).tolist() == [False, True, True]
    assert reaches_clip_map(blob[:0], (32, 32)).shape == (0,)
    predictor = OVSamPredictor(small_ovsam(1), top_k=5)
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    names = ("zebra", "person", "cat", "car", "dog")  # cat and dog novel: CLIP weighs 0.9
    predictor.set_text_bank(
        TextBank(names, F.normalize(torch.randn(5, 1024), dim=-1), torch.arange(5), "k")
    )
    tiny = blob[:1].numpy()
    head_box = predictor.model.mask_decoder.mask_boxes(blob[:1, None])
    assert head_box[0, 2] > head_box[0, 0]  # not empty at 256: the old rule fused CLIP
    named = predictor.recognize_logits(tiny)[0].top
    head_only = predictor.classify_boxes(head_box, head_box, torch.full((1, 256, 256), -1.0))
    fused = predictor.classify_boxes(head_box, head_box)
    assert named == head_only[0].top and named != fused[0].top


def test_unknown_threshold_calibration_known_answer() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    correct = [True, True, True, False, True, False]
    assert calibrate_unknown_threshold(scores, correct, 1.0) == pytest.approx(0.7)
    assert calibrate_unknown_threshold(scores, correct, 0.8) == pytest.approx(0.5)
    never = calibrate_unknown_threshold(scores, [False] * 6, 0.5)
    assert never == math.inf  # 1.0 kept predictions of probability 1 (float32 rounds to it)
    certain = torch.tensor([[1.0, 0.0, 0.0]])
    assert top_labels(certain, ("a", "b"), 1, 1.0)[0].label == "a"
    assert top_labels(certain, ("a", "b"), 1, never)[0].label == "unknown"
    assert check_label_settings("none", 1, never).unknown_threshold == math.inf
    # a threshold keeps every region of its score: 0.5 would keep a wrong one at 0.5 too
    tied = calibrate_unknown_threshold([0.9, 0.5, 0.5], [True, True, False], 0.9)
    assert tied == pytest.approx(0.9)
    assert calibrate_unknown_threshold([0.5, 0.9, 0.5], [False, True, True], 0.9) == 0.9
    with pytest.raises(InputError, match="equal length"):
        calibrate_unknown_threshold([0.1], [True, False])


def test_predictor_errors() -> None:
    predictor = OVSamPredictor(small_ovsam(5))
    with pytest.raises(NotReadyError, match="no text model: .*create_model\\('RN50'"):
        predictor.set_vocabulary("coco")
    with pytest.raises(
        InputError, match="text bank has 8 dims; this OV-SAM embeds regions in 1024"
    ):
        predictor.set_text_bank(
            TextBank(("a",), torch.ones(1, 8), torch.zeros(1, dtype=torch.long), "k")
        )
    predictor.set_image(np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(NotReadyError, match="no vocabulary is set"):
        predictor.predict(box=np.array([0, 0, 32, 32]))
    with pytest.raises(InputError, match="text bank has no classes"):
        predictor.set_text_bank(TextBank((), torch.zeros(0, 1024), torch.zeros(0).long(), "k"))
    nan = torch.full((1, 1024), math.nan)  # labelled every region nan, label 'unknown'
    with pytest.raises(InputError, match="^text bank embeddings hold NaN or infinite values$"):
        TextBank(("a",), nan, torch.zeros(1, dtype=torch.long), "k")
    with pytest.raises(InputError, match="^set_text_bank takes a TextBank .*not a Tensor$"):
        predictor.set_text_bank(torch.ones(1, 1024))  # type: ignore[arg-type]


def test_segment_everything_with_ovsam_single_mask_token() -> None:
    from ovsam.automatic import AutomaticMaskGenerator, point_grid
    from ovsam.masks import mask_iou

    predictor = OVSamPredictor(small_ovsam(), top_k=1)
    predictor.set_text_bank(TextBank(("cup",), torch.ones(1, 1024) / 32, torch.arange(1), "k"))
    image = load_image(SAMPLE_PHOTO)
    generator = AutomaticMaskGenerator(
        predictor, points_per_side=3, pred_iou_thresh=-1.0, stability_score_thresh=0.0
    )
    records = generator.generate(image)  # one candidate per click, not SAM's three
    grid = (point_grid(3) * np.array([600, 400])).tolist()
    assert records
    for record in records:
        assert record["point_coords"][0] in grid
        masks, scores, _, _ = predictor.predict(
            point_coords=np.array(record["point_coords"]), point_labels=np.array([1])
        )
        assert mask_iou(masks[0], record["segmentation"]) > 0.99
        assert record["predicted_iou"] is None  # no IoU head: its score is named for what it is
        assert scores[0] == pytest.approx(record["low_res_stability_score"], abs=1e-4)


def test_no_masks_and_no_boxes_give_no_labels() -> None:
    predictor = OVSamPredictor(small_ovsam(6), top_k=2)
    predictor.set_text_bank(TextBank(("cup", "cat"), torch.ones(2, 1024), torch.arange(2), "k"))
    predictor.set_image(np.zeros((48, 64, 3), dtype=np.uint8))
    assert predictor.recognize_masks(np.zeros((0, 48, 64), dtype=bool)) == []
    for empty in (np.zeros((0, 4)), np.array([]), []):
        masks, scores, low_res, labels = predictor.predict_boxes(empty, multimask_output=True)
        assert masks.shape == (0, 1, 48, 64) and masks.dtype == bool and labels == []
        assert scores.shape == (0, 1) and low_res.shape == (0, 1, 256, 256)
    masks, scores, low_res, labels = predictor.predict_boxes(np.array([[4, 4, 40, 30]] * 3))
    assert masks.shape == (3, 1, 48, 64) and scores.shape == (3, 1)  # as documented
    assert low_res.shape == (3, 1, 256, 256) and len(labels) == 3


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
        ({"top_k": -2}, "top_k must be an integer >= 1, got -2"),
        ({"unknown_threshold": -0.1}, r"unknown_threshold must be a probability in \[0, 1\]"),
        ({"unknown_threshold": "0.5"}, "unknown_threshold must be a probability"),
        ({"templates": ("a {} and a {}",)}, "each template needs exactly one '{}' placeholder"),
        ({"templates": 7}, "templates must be a template set's name or a list of strings, got 7"),
    ],
)
def test_settings_are_checked_when_built(setting: dict, message: str) -> None:
    model = small_ovsam(7)
    with pytest.raises(InputError, match=message):
        OVSamPredictor(model, **setting)
    predictor = OVSamPredictor(model, top_k=np.int32(3), unknown_threshold=np.float32(0.25))
    assert (predictor.top_k, predictor.unknown_threshold) == (3, 0.25)


@pytest.mark.parametrize("clip_model", ["ViT-B-16", "ViT-L-14"])
def test_a_vit_clip_is_refused_by_name(clip_model: str) -> None:
    """A ViT has no stride-4..32 pyramid: ViT-L-14 failed deep in the adapter, and ViT-B-16
    built and pooled its boxes from the wrong part of the stride-16 map."""
    with pytest.raises(InputError, match=f"clip_model='{clip_model}' is a ViT .*strides 4, 8"):
        build_ovsam(OVSamConfig(clip_model=clip_model))
