"""Where segment-anything's and open_clip's users reach for their API, ovsam answers the same
way: keyword names, ``features`` before an image, ordinary tensors out of the tensor tier, a
model given to the mask generator, ``get_tokenizer(name)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ovsam
from ovsam.automatic import AutomaticMaskGenerator
from ovsam.clip.tokenizer import get_tokenizer
from ovsam.errors import InputError, NotReadyError
from ovsam.masks import encode_rle
from ovsam.predictor import SamPredictor
from ovsam.prompt_arrays import check_masks


@pytest.fixture(scope="module")
def predictor(mobilesam_model: torch.nn.Module) -> SamPredictor:
    predictor = SamPredictor(mobilesam_model)
    image = np.zeros((48, 64, 3), np.uint8)
    image[12:36, 16:48] = 255
    resized = predictor.transform.apply_image(image)
    tensor = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
    predictor.set_torch_image(tensor, original_image_size=image.shape[:2])  # SAM's keyword
    return predictor


def test_features_is_none_until_an_image_is_set(mobilesam_model: torch.nn.Module) -> None:
    fresh = SamPredictor(mobilesam_model)
    assert fresh.features is None and not fresh.is_image_set
    with pytest.raises(NotReadyError, match="no image is set"):
        fresh.get_image_embedding()


def test_the_tensor_tier_hands_out_ordinary_tensors(predictor: SamPredictor) -> None:
    """They were inference tensors: an in-place clamp of the logits to feed them back, or a
    probe trained on the embedding, failed ("Inplace update to inference tensor outside
    InferenceMode", "Inference tensors cannot be saved for backward")."""
    box = torch.tensor([[16.0, 12.0, 48.0, 36.0]]) * 1024 / 64
    masks, iou, low_res = predictor.predict_torch(None, None, box)
    assert masks.shape == (1, 3, 48, 64) and masks.dtype == torch.bool
    for tensor in (masks, iou, low_res, predictor.features, predictor.get_image_embedding()):
        assert not tensor.is_inference()
    low_res[low_res < -10] = -10  # in place, as SAM users refine
    again, _, _ = predictor.predict_torch(None, None, box, low_res[:, :1])
    assert again.shape == masks.shape
    probe = torch.nn.Conv2d(256, 1, 1)
    probe(predictor.features).mean().backward()  # a probe on the embedding trains
    assert probe.weight.grad is not None
    with torch.inference_mode():  # inside inference mode: no copies
        assert predictor.predict_torch(None, None, box)[2].is_inference()
    assert torch.equal(predictor.features, predictor.features)
    assert predictor.features.data_ptr() != predictor.features.data_ptr()  # copies: state kept


def test_a_sam_model_may_be_given_to_the_mask_generator(mobilesam_model: torch.nn.Module) -> None:
    generator = AutomaticMaskGenerator(mobilesam_model, points_per_side=2)
    assert isinstance(generator.predictor, SamPredictor)
    with pytest.raises(InputError, match="takes a SamPredictor .or a SAM model., got str"):
        AutomaticMaskGenerator("mobilesam")  # type: ignore[arg-type]


def test_float_masks_are_refused_not_read_as_nonzero() -> None:
    """Logits (``return_logits=True``) were taken as masks wherever nonzero: the whole image."""
    logits = np.full((1, 4, 5), -3.0, np.float32)
    with pytest.raises(
        InputError, match="masks must be boolean .or integers, nonzero inside., got float32"
    ):
        check_masks(logits, (4, 5))
    with pytest.raises(
        InputError, match="mask must be boolean .or integers, nonzero inside., got float32"
    ):
        encode_rle(logits[0])
    assert check_masks(np.eye(4, 5, dtype=np.uint8)[None] * 255, (4, 5)).sum() == 4
    assert encode_rle(np.eye(4, 5, dtype=bool)) == encode_rle(np.eye(4, 5, dtype=np.int64))


def test_get_tokenizer_takes_a_model_name_as_open_clip_does() -> None:
    assert get_tokenizer("RN50x16") is get_tokenizer() is get_tokenizer("ViT-B/32")
    assert get_tokenizer("RN50")(["a cat"]).shape == (1, 77)
    with pytest.raises(InputError, match="unknown CLIP model 'ViT-H-14'"):
        get_tokenizer("ViT-H-14")


def test_lazy_exports_are_listed_by_dir() -> None:
    assert {"build_model", "SamPredictor", "load_image", "__version__"} <= set(dir(ovsam))


def test_ovsam_own_calls_of_the_tensor_tier_copy_nothing(
    predictor: SamPredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copies are for callers outside inference mode only: ``predict``, ``predict_boxes``
    and the mask generator run inside it (``generate`` copied 553 MB of frame logits and
    masks for an 8x8 grid on the sample photo before it did)."""
    import ovsam.inference

    copied: list[object] = []
    monkeypatch.setattr(ovsam.inference, "ordinary_tensors", lambda value: copied.append(value))
    box = np.array([16, 12, 48, 36])
    predictor.predict(box=box)
    predictor.predict_boxes(box[None])
    AutomaticMaskGenerator(predictor, points_per_side=3, pred_iou_thresh=0.0).generate()
    assert copied == []
    assert predictor.decode_low_res(None, None, torch.tensor([[256.0, 192, 768, 576]])) is None
    assert len(copied) == 1  # a call from outside is handed its results through the copier
