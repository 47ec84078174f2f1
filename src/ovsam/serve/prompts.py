"""Answers to prompts (``POST /v1/images/{id}/predict``) in up to three steps.

The prompt is decoded (and so checked) on a model thread first. A mask to name from a
vocabulary whose text bank is not built yet then waits for that build on threads of its own
(:data:`~ovsam.serve.model_threads.BANK_THREADS`: minutes on a CPU for a large vocabulary),
not on a model thread: prompts that held model threads while a bank was built left none for
other users' uploads and plain prompts. The mask is then named on a model thread. An empty
mask is never named, and a bad prompt is refused before any bank is built.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import numpy as np

from ovsam.clip.text_bank import BuildStopped
from ovsam.masks import encode_rle, mask_to_bbox_xywh
from ovsam.outputs import png_bytes
from ovsam.serve.engine import Prediction, SegmentationEngine
from ovsam.serve.http_errors import ApiError
from ovsam.serve.model_threads import BANK_THREADS, Gone, ModelThreads
from ovsam.serve.schemas import Label, PredictRequest, PredictResponse, Recognition
from ovsam.serve.settings import ServeSettings
from ovsam.serve.store import ImageStore, StoredImage
from ovsam.serve.vocabularies import Vocabularies
from ovsam.vocab import Vocabulary

ToName = tuple[StoredImage, Prediction, Vocabulary]
"""A decoded prompt whose mask is still to be named: its image, mask and vocabulary."""


def _box(body: PredictRequest) -> np.ndarray | None:
    """The prompt's XYXY pixel box as an array (None without one)."""
    return None if body.box is None else np.asarray(body.box, dtype=np.float64)


class PromptAnswers:
    """Answers prompts on ``engine``'s model, on ``model_threads`` (and bank threads of its
    own), within ``settings``' limits. ``stored(image_id)`` gives an upload or raises the
    404; ``recognition()`` describes the recognizer; ``too_many_points(n)`` is the error for
    ``n`` points over the limit."""

    def __init__(
        self,
        engine: SegmentationEngine,
        store: ImageStore,
        vocabularies: Vocabularies,
        settings: ServeSettings,
        model_threads: ModelThreads,
        stored: Callable[[str], StoredImage],
        recognition: Callable[[], Recognition],
        too_many_points: Callable[[int], ApiError],
    ) -> None:
        self.engine, self.store, self.vocabularies = engine, store, vocabularies
        self.settings = settings
        self.model_threads, self.stored, self.recognition = model_threads, stored, recognition
        self.too_many_points = too_many_points
        self.bank_threads = ModelThreads(BANK_THREADS, what="text-bank builds")

    async def predict(
        self, image_id: str, body: PredictRequest, gone: Gone | None = None
    ) -> PredictResponse:
        """The answer to ``body`` on upload ``image_id`` (see the module docstring); dropped
        when ``gone()`` says its client hung up before its turn."""
        answer = await self.model_threads.run(self._decode, image_id, body, gone=gone)
        if isinstance(answer, PredictResponse):
            return answer
        item, result, vocabulary = answer
        start = time.perf_counter()
        prepared = await self.prepared(vocabulary, gone)

        def name_and_respond() -> PredictResponse:
            result.labels = self.engine.name(item.state, result, _box(body), prepared, body.top_k)
            result.elapsed_ms += (time.perf_counter() - start) * 1000
            return self._respond(item, result, body)

        return await self.model_threads.run(name_and_respond)

    async def prepared(self, vocabulary: Vocabulary, gone: Gone | None = None) -> object:
        """What the recognizer names masks from with ``vocabulary`` (its text bank), held by
        the request whatever the LRU drops meanwhile; built on a bank thread when new. Once
        ``gone()`` says the client hung up, the build stops at its next batch unless another
        request still waits for it, and this request ends with 499 ``client_gone``."""
        recognizer = self.engine.recognizer
        found, prepared = recognizer.kept(vocabulary)
        if found:
            return prepared
        try:
            return await self.bank_threads.run_watched(recognizer.prepare, vocabulary, gone=gone)
        except BuildStopped as exc:
            raise ApiError(
                499, "client_gone", "the client hung up during a text-bank build"
            ) from exc

    def _decode(self, image_id: str, body: PredictRequest) -> PredictResponse | ToName:
        """The answer to a prompt, or its decoded mask still to name."""
        item = self.stored(image_id)
        if len(body.points) > self.settings.max_points:
            raise self.too_many_points(len(body.points))
        if len(body.labels) != len(body.points):
            raise ApiError(400, "invalid_input",
                           f"{len(body.points)} points but {len(body.labels)} labels")  # fmt: skip
        mask_input = None
        if body.mask_id is not None:
            mask_input = item.masks.get(body.mask_id)
            if mask_input is None:
                raise ApiError(
                    404, "unknown_mask",
                    f"unknown mask id {body.mask_id!r} for this image (never returned for it, or "
                    f"dropped: only its last {self.settings.masks_per_image} masks are kept)",
                )  # fmt: skip
        vocabulary = self.vocabularies.get(body.vocabulary) if body.vocabulary else None
        result = self.engine.decode(
            item.state,
            np.asarray(body.points, dtype=np.float64) if body.points else None,
            np.asarray(body.labels) if body.points else None,
            _box(body),
            mask_input,
        )
        if vocabulary and result.mask.any():  # an empty mask has nothing to name
            return item, result, vocabulary
        return self._respond(item, result, body)

    def _respond(
        self, item: StoredImage, result: Prediction, body: PredictRequest
    ) -> PredictResponse:
        mask_id = self.store.remember_mask(item, result.low_res)
        encoded = base64.b64encode(png_bytes(np.where(result.mask, 255, 0).astype(np.uint8)))
        return PredictResponse(
            mask_id=mask_id, score=result.score, score_name=self.engine.score_name,
            area=int(result.mask.sum()),
            bbox=mask_to_bbox_xywh(result.mask), width=item.width, height=item.height,
            mask_png=encoded.decode("ascii") if body.format == "png" else None,
            mask_rle=encode_rle(result.mask) if body.format == "rle" else None,
            labels=[Label(name=n, score=s) for n, s in result.labels],
            recognition=self.recognition(), elapsed_ms=round(result.elapsed_ms, 1),
        )  # fmt: skip
