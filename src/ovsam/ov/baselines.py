"""The paper's SAM + CLIP baselines behind the OV-SAM predictor API.

Both segment with any SAM-family model (here the real MobileSAM) and name each mask with a
separate CLIP (text bank from the same CLIP):

- **Image-Crop**: the mask's region is cut out of the image (background blanked), resized to
  CLIP's input size and encoded (:func:`ovsam.clip.region_classifier.classify_regions`);
- **Feature-Crop**: CLIP's image tower runs once per image on the resized 1024² frame
  (CLIP-normalised); each mask's box pools its stride-32 map (RoIAlign at the pooling grid, stride 32 for ResNets)
  and the tower's pooling head embeds it.

Probabilities are a softmax over the vocabulary (no background class). The image's RGB pixels
(the very ones SAM embeds) are kept in its :class:`~ovsam.image_state.ImageState`, so that a state
restored with ``load_state`` crops its own image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ovsam.clip.model import CLIP, CLIP_MEAN, CLIP_STD
from ovsam.clip.region_classifier import classify_regions, mask_boxes_xyxy
from ovsam.clip.text_bank import TextBank, build_text_bank
from ovsam.errors import InputError
from ovsam.image_state import PIXELS, ImageState
from ovsam.ov.classifier import Labels, check_random_weights, top_labels
from ovsam.ov.label_settings import check_label_settings, require_bank, require_extras
from ovsam.ov.roi_align import roi_align
from ovsam.predictor import SamPredictor
from ovsam.prompt_arrays import check_masks, rgb_image
from ovsam.vocab import Vocabulary, load_vocabulary

BaselineKind = Literal["image-crop", "feature-crop"]


def pixels_tensor(image: np.ndarray) -> torch.Tensor:
    """``image`` as kept under ``extras[PIXELS]`` for later crops: a uint8 copy, so that a
    reused frame buffer cannot change it."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))


class CropBaselinePredictor(SamPredictor):
    """SAM masks + CLIP labels; ``predict`` returns SAM's outputs plus ``[Labels]`` per mask.

    A CLIP with random weights warns (unless ``allow_random_weights``, for tests) and marks
    every :class:`Labels` (``random_weights``). Settings no prediction can use raise
    :class:`InputError` here (see :func:`~ovsam.ov.label_settings.check_label_settings`)."""

    def __init__(
        self,
        sam: torch.nn.Module,
        clip: CLIP,
        kind: BaselineKind = "image-crop",
        templates: str | Sequence[str] = "vild",
        top_k: int = 5,
        unknown_threshold: float = 0.0,
        allow_random_weights: bool = False,
    ) -> None:
        if kind not in ("image-crop", "feature-crop"):
            raise InputError(f"unknown baseline {kind!r}: choose image-crop or feature-crop")
        settings = check_label_settings(templates, top_k, unknown_threshold)
        super().__init__(sam)
        self.clip, self.kind = clip.eval(), kind
        check_random_weights(clip, allow=allow_random_weights)
        self.templates = settings.templates
        self.top_k = settings.top_k
        self.unknown_threshold = settings.unknown_threshold
        self.bank: TextBank | None = None

    @property
    def random_weights(self) -> bool:
        """True while the CLIP has random weights (its labels are meaningless)."""
        return check_random_weights(self.clip, allow=True)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """SAM's ``set_image``; a copy of the RGB pixels SAM embeds is kept in the image's
        state (``extras["pixels"]``) for the CLIP crops. On any error the previous image stays."""
        rgb = rgb_image(image, image_format)
        super().set_image(rgb)
        self._require_state().extras[PIXELS] = pixels_tensor(rgb)

    def _state_modules(self) -> dict[str, nn.Module]:
        """With ``feature-crop``, also CLIP's image tower (its feature map is in ``extras``)."""
        modules = super()._state_modules()
        return (
            modules | {"clip_visual": self.clip.visual} if self.kind == "feature-crop" else modules
        )

    def _encode(
        self, input_image: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
    ) -> ImageState:
        state = super()._encode(input_image, original_size, input_size)
        if self.kind == "feature-crop":
            sam_mean, sam_std = self.model.pixel_mean, self.model.pixel_std
            pixels = (input_image * sam_std + sam_mean) / 255.0  # undo SAM's normalisation
            mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
            clip_input = (pixels - mean) / std
            clip_input[..., input_size[0] :, :] = 0  # keep the padding at CLIP's mean
            clip_input[..., input_size[1] :] = 0
            state.extras["clip_last"] = self.clip.visual.forward_features(clip_input)[-1]
        return state

    def set_vocabulary(
        self, vocabulary: str | Path | Sequence[str] | Vocabulary, progress: bool = True
    ) -> TextBank:
        """Embed a vocabulary (built-in name, text file or list of names) with the CLIP."""
        self.bank = build_text_bank(
            self.clip, load_vocabulary(vocabulary), self.templates, progress=progress
        )
        return self.bank

    @torch.inference_mode()
    def recognize_masks(self, masks: np.ndarray) -> list[Labels]:
        """Labels for ``NxHxW`` boolean masks of the current image (N may be 0: no labels)."""
        bank, state = require_bank(self.bank), self._require_state()
        needed = PIXELS if self.kind == "image-crop" else "clip_last"
        require_extras(
            state,
            [needed],
            f"{self.kind} baseline",
            "states made by another predictor, or by set_torch_image, may",
        )
        masks = check_masks(masks, state.original_size)
        if len(masks) == 0:
            return []
        if self.kind == "image-crop":
            pixels = state.extras[PIXELS].numpy()
            probs = classify_regions(self.clip, pixels, bank, masks=masks, top_k=1).probs
        else:
            boxes = torch.as_tensor(
                self.transform.apply_boxes(mask_boxes_xyxy(masks), state.original_size)
            ).float()
            rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1).to(self.device)
            stride = self.clip.visual.stage_strides[-1]
            side = self.clip.image_size // stride
            pooled = roi_align(state.extras["clip_last"], rois, side, 1 / stride)
            emb = self.clip.visual.pool(pooled).float().cpu()
            probs = (self.clip.logit_scale.exp().float().cpu() * bank.similarity(emb)).softmax(-1)
        with_background = torch.cat([probs, probs.new_zeros((len(probs), 1))], dim=1)
        return top_labels(
            with_background,
            bank.names,
            self.top_k,
            self.unknown_threshold,
            self.random_weights,
        )

    def predict(  # type: ignore[override]
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Labels]]:
        """SAM's ``predict`` plus labels of each returned mask (empty masks: the box's)."""
        require_bank(self.bank)
        masks, scores, low_res = super().predict(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits
        )
        binary = masks > self.model.mask_threshold if return_logits else masks
        boxes = None if box is None else np.repeat(self.clip_boxes(box), len(binary), axis=0)
        return masks, scores, low_res, self.recognize_masks(self._non_empty(binary, boxes))

    def predict_boxes(  # type: ignore[override]
        self, boxes: np.ndarray, multimask_output: bool = False, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Labels]]:
        """SAM's ``predict_boxes`` (N may be 0) plus the labels of each box's first mask:
        ``(masks NxCxHxW bool, scores NxC float32, low_res_logits NxCx256x256 float32,
        N Labels)``."""
        require_bank(self.bank)
        masks, scores, low_res = super().predict_boxes(boxes, multimask_output, batch_size)
        first = self._non_empty(masks[:, 0], self.clip_boxes(boxes, allow_empty=True))
        return masks, scores, low_res, self.recognize_masks(first)

    @staticmethod
    def _non_empty(masks: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """``NxHxW`` masks with each empty one replaced by its prompt's box (``boxes`` ``Nx4``
        clipped pixels) or, without boxes, the whole image, so that each gets a label.

        ``masks`` itself when none is empty (no copy of full-size masks)."""
        empty = np.flatnonzero(~masks.any(axis=(1, 2)))
        if len(empty) == 0:
            return masks
        fixed = masks.copy()
        height, width = fixed.shape[-2:]
        for i in empty:
            x0, y0, x1, y1 = (0, 0, width, height) if boxes is None else boxes[i].astype(int)
            fixed[i, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = True
        return fixed
