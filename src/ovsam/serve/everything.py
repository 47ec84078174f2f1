"""Answers to "segment everything" (``POST /v1/images/{id}/everything``).

As a prompt's (:mod:`ovsam.serve.prompts`): the masks are found on a model thread (seconds on
a CPU; between batches of grid points the requests that queued for the model go first), a
vocabulary's text bank not built yet is built on a bank thread, and the masks are then named
on a model thread.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ovsam.serve.engine import SegmentationEngine
from ovsam.serve.model_threads import Gone, ModelThreads
from ovsam.serve.schemas import (
    EverythingMask,
    EverythingRequest,
    EverythingResponse,
    Label,
    Recognition,
)
from ovsam.serve.store import StoredImage
from ovsam.serve.vocabularies import Vocabularies
from ovsam.vocab import Vocabulary

SETTINGS = (
    "points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_area",
    "min_mask_region_area",
)  # fmt: skip
"""The request's fields that are :class:`~ovsam.automatic.AutomaticMaskGenerator` settings."""


class EverythingAnswers:
    """Answers "segment everything" on ``engine``'s model, on ``model_threads``;
    ``prepared(vocabulary)`` gives the recognizer's text bank (as for a prompt,
    :meth:`~ovsam.serve.prompts.PromptAnswers.prepared`), ``stored(image_id)`` an upload or
    the 404, ``recognition()`` describes the recognizer."""

    def __init__(
        self,
        engine: SegmentationEngine,
        vocabularies: Vocabularies,
        model_threads: ModelThreads,
        prepared: Callable[[Vocabulary, Gone | None], Awaitable[object]],
        stored: Callable[[str], StoredImage],
        recognition: Callable[[], Recognition],
    ) -> None:
        self.engine, self.vocabularies = engine, vocabularies
        self.model_threads, self.prepared = model_threads, prepared
        self.stored, self.recognition = stored, recognition

    async def answer(
        self, image_id: str, body: EverythingRequest, gone: Gone | None = None
    ) -> EverythingResponse:
        """The masks of upload ``image_id``, named from ``body.vocabulary`` when given;
        dropped when ``gone()`` says its client hung up before its turn."""
        run = self.model_threads.run
        item, records, elapsed = await run(self._find, image_id, body, gone=gone)
        named: list[list[tuple[str, float]]] = [[] for _ in records]
        if body.vocabulary and records:
            start = time.perf_counter()
            prepared = await self.prepared(self.vocabularies.get(body.vocabulary), gone)
            masks = np.stack([r["segmentation"] for r in records])
            named = await self.model_threads.run(
                self.engine.name_masks, item.state, masks, prepared, body.top_k
            )
            elapsed += (time.perf_counter() - start) * 1000
        score_name = self.engine.score_name
        return EverythingResponse(
            masks=[_mask(r, labels, score_name) for r, labels in zip(records, named, strict=True)],
            score_name=score_name, width=item.width, height=item.height,
            recognition=self.recognition(), elapsed_ms=round(elapsed, 1),
        )  # fmt: skip

    def _find(
        self, image_id: str, body: EverythingRequest
    ) -> tuple[StoredImage, list[dict[str, Any]], float]:
        """The upload, its mask records and the time they took (ms)."""
        item = self.stored(image_id)
        if body.vocabulary:
            self.vocabularies.get(body.vocabulary)  # an unknown one before the long run
        settings = {name: getattr(body, name) for name in SETTINGS}
        records, elapsed = self.engine.everything(item.state, settings)
        return item, records, elapsed


def _mask(
    record: dict[str, Any], labels: list[tuple[str, float]], score_name: str
) -> EverythingMask:
    """The response's entry for one generator ``record`` (its score under ``score_name``),
    named ``labels``."""
    return EverythingMask(
        rle=record["rle"], area=record["area"], bbox=record["bbox"], score=record[score_name],
        stability_score=record["stability_score"], point=record["point_coords"][0],
        labels=[Label(name=name, score=score) for name, score in labels],
    )  # fmt: skip
