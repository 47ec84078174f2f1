"""A real recognizer for the server: CLIP Image-Crop labels for each predicted mask.

Text banks are built once per vocabulary, from every synonym of every class as on the command
line (and cached on disk by :func:`~ovsam.clip.text_bank.build_text_bank`); the uploaded
pixels are kept in the image's state (``extras["pixels"]``) so a mask can be cropped later
without re-upload.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ovsam.clip.model import CLIP
from ovsam.clip.region_classifier import classify_regions
from ovsam.clip.text_bank import TextBank, build_text_bank, check_context
from ovsam.ov.baselines import PIXELS
from ovsam.predictor import ImageState
from ovsam.vocab import Vocabulary, prompt_templates

Synonyms = tuple[tuple[str, ...], ...]
"""A vocabulary's synonym lists: the key of its text bank."""


class ClipRecognizer:
    """Names masks with CLIP (the paper's Image-Crop baseline); ``note`` describes the weights,
    ``random_weights`` says they are random (labels meaningless, for testing)."""

    available = True
    needs_pixels = True

    def __init__(
        self,
        clip: CLIP,
        note: str,
        templates: str = "vild",
        banks_kept: int = 4,
        random_weights: bool = False,
    ) -> None:
        self.clip = clip.eval()
        self.message = f"recognition: {note}, Image-Crop (CLIP on the masked crop)"
        self.random_weights = random_weights
        self.templates = prompt_templates(templates)
        self._banks: OrderedDict[Synonyms, TextBank] = OrderedDict()
        self._banks_kept = banks_kept
        self._building: dict[Synonyms, threading.Lock] = {}
        self._lock = threading.Lock()

    def check(self, vocabulary: Vocabulary) -> None:
        """Refuse (:class:`~ovsam.errors.InputError`) a name whose prompts do not fit CLIP's
        text context, before any bank is built (the check :func:`build_text_bank` makes)."""
        names = [name for synonyms in vocabulary.synonyms for name in synonyms]
        check_context(names, self.templates, self.clip.config.text.context_length)

    def bank(self, vocabulary: Vocabulary) -> TextBank:
        """The (LRU-kept) text bank of ``vocabulary`` (every synonym of every class), built at
        most once at a time: a second request for the same vocabulary waits for the first."""
        key = vocabulary.synonyms
        with self._lock:
            if key in self._banks:
                self._banks.move_to_end(key)
                return self._banks[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._banks:
                    return self._banks[key]
            try:
                bank = build_text_bank(self.clip, vocabulary, self.templates, progress=False)
                with self._lock:
                    self._banks[key] = bank
                    while len(self._banks) > self._banks_kept:
                        self._banks.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return bank

    def prepare(self, vocabulary: Vocabulary) -> None:
        self.bank(vocabulary)

    def label(
        self, state: ImageState, mask: np.ndarray, vocabulary: Vocabulary, top_k: int
    ) -> list[tuple[str, float]]:
        if not mask.any():
            return []
        pixels = state.extras[PIXELS].numpy()
        labels = classify_regions(
            self.clip, pixels, self.bank(vocabulary), masks=mask[None], top_k=top_k
        )
        return labels.top_k()[0]
