"""SAM-style promptable predictor: embed an image once, then answer many prompts cheaply.

Two tiers, as in segment-anything:

* numpy tier — :meth:`SamPredictor.set_image` takes an ``HxWx3`` uint8 RGB array and
  :meth:`SamPredictor.predict` takes prompts in original-image pixels (points ``Nx2`` XY,
  labels ``N`` with 1 = foreground / 0 = background, one box ``XYXY``, a ``1x256x256``
  low-res logit mask from an earlier call). Inputs are validated; bad ones raise
  :class:`~ovsam.errors.InputError` naming the problem.
* tensor tier — :meth:`SamPredictor.predict_torch` takes batched prompts already mapped into
  the model's 1024-pixel input frame (``self.transform``) and returns tensors (ordinary ones,
  as segment-anything's: :mod:`ovsam.inference`).

The embedding of the current image can be exported and re-loaded (:class:`ImageState`), so
a server can keep many embedded images in a cache and switch between them for free.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from torch import nn

from ovsam.boxes import clip_boxes_to_image
from ovsam.errors import InputError, NotReadyError
from ovsam.image_state import ImageState
from ovsam.inference import inference_api
from ovsam.input_values import check_flag
from ovsam.modeling.common import weights_checksum, weights_key
from ovsam.modeling.image_token_cache import MAX_CACHED_PROMPT_TOKENS, ImageTokenCache
from ovsam.prompt_arrays import check_mask_input, check_points, rgb_image
from ovsam.prompt_tensors import check_image_tensor, check_prompt_tensors
from ovsam.transforms import ResizeLongestSide

LOW_RES = 256
# Float32 elements mask upscaling may hold at once (256 MB): masks are upscaled a few at a
# time, so that a batch of prompts on a large photo never holds every mask's logits at once.
UPSCALE_BUDGET = 1 << 26


class SamPredictor:
    """Predict masks for prompts on one image with a SAM-family model.

    ``model`` must expose ``image_encoder`` (with ``img_size``), ``prompt_encoder``,
    ``mask_decoder``, ``preprocess``, ``postprocess_masks`` and ``mask_threshold``.

    With ``cache_image_tokens`` and a decoder that offers ``forward_cached``, the decoder's
    prompt-independent image work is done once per image, on the first prompt without a mask
    input, and kept in the image's :class:`ImageState` (~30 MB for SAM's decoder; see
    :mod:`ovsam.modeling.image_token_cache`); every later prompt costs less on the CPU. The
    default (None) uses it on the CPU only: on a GPU, where a decode is kernel-launch bound,
    it made single prompts slower. Results equal the plain decoder's up to fp32 rounding.
    Prompts of over ``MAX_CACHED_PROMPT_TOKENS`` tokens take the plain decoder (see there).
    Like segment-anything's, a predictor holds one current image: a prompt running while
    another thread calls ``set_image`` or ``load_state`` may mix the two. Give each thread
    its own predictor (they may share the model) or a lock, as the server does.
    """

    def __init__(self, model: nn.Module, cache_image_tokens: bool | None = None) -> None:
        if not all(hasattr(model, a) for a in ("image_encoder", "prompt_encoder", "mask_decoder")):
            raise InputError(
                f"SamPredictor needs a SAM-family model (build_model(...)), got {model!r:.80}"
            )
        self.model = model
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self._state: ImageState | None = None
        self._checksums: dict[str, tuple[tuple[object, ...], tuple[object, ...]]] = {}
        if cache_image_tokens is not None:
            cache_image_tokens = check_flag("cache_image_tokens", cache_image_tokens)
        self.cache_image_tokens = cache_image_tokens

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def score_name(self) -> str:
        """What the decoder's mask scores are: SAM's ``"predicted_iou"`` (its IoU head), or the
        decoder's ``score_name`` (OV-SAM's CLIP2SAM head has no IoU head: its scores are the
        ``"low_res_stability_score"``, the stability of the low-res logits)."""
        return getattr(self.model.mask_decoder, "score_name", "predicted_iou")

    # ---------------------------------------------------------------- image state
    @property
    def is_image_set(self) -> bool:
        """Whether an image has been embedded (``set_image``) or loaded (``load_state``)."""
        return self._state is not None

    def _require_state(self) -> ImageState:
        if self._state is None:
            raise NotReadyError("no image is set: call set_image(image) before predicting")
        return self._state

    @property
    def original_size(self) -> tuple[int, int]:
        """``(H, W)`` of the current image (:class:`NotReadyError` before one is set, where
        SAM's attribute is None)."""
        return self._require_state().original_size

    @property
    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of the current image inside the model's 1024 frame."""
        return self._require_state().input_size

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an ``HxWx3`` uint8 image (``image_format`` "RGB" or "BGR"; ``HxWx4`` and
        greyscale ``HxW`` are converted, see :func:`~ovsam.prompt_arrays.rgb_image`).

        On any error the previous image stays set."""
        image = rgb_image(image, image_format)
        resized = self.transform.apply_image(image)
        tensor = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        self.set_torch_image(tensor, (image.shape[0], image.shape[1]))

    @torch.inference_mode()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, int]
    ) -> None:
        """Embed a ``1x3xhxw`` image (real values 0..255) already resized by ``self.transform``
        from an ``original_image_size`` ``(H, W)`` image; a refused input keeps the current
        image."""
        original_size, input_size = check_image_tensor(
            transformed_image, original_image_size, self.transform.target_length
        )
        dtype = next(self.model.image_encoder.parameters()).dtype
        image = transformed_image.to(self.device, dtype)
        state = self._encode(self.model.preprocess(image), original_size, input_size)
        state.encoder = self._state_keys()
        self._state = state

    def _state_modules(self) -> dict[str, nn.Module]:
        """The modules whose outputs an :class:`ImageState` holds, by name (subclasses that
        keep more in ``extras`` add theirs)."""
        return {"image_encoder": self.model.image_encoder}

    def _state_keys(self) -> dict[str, tuple[object, ...]]:
        return {name: weights_key(m) for name, m in self._state_modules().items()}

    def _checksum(self, name: str) -> tuple[object, ...]:
        """:func:`~ovsam.modeling.common.weights_checksum` of state module ``name``, computed
        again only when :func:`~ovsam.modeling.common.weights_key` says its weights changed."""
        module = self._state_modules()[name]
        key = weights_key(module)
        if name not in self._checksums or self._checksums[name][0] != key:
            self._checksums[name] = (key, weights_checksum(module))
        return self._checksums[name][1]

    def _encode(
        self, input_image: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
    ) -> ImageState:
        """Run the image encoder on a normalised, padded ``1x3x1024x1024`` batch."""
        features = self.model.image_encoder(input_image)
        return ImageState(features, (int(original_size[0]), int(original_size[1])), input_size)

    @inference_api
    def get_image_embedding(self) -> torch.Tensor:
        """The current ``1x256x64x64`` image embedding; :class:`NotReadyError` before an image
        is set (where :attr:`features` is None, as in SAM)."""
        return self._require_state().features

    @property
    def features(self) -> torch.Tensor | None:
        """The current image embedding, None before ``set_image`` / after ``reset_image``."""
        return None if self._state is None else self.get_image_embedding()

    def export_state(self) -> ImageState:
        """The current image's state, to keep in a cache and restore with ``load_state``.

        The first export after the weights change also checksums the weights of the modules
        that made the state (about 0.1 s for MobileSAM's image encoder), so that another
        predictor with equal weights can load it."""
        state = self._require_state()
        if state.encoder_checksum is None and state.encoder == self._state_keys():
            state.encoder_checksum = {name: self._checksum(name) for name in state.encoder}
        return state

    def load_state(self, state: ImageState) -> None:
        """Make ``state`` (from ``export_state``) the current image without re-encoding.

        Raises :class:`InputError` for anything but an :class:`ImageState`, or for a state
        whose features or extras a module with other weights (another model, or weights
        changed since, except through ``.data``: see
        :func:`~ovsam.modeling.common.weights_key`) computed; modules the state or this
        predictor lacks are not compared. A state from another device is copied to this one.
        """
        if not isinstance(state, ImageState):
            raise InputError(
                f"load_state takes the ImageState of export_state, got {type(state).__name__}"
            )
        current, saved = self._state_keys(), state.encoder_checksum or {}
        for name in current.keys() & state.encoder.keys():
            if state.encoder[name] != current[name] and saved.get(name) != self._checksum(name):
                raise InputError(
                    f"this image state was computed by another {name.replace('_', ' ')} "
                    "(another model or other weights): call set_image instead"
                )
        self._state = state.to(self.device)

    def reset_image(self) -> None:
        """Forget the current image."""
        self._state = None

    def _image_token_cache(self, state: ImageState) -> ImageTokenCache | None:
        """The decoder's per-image cache for ``state``, built on first use (None: not used)."""
        use = self.cache_image_tokens
        return state.token_cache(
            self.model, state.features.device.type == "cpu" if use is None else use
        )

    # ---------------------------------------------------------------- validation
    def clip_boxes(self, boxes: object, allow_empty: bool = False) -> np.ndarray:
        """Validate ``Nx4`` XYXY pixel boxes and clip them to the image (``Nx4`` float32).

        Raises :class:`InputError` for NaN, inverted boxes (x1 < x0 or y1 < y0), boxes that
        lie entirely outside the image, and boxes less than 1 pixel wide or high after clipping; for no box
        unless ``allow_empty`` (then ``0x4`` and ``[]`` give a ``0x4`` array).
        """
        height, width = self.original_size
        return clip_boxes_to_image(boxes, height, width, allow_empty)

    # ---------------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for one set of prompts, in original-image pixels.

        ``point_coords`` ``Nx2`` XY pixels with ``point_labels`` ``N`` (1 = object, 0 =
        background; ``0x2`` counts as no points), ``box`` one XYXY pixel box, clipped to the
        image when it reaches past an edge (SAM passes it on as it is; see :meth:`clip_boxes`),
        ``mask_input`` ``1x256x256`` logits. Returns ``(masks CxHxW bool, scores C float32,
        low_res_logits Cx256x256 float32)`` with C = 3 when ``multimask_output`` else 1.
        ``return_logits`` returns mask logits instead of booleans. Feed
        ``low_res_logits[i][None]`` back as ``mask_input`` to refine.
        """
        self._require_state()
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None:
            coords, labels = check_points(point_coords, point_labels, self.original_size)
            if len(coords):  # an empty click list: the other prompts alone
                frame = self.transform.apply_coords(coords, self.original_size)
                coords_t = torch.as_tensor(frame)[None]
                labels_t = torch.as_tensor(labels, dtype=torch.int64)[None]
        elif point_labels is not None:
            raise InputError("point_labels were given without point_coords")
        if coords_t is None and box is None and mask_input is None:
            raise InputError("give at least one prompt: points, a box or a mask_input")
        if box is not None:
            boxes = self.clip_boxes(box)
            if boxes.shape[0] != 1:
                raise InputError("predict takes one box; use predict_boxes for many")
            box_t = torch.as_tensor(self.transform.apply_boxes(boxes, self.original_size))
        if mask_input is not None:
            mask_t = torch.as_tensor(check_mask_input(mask_input, LOW_RES))[None]
        masks, scores, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits
        )
        return (  # float32 logits whatever the model's dtype (numpy has no bfloat16)
            (masks[0].float() if return_logits else masks[0]).cpu().numpy(),
            scores[0].float().cpu().numpy(),
            low_res[0].float().cpu().numpy(),
        )

    @torch.inference_mode()
    def predict_boxes(
        self, boxes: np.ndarray, multimask_output: bool = False, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict one mask set per box for ``Nx4`` XYXY pixel boxes (N may be 0: ``0x4`` or
        ``[]``), decoded ``batch_size`` boxes at a time.

        Returns ``(masks NxCxHxW bool, scores NxC float32, low_res_logits NxCx256x256
        float32)``, C as :meth:`predict`. The full-size masks are written straight into the
        returned array (the only copy on the CPU), :meth:`masks_per_upscale` at a time.
        """
        self._require_state()
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        clipped = self.clip_boxes(boxes, allow_empty=True)
        frame = torch.as_tensor(self.transform.apply_boxes(clipped, self.original_size))
        decoded = [
            self.decode_low_res(None, None, chunk, None, multimask_output)
            for chunk in frame.split(int(batch_size))
        ]
        low_res, scores = (torch.cat(parts) for parts in zip(*decoded, strict=True))
        masks = self.binary_masks(low_res)
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low_res.float().cpu().numpy()

    @inference_api
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction on prompts already in the model's 1024-pixel input frame.

        ``point_coords`` ``BxNx2`` XY and ``point_labels`` ``BxN`` (1 object, 0 background,
        -1 padding; 2 and 3 are a box's top-left and bottom-right corners, as in
        segment-anything's ONNX model, where its PyTorch prompt encoder adds no label
        embedding: rows holding them decode as that box, with no padding point, so every row
        must hold corners or none); ``boxes`` ``Bx4`` XYXY; ``mask_input`` ``Bx1x256x256`` logits (or one
        ``1x1x256x256`` for all B). Returns ``(masks BxCxHxW, iou_predictions BxC,
        low_res_logits BxCx256x256)``; masks are booleans unless ``return_logits``. On a GPU
        the B prompts are decoded at once, as in segment-anything (memory grows with B;
        :meth:`predict_boxes` passes 64 at a time); on the CPU a few at a time.
        """
        return_logits = check_flag("return_logits", return_logits)
        low_res, iou = self.decode_low_res(
            point_coords, point_labels, boxes, mask_input, multimask_output
        )
        masks = self.upscale_masks(low_res) if return_logits else self.binary_masks(low_res)
        return masks, iou, low_res

    @inference_api
    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder only: ``(low_res_logits BxCx256x256, iou BxC)``.

        Same inputs as :meth:`predict_torch`; use :meth:`upscale_masks` for full size.
        """
        state = self._require_state()
        check_prompt_tensors(point_coords, point_labels, boxes, mask_input, LOW_RES)
        multimask_output = check_flag("multimask_output", multimask_output)
        device = self.device
        points = None
        if point_coords is not None:
            points = (point_coords.to(device, torch.float32), point_labels.to(device))
        if mask_input is not None:  # in the model's dtype; float16 ends at 65504: a larger
            dtype = self._weights_dtype()  # accepted logit became inf, and every output NaN
            limit = min(torch.finfo(dtype).max, torch.finfo(mask_input.dtype).max)
            mask_input = mask_input.to(device).clamp(-limit, limit).to(dtype)
        sparse, dense = self.model.prompt_encoder(
            points=points,
            boxes=None if boxes is None else boxes.to(device, torch.float32),
            masks=mask_input,
        )
        cached = mask_input is None and sparse.shape[1] <= MAX_CACHED_PROMPT_TOKENS
        cache = self._image_token_cache(state) if cached else None
        if cache is not None:
            return self.model.mask_decoder.forward_cached(cache, sparse, multimask_output)
        return self.model.mask_decoder(
            image_embeddings=state.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def _weights_dtype(self) -> torch.dtype:
        """The prompt encoder's weights' dtype (float32 unless converted, e.g. ``.double()``)."""
        return self.model.prompt_encoder.no_mask_embed.weight.dtype

    @inference_api
    def upscale_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        """``BxCx256x256`` low-res logits -> ``BxCxHxW`` logits at the original image size."""
        state = self._require_state()
        return self.model.postprocess_masks(low_res, state.input_size, state.original_size)

    @inference_api
    def frame_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """``BxCx256x256`` low-res logits -> ``BxCxhxw`` logits on the resized image in the
        model's input frame (:meth:`upscale_masks` before its last upscale)."""
        return self.model.masks_in_input_frame(low_res, self._require_state().input_size)

    def masks_per_upscale(self) -> int:
        """How many masks :meth:`upscale_masks` may take at once within ``UPSCALE_BUDGET`` (each
        holds a square intermediate of the model's input size and its original-size logits)."""
        height, width = self._require_state().original_size
        return max(1, UPSCALE_BUDGET // (self.transform.target_length**2 + height * width))

    @inference_api
    def binary_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        """``BxCx256x256`` low-res logits -> ``BxCxHxW`` bool masks at the original size
        (logits above ``mask_threshold``), upscaled :meth:`masks_per_upscale` at a time."""
        flat = low_res.flatten(0, 1)[:, None]
        size = self._require_state().original_size
        out = torch.empty((len(flat), *size), dtype=torch.bool, device=low_res.device)
        step = self.masks_per_upscale()
        for start in range(0, len(flat), step):
            rows = slice(start, start + step)
            torch.gt(self.upscale_masks(flat[rows])[:, 0], self.model.mask_threshold, out=out[rows])
        return out.view(*low_res.shape[:2], *size)
