"""``OVSamPredictor``: SAM's predictor plus a label for every mask.

::

    predictor = OVSamPredictor(build_model("ovsam_coco"), text_model=clip_rn50x16)
    predictor.set_image(image)                 # CLIP tower + adapter + FPN, once per image
    predictor.set_vocabulary("lvis")           # or a text file, or ["cat, kitty", "mug"]
    masks, scores, low_res, labels = predictor.predict(box=np.array([x0, y0, x1, y1]))
    labels[0].top                              # [("mug", 0.83), ("cup", 0.11), ...]

Masks and prompts follow :class:`~ovsam.predictor.SamPredictor` (pixels, XYXY, one mask per
prompt: the official decoder has a single mask token, so ``multimask_output`` is ignored, and
its score is the mask's stability, as it has no IoU head). Labels come from
:mod:`ovsam.ov.classifier`: the CLIP2SAM region (box of the predicted mask) and the frozen-CLIP
region (the prompt box when one is given, else the mask's box) fused per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ovsam.boxes import finite_array
from ovsam.clip.model import CLIP
from ovsam.clip.region_classifier import mask_boxes_xyxy
from ovsam.clip.text_bank import TextBank, build_text_bank
from ovsam.errors import InputError, NotReadyError
from ovsam.image_state import ImageState
from ovsam.ov.classifier import (
    Labels,
    bank_logits,
    check_random_weights,
    fused_probabilities,
    reaches_clip_map,
    top_labels,
)
from ovsam.ov.label_settings import (
    check_label_settings,
    check_text_model,
    require_bank,
    require_extras,
)
from ovsam.ov.model import OVSam, OVSamConfig
from ovsam.predictor import LOW_RES, SamPredictor
from ovsam.prompt_arrays import check_masks
from ovsam.vocab import Vocabulary, load_vocabulary, name_key

FPN_KEYS = ("fpn0", "fpn1", "fpn2", "fpn3")
# Regions labelled together by ``classify_boxes`` (each pools about 9 MiB of RN50x16 features).
REGIONS_PER_BATCH = 64


class OVSamPredictor(SamPredictor):
    """Segment and name objects with an :class:`~ovsam.ov.model.OVSam` model.

    ``text_model`` (a CLIP with the same joint space, e.g. OpenAI RN50x16) embeds vocabularies;
    without it, give banks directly with :meth:`set_text_bank`. ``top_k`` labels are returned
    per mask; a best probability below ``unknown_threshold`` is reported as ``"unknown"``.
    A model or text model with random weights warns (unless ``allow_random_weights``, for
    tests) and marks every :class:`Labels` (``random_weights``). Settings no prediction can
    use raise :class:`InputError` here (see :func:`~ovsam.ov.label_settings.check_label_settings`).
    """

    def __init__(
        self,
        model: OVSam,
        text_model: CLIP | None = None,
        templates: str | Sequence[str] = "vild",
        top_k: int = 5,
        unknown_threshold: float = 0.0,
        allow_random_weights: bool = False,
    ) -> None:
        if not isinstance(getattr(model, "config", None), OVSamConfig):  # e.g. a plain SAM
            raise InputError(
                f"OVSamPredictor needs an OV-SAM model (build_model('ovsam_coco')), not a "
                f"{type(model).__name__}; name a SAM model's masks with "
                "ovsam.ov.baselines.CropBaselinePredictor"
            )
        check_text_model(model.config.clip_model, text_model)
        settings = check_label_settings(templates, top_k, unknown_threshold)
        super().__init__(model)
        self.model: OVSam = model
        self.text_model = text_model
        self.templates = settings.templates
        self.top_k = settings.top_k
        self.unknown_threshold = settings.unknown_threshold
        # the bank and its seen-class flags, replaced together (see ``bank``)
        self._bank_and_seen: tuple[TextBank, torch.Tensor] | None = None
        check_random_weights(model, text_model, allow=allow_random_weights)

    @property
    def random_weights(self) -> bool:
        """True while the model or the text model has random weights (labels meaningless)."""
        return check_random_weights(self.model, self.text_model, allow=True)

    # ------------------------------------------------------------------ image + vocabulary
    def _state_modules(self) -> dict[str, nn.Module]:
        """The image encoder and the FPN neck (whose pyramid ``extras`` holds)."""
        return super()._state_modules() | {"fpn_neck": self.model.fpn_neck}

    def _encode(
        self, input_image: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
    ) -> ImageState:
        embedding, stages, fpn = self.model.encode(input_image)
        extras = dict(zip(FPN_KEYS, fpn, strict=True)) | {"clip_last": stages[-1]}
        return ImageState(
            embedding, (int(original_size[0]), int(original_size[1])), input_size, extras
        )

    def set_vocabulary(
        self, vocabulary: str | Path | Sequence[str] | Vocabulary, progress: bool = True
    ) -> TextBank:
        """Embed a vocabulary (built-in name, text file, list of names) with ``text_model``."""
        vocab = load_vocabulary(vocabulary)
        if self.text_model is None:
            clip = self.model.config.clip_model
            raise NotReadyError(
                f"no text model: pass text_model=ovsam.clip.create_model({clip!r}, "
                "pretrained='openai') (the CLIP this model was trained with) or call "
                "set_text_bank(bank)"
            )
        bank = build_text_bank(self.text_model, vocab, self.templates, progress=progress)
        return self.set_text_bank(bank)

    def set_text_bank(self, bank: TextBank) -> TextBank:
        """Use a prebuilt bank; classes named like the model's training classes count as seen:
        the display name or any synonym of the bank's (``["human", "person"]`` is COCO's seen
        ``person``), compared by :func:`~ovsam.vocab.name_key` (``aerosol_can`` is LVIS's
        ``aerosol can``; class names recorded by training are whole names, commas included).
        Names alone decide: ImageNet-21k's bird ``kite`` counts as COCO's seen ``kite``.
        Assigning ``predictor.bank`` does the same."""
        if not isinstance(bank, TextBank):
            raise InputError(
                f"set_text_bank takes a TextBank (ovsam.clip.text_bank.build_text_bank), not a "
                f"{type(bank).__name__}"
            )
        dim = self.model.mask_decoder.roi_conv[0].conv.out_channels
        if bank.dim != dim:
            raise InputError(f"text bank has {bank.dim} dims; this OV-SAM embeds regions in {dim}")
        seen_names = self.model.config.seen_vocabulary  # a built-in's name, or class names
        if isinstance(seen_names, str):
            seen_names = load_vocabulary(seen_names).classes
        seen = {name_key(n) for n in seen_names}  # whole: "bag, handbag" is one class
        # one assignment: a prediction running meanwhile reads the old pair or the new one
        self._bank_and_seen = (bank, _seen_flags(bank, seen))
        return bank

    @property
    def bank(self) -> TextBank | None:
        """The vocabulary's text bank (None until one is set)."""
        return None if self._bank_and_seen is None else self._bank_and_seen[0]

    @bank.setter
    def bank(self, bank: TextBank | None) -> None:
        if bank is None:
            self._bank_and_seen = None
        else:
            self.set_text_bank(bank)

    # ------------------------------------------------------------------ recognition
    @torch.inference_mode()
    def classify_boxes(
        self,
        head_boxes: torch.Tensor,
        clip_boxes: torch.Tensor,
        logits: torch.Tensor | None = None,
    ) -> list[Labels]:
        """Labels for regions given as ``Bx4`` XYXY boxes in the 1024 input frame: ``head_boxes``
        pool the FPN (CLIP2SAM), ``clip_boxes`` the frozen CLIP map. B may be 0 (no labels).
        With the masks' ``BxHxW`` low-res ``logits`` the frozen-CLIP branch counts only for
        masks that reach its map (:func:`~ovsam.ov.classifier.reaches_clip_map`, as the
        official model); without, for non-empty ``head_boxes``."""
        labelled, state = self._bank_and_seen, self._require_state()
        bank = require_bank(None if labelled is None else labelled[0])
        require_extras(
            state, [*FPN_KEYS, "clip_last"], "OV-SAM recognizer", "states of other predictors"
        )
        if len(head_boxes) == 0:
            return []
        config = self.model.config
        fpn = [state.extras[k] for k in FPN_KEYS]
        clip_map = state.extras["clip_last"]
        probs = []
        # a region's pooled features take megabytes: a few regions at a time bound the memory
        for start in range(0, len(head_boxes), REGIONS_PER_BATCH):
            rows = slice(start, start + REGIONS_PER_BATCH)
            head = self.model.head_region_embeddings(fpn, head_boxes[rows].to(self.device))
            clip = self.model.clip_region_embeddings(clip_map, clip_boxes[rows].to(self.device))
            if logits is not None:
                valid = reaches_clip_map(logits[rows].to(self.device), clip_map.shape[-2:])
            else:
                box = head_boxes[rows]
                valid = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
            fused = fused_probabilities(
                bank_logits(head, bank, config.logit_scale),
                bank_logits(clip, bank, config.logit_scale),
                labelled[1],
                config.alpha_seen,
                config.alpha_unseen,
                valid.to(self.device),
            )
            probs.append(fused.cpu())
        return top_labels(
            torch.cat(probs), bank.names, self.top_k, self.unknown_threshold, self.random_weights
        )

    def recognize_logits(
        self, low_res: np.ndarray, prompt_boxes: np.ndarray | None = None
    ) -> list[Labels]:
        """Labels for masks given as ``Nx256x256`` low-res logits (what :meth:`predict` returns),
        named exactly as :meth:`predict` names them: the CLIP2SAM branch pools each mask's box,
        the frozen-CLIP branch the ``Nx4`` XYXY pixel ``prompt_boxes`` the masks were prompted
        with (clipped to the image; default: the masks' own boxes). N may be 0."""
        require_bank(self.bank)
        hint = f"Nx{LOW_RES}x{LOW_RES} logits"  # predict's own float32 logits: not copied
        logits = finite_array("low-res logits", low_res, hint, dtype=np.float32, copy=False)
        if logits.ndim != 3 or logits.shape[1:] != (LOW_RES, LOW_RES):
            raise InputError(
                f"low-res logits must be Nx{LOW_RES}x{LOW_RES}, got shape {logits.shape}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(logits))  # e.g. np.flip's view
        head_boxes = self.model.mask_decoder.mask_boxes(tensor[:, None])
        clip_boxes = head_boxes
        if prompt_boxes is not None:
            boxes = self.clip_boxes(prompt_boxes, allow_empty=len(logits) == 0)
            if len(boxes) != len(logits):
                raise InputError(f"{len(boxes)} prompt boxes for {len(logits)} masks")
            frame = self.transform.apply_boxes(boxes, self.original_size)
            clip_boxes = torch.as_tensor(frame, dtype=torch.float32)
        return self.classify_boxes(head_boxes, clip_boxes, tensor)

    def predict(  # type: ignore[override]
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = False,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Labels]]:
        """SAM's ``predict`` (``1xHxW`` masks, ``1`` score, ``1x256x256`` logits) + ``[Labels]``:
        always one mask (the official decoder has a single mask token; ``multimask_output`` is
        ignored, and its default is False where :class:`SamPredictor`'s is True)."""
        require_bank(self.bank)
        masks, scores, low_res = super().predict(
            point_coords, point_labels, box, mask_input, False, return_logits
        )
        return masks, scores, low_res, self.recognize_logits(low_res, box)

    def predict_boxes(  # type: ignore[override]
        self, boxes: np.ndarray, multimask_output: bool = False, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Labels]]:
        """One mask + labels per ``Nx4`` XYXY pixel box (N may be 0; ``multimask_output`` is
        ignored): ``(masks Nx1xHxW bool, scores Nx1 float32, low_res_logits Nx1x256x256
        float32, N Labels)``."""
        require_bank(self.bank)
        masks, scores, low_res = super().predict_boxes(boxes, False, batch_size)
        return masks, scores, low_res, self.recognize_logits(low_res[:, 0], boxes)

    def recognize_masks(self, masks: np.ndarray) -> list[Labels]:
        """Labels for masks the user already has (``NxHxW`` bool at the image's size; N may be
        0, giving no labels)."""
        require_bank(self.bank)
        boxes = mask_boxes_xyxy(check_masks(masks, self.original_size)).reshape(-1, 4)
        frame = torch.as_tensor(self.transform.apply_boxes(boxes, self.original_size)).float()
        return self.classify_boxes(frame, frame)


def _seen_flags(bank: TextBank, seen: set[str]) -> torch.Tensor:
    """``C`` bools: whether each class of ``bank`` is in ``seen`` (``name_key`` strings) by its
    display name, any synonym, or its synonyms written whole (``"bag, handbag"``)."""
    flags = []
    for i, display in enumerate(bank.names):
        synonyms = bank.synonyms[i] if bank.synonyms else ()
        names = (display, *synonyms, ", ".join(synonyms))
        flags.append(any(name_key(n) in seen for n in names))
    return torch.tensor(flags)
