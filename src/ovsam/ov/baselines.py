"""The paper's SAM + CLIP baselines behind the OV-SAM predictor API.

Both segment with any SAM-family model (here the real MobileSAM) and name each mask with a
separate CLIP (text bank from the same CLIP):

- **Image-Crop**: the mask's region is cut out of the image (background blanked), resized to
  CLIP's input size and encoded (:func:`ovsam.clip.region_classifier.classify_regions`);
- **Feature-Crop**: CLIP's image tower runs once per image on the resized 1024² frame
  (CLIP-normalised); each mask's box pools its stride-32 map (RoIAlign at the pooling grid, stride 32 for ResNets)
  and the tower's pooling head embeds it.

Probabilities are a softmax over the vocabulary (no background class).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ovsam.clip.model import CLIP, CLIP_MEAN, CLIP_STD
from ovsam.clip.region_classifier import classify_regions, mask_boxes_xyxy
from ovsam.clip.text_bank import TextBank, build_text_bank
from ovsam.errors import InputError, NotReadyError
from ovsam.ov.classifier import Labels, check_random_weights, top_labels
from ovsam.ov.roi_align import roi_align
from ovsam.predictor import ImageState, SamPredictor
from ovsam.vocab import Vocabulary, load_vocabulary, prompt_templates

BaselineKind = Literal["image-crop", "feature-crop"]


class CropBaselinePredictor(SamPredictor):
    """SAM masks + CLIP labels; ``predict`` returns SAM's outputs plus ``[Labels]`` per mask.

    A CLIP with random weights warns (unless ``allow_random_weights``, for tests) and marks
    every :class:`Labels` (``random_weights``)."""

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
        super().__init__(sam)
        self.clip, self.kind, self.top_k = clip.eval(), kind, top_k
        check_random_weights(clip, allow=allow_random_weights)
        self.templates = (
            prompt_templates(templates) if isinstance(templates, str) else tuple(templates)
        )
        self.unknown_threshold = unknown_threshold
        self.bank: TextBank | None = None
        self._image: np.ndarray | None = None

    @property
    def random_weights(self) -> bool:
        """True while the CLIP has random weights (its labels are meaningless)."""
        return check_random_weights(self.clip, allow=True)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        super().set_image(image, image_format)
        self._image = np.ascontiguousarray(image if image_format == "RGB" else image[:, :, ::-1])

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
        """Labels for ``NxHxW`` boolean masks of the current image."""
        if self.bank is None:
            raise NotReadyError(
                "no vocabulary is set: call set_vocabulary(...) before predicting labels"
            )
        state = self._require_state()
        if self._image is None or self._image.shape[:2] != state.original_size:
            raise NotReadyError("the crop baselines need set_image (not load_state) for the pixels")
        masks = np.asarray(masks, dtype=bool)
        if self.kind == "image-crop":
            probs = classify_regions(self.clip, self._image, self.bank, masks=masks, top_k=1).probs
        else:
            boxes = torch.as_tensor(
                self.transform.apply_boxes(mask_boxes_xyxy(masks), state.original_size)
            ).float()
            rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1).to(self.device)
            stride = self.clip.visual.stage_strides[-1]
            side = self.clip.visual.image_size // stride
            pooled = roi_align(state.extras["clip_last"], rois, side, 1 / stride)
            emb = self.clip.visual.pool(pooled).float().cpu()
            probs = (self.clip.logit_scale.exp().float().cpu() * self.bank.similarity(emb)).softmax(
                -1
            )
        with_background = torch.cat([probs, probs.new_zeros((len(probs), 1))], dim=1)
        return top_labels(
            with_background,
            self.bank.names,
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
        masks, scores, low_res = super().predict(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits
        )
        binary = masks > self.model.mask_threshold if return_logits else masks
        return masks, scores, low_res, self.recognize_masks(self._non_empty(binary, box))

    def predict_boxes(  # type: ignore[override]
        self, boxes: np.ndarray, multimask_output: bool = False, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Labels]]:
        """SAM's ``predict_boxes`` plus labels of each box's first mask."""
        masks, scores, low_res = super().predict_boxes(boxes, multimask_output, batch_size)
        clipped = self.clip_boxes(boxes)
        first = np.stack(
            [self._non_empty(m[:1], b)[0] for m, b in zip(masks, clipped, strict=True)]
        )
        return masks, scores, low_res, self.recognize_masks(first)

    def _non_empty(self, masks: np.ndarray, box: np.ndarray | None) -> np.ndarray:
        """Replace empty masks by the prompt's box (or the whole image) so each gets a label."""
        fixed = masks.copy()
        height, width = fixed.shape[-2:]
        x0, y0, x1, y1 = 0, 0, width, height
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in self.clip_boxes(box)[0])
        for mask in fixed:
            if not mask.any():
                mask[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = True
        return fixed
