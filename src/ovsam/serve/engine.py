"""One model shared by all requests: serialised inference plus an optional recognizer hook."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ovsam.image_state import ImageState
from ovsam.predictor import SamPredictor
from ovsam.segment_job import choose_multimask
from ovsam.serve.fair_lock import FairLock
from ovsam.vocab import Vocabulary

NO_RECOGNITION = (
    "recognition weights are missing: no CLIP / Open-Vocabulary SAM checkpoint is loaded, so "
    "masks come without class labels"
)


def always() -> bool:
    """A request that never stops wanting what it asked for (the default ``wanted``)."""
    return True


@dataclass(frozen=True)
class DecodedMask:
    """A mask to name: ``mask`` ``HxW`` bool, its ``256x256`` low-res ``logits``, and the
    XYXY pixel ``box`` it was prompted with (None without one)."""

    mask: np.ndarray
    logits: np.ndarray
    box: np.ndarray | None


class Recognizer(Protocol):
    """Names masks against a vocabulary (implemented by the Open-Vocabulary SAM side).

    ``random_weights`` is true when the labels come from random weights (testing only)."""

    available: bool
    message: str
    random_weights: bool

    def check(self, vocabulary: Vocabulary) -> None:
        """Raise :class:`~ovsam.errors.InputError` if ``vocabulary`` cannot be used (e.g. a name
        longer than the text encoder's context); called when a vocabulary is posted."""

    def kept(self, vocabulary: Vocabulary) -> tuple[bool, object]:
        """``(True, prepared)`` when :meth:`prepare` would answer ``prepared`` at once (nothing
        to build or wait for), else ``(False, None)``."""

    def prepare(self, vocabulary: Vocabulary, wanted: Callable[[], bool] = always) -> object:
        """What :meth:`label` needs to name masks from ``vocabulary`` (e.g. its text bank),
        built outside the model lock; handed back to :meth:`label` as ``prepared``. Once
        ``wanted()`` is False (the client hung up) it may end early with
        :class:`~ovsam.clip.text_bank.BuildStopped`."""

    def label(
        self, state: ImageState, decoded: DecodedMask, prepared: object, top_k: int
    ) -> list[tuple[str, float]]:
        """Top-k ``(name, probability)`` for a mask decoded on the embedded image, from the
        vocabulary ``prepared`` by :meth:`prepare`. Called under the engine's lock, with
        ``state`` loaded in its predictor."""

    def label_masks(
        self, state: ImageState, masks: np.ndarray, prepared: object, top_k: int
    ) -> list[list[tuple[str, float]]]:
        """:meth:`label` of each of ``masks`` (``KxHxW`` bool at the image's size, no logits
        or prompt: "segment everything"), under the same conditions."""


class MissingRecognizer:
    """The recognizer used when no recognition weights are present: it says so (``message``)."""

    available = False
    random_weights = False

    def __init__(self, message: str = NO_RECOGNITION) -> None:
        self.message = message

    def check(self, vocabulary: Vocabulary) -> None:
        return None

    def kept(self, vocabulary: Vocabulary) -> tuple[bool, object]:
        return True, None

    def prepare(self, vocabulary: Vocabulary, wanted: Callable[[], bool] = always) -> object:
        return None

    def label(
        self, state: ImageState, decoded: DecodedMask, prepared: object, top_k: int
    ) -> list[tuple[str, float]]:
        return []

    def label_masks(
        self, state: ImageState, masks: np.ndarray, prepared: object, top_k: int
    ) -> list[list[tuple[str, float]]]:
        return [[] for _ in masks]


@dataclass
class Prediction:
    """The answer to one prompt: best mask, its score and low-res logits, and labels."""

    mask: np.ndarray
    score: float
    low_res: np.ndarray
    labels: list[tuple[str, float]]
    elapsed_ms: float


class SegmentationEngine:
    """Thread-safe access to one :class:`SamPredictor` (requests are served one at a time)."""

    def __init__(
        self,
        predictor: SamPredictor,
        model_name: str,
        recognizer: Recognizer | None = None,
        weights: str = "default",
    ) -> None:
        self.predictor = predictor
        self.model_name = model_name
        self.weights = weights  # what segments: "default", "random" or a checkpoint
        self.recognizer: Recognizer = recognizer or MissingRecognizer()
        self._lock = FairLock()  # requests take the model in the order they asked

    @property
    def score_name(self) -> str:
        """What a mask's score is (the predictor's ``score_name``)."""
        return self.predictor.score_name

    def embed(self, image: np.ndarray) -> tuple[ImageState, float]:
        """Embed an ``HxWx3`` uint8 image; returns its state and the time taken (ms)."""
        start = time.perf_counter()
        with self._lock.held():
            self.predictor.set_image(image)
            state = self.predictor.export_state()
            self.predictor.reset_image()
        if getattr(self.recognizer, "needs_pixels", False):
            from ovsam.image_state import PIXELS
            from ovsam.ov.baselines import pixels_tensor

            state.extras[PIXELS] = pixels_tensor(image)
        return state, (time.perf_counter() - start) * 1000

    @contextmanager
    def _image_loaded(self, state: ImageState) -> Iterator[None]:
        """The model, to this thread alone, with ``state``'s image set (and unset after)."""
        with self._lock.held():
            self.predictor.load_state(state)
            try:
                yield
            finally:
                self.predictor.reset_image()

    def decode(
        self,
        state: ImageState,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
    ) -> Prediction:
        """Decode one prompt on ``state`` (SAM's multimask rule): the best mask, not yet named
        (:meth:`name` does that, once the recognizer has prepared the vocabulary)."""
        start = time.perf_counter()
        multimask = choose_multimask(0 if points is None else len(points), box is not None)
        with self._image_loaded(state):
            # SAM's own predict: a labelling subclass's would want a vocabulary; labels come
            # from the recognizer
            masks, scores, low_res = SamPredictor.predict(
                self.predictor,
                point_coords=points,
                point_labels=labels,
                box=box,
                mask_input=mask_input,
                multimask_output=multimask and mask_input is None,
            )
        best = int(np.argmax(scores))
        return Prediction(
            masks[best], float(scores[best]), low_res[best][None], [],
            (time.perf_counter() - start) * 1000,
        )  # fmt: skip

    def name(
        self,
        state: ImageState,
        prediction: Prediction,
        box: np.ndarray | None,
        prepared: object,
        top_k: int,
    ) -> list[tuple[str, float]]:
        """The top-k names of ``prediction``'s mask (decoded on ``state`` with ``box``) from
        the vocabulary ``prepared`` by the recognizer (:meth:`Recognizer.prepare`: a text
        bank, minutes on a CPU when new, so prepared beforehand outside the model lock)."""
        decoded = DecodedMask(prediction.mask, prediction.low_res[0], box)
        with self._image_loaded(state):  # a recognizer may read the image's features
            return self.recognizer.label(state, decoded, prepared, top_k)

    def everything(
        self, state: ImageState, settings: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], float]:
        """Segment everything on ``state``'s image with
        :class:`~ovsam.automatic.AutomaticMaskGenerator` ``settings`` (checked by the
        caller); its records, not named, and the time taken (ms). Between batches of grid
        points it lets the requests that queued for the model meanwhile go first (seconds on
        a CPU: clicks waited for the whole grid)."""
        from ovsam.automatic import AutomaticMaskGenerator

        def let_others_go() -> None:
            current = self.predictor.export_state()
            if self._lock.step_aside():  # others had the model: back on this image
                self.predictor.load_state(current)

        start = time.perf_counter()
        with self._image_loaded(state):
            generator = AutomaticMaskGenerator(self.predictor, **settings)
            records = generator.generate(pause=let_others_go)
        return records, (time.perf_counter() - start) * 1000

    def name_masks(
        self, state: ImageState, masks: np.ndarray, prepared: object, top_k: int
    ) -> list[list[tuple[str, float]]]:
        """The top-k names of each of ``masks`` (``KxHxW`` bool) on ``state``'s image, from
        the vocabulary ``prepared`` by the recognizer (see :meth:`name`)."""
        with self._image_loaded(state):
            return self.recognizer.label_masks(state, masks, prepared, top_k)
