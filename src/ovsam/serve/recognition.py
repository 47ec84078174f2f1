"""Real recognizers for the server: CLIP Image-Crop labels, or Open-Vocabulary SAM's own.

Text banks are built once per vocabulary, from every synonym of every class as on the command
line, and the last few are kept in memory (:class:`TextBanks`); those of built-in
vocabularies are also cached on disk by :func:`~ovsam.clip.text_bank.build_text_bank` (not
those that clients post: any client could fill the disk). :class:`ClipRecognizer` keeps the
uploaded pixels in the image's state (``extras["pixels"]``) so a mask can be cropped later
without re-upload; :class:`OVSamRecognizer` names a mask from the OV-SAM features of the
image's state, as :meth:`~ovsam.ov.predictor.OVSamPredictor.predict` does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np

from ovsam.clip.model import CLIP
from ovsam.clip.region_classifier import classify_regions
from ovsam.clip.text_bank import TextBank, build_text_bank, check_vocabulary_context
from ovsam.image_state import PIXELS, ImageState
from ovsam.ov.predictor import OVSamPredictor
from ovsam.serve.engine import DecodedMask, always
from ovsam.vocab import BUILTIN_VOCABULARIES, Vocabulary, prompt_templates

BankKey = tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]
"""A vocabulary's display names and synonym lists: the key of its text bank (the synonyms
alone name a bank's embeddings, not the labels it answers with)."""


def _key(vocabulary: Vocabulary) -> BankKey:
    return vocabulary.classes, vocabulary.synonyms


class _Build:
    """One vocabulary's build: its lock, and whether each request holding or waiting for it
    still wants the bank (``wants``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wants: list[Callable[[], bool]] = []


class TextBanks:
    """The text banks of vocabularies embedded by ``clip`` with ``templates``: the last
    ``kept`` are kept (least recently used dropped first), each built at most once at a time."""

    def __init__(self, clip: CLIP, templates: Sequence[str], kept: int = 4) -> None:
        self.clip, self.templates, self.kept = clip, tuple(templates), kept
        self._banks: OrderedDict[BankKey, TextBank] = OrderedDict()
        self._building: dict[BankKey, _Build] = {}
        self._lock = threading.Lock()

    def check(self, vocabulary: Vocabulary) -> None:
        """Refuse (:class:`~ovsam.errors.InputError`) a name whose prompts do not fit CLIP's
        text context, before any bank is built (the check :func:`build_text_bank` makes)."""
        check_vocabulary_context(vocabulary, self.templates, self.clip.config.text.context_length)

    def built(self, vocabulary: Vocabulary) -> TextBank | None:
        """The bank of ``vocabulary`` if it is built and kept (a use, for the LRU), else None."""
        with self._lock:
            return self._built(_key(vocabulary))

    def _built(self, key: BankKey) -> TextBank | None:
        """:meth:`built` by key; the caller holds ``_lock``."""
        bank = self._banks.get(key)
        if bank is not None:
            self._banks.move_to_end(key)
        return bank

    def get(self, vocabulary: Vocabulary, wanted: Callable[[], bool] = always) -> TextBank:
        """The bank of ``vocabulary`` (every synonym of every class). Requests for a
        vocabulary being built wait for that build; after a failed one they try again one at
        a time, and the build's lock is shared until its last request is done.

        ``wanted()`` says whether the request still wants the bank (False once its client
        hung up): a posted vocabulary's build that no request wants any more stops at its
        next batch (:class:`~ovsam.clip.text_bank.BuildStopped` for the requests waiting for
        it, none of which builds again); a built-in's runs to the end, for its disk cache."""
        key = _key(vocabulary)
        with self._lock:
            bank = self._built(key)
            if bank is not None:
                return bank
            build = self._building.setdefault(key, _Build())
            build.wants.append(wanted)

        def stop() -> bool:
            with self._lock:
                wants = list(build.wants)
            return not any(want() for want in wants)

        try:
            with build.lock:
                with self._lock:
                    bank = self._built(key)  # by the request this one waited for
                if bank is not None:
                    return bank
                # a built-in's bank is cached on disk (posted ones are not) and is built to the
                # end: stopped builds keep nothing, and ImageNet-21k's takes hours on a CPU
                on_disk = vocabulary.name in BUILTIN_VOCABULARIES
                bank = build_text_bank(
                    self.clip, vocabulary, self.templates, cache=on_disk, progress=False,
                    stop=None if on_disk else stop,
                )  # fmt: skip
                with self._lock:
                    self._banks[key] = bank
                    while len(self._banks) > self.kept:
                        self._banks.popitem(last=False)
                return bank
        finally:
            with self._lock:
                build.wants.remove(wanted)
                if not build.wants:
                    del self._building[key]


class BankRecognizer:
    """What both recognizers share: their vocabularies' text banks (``banks``)."""

    available = True
    banks: TextBanks

    def check(self, vocabulary: Vocabulary) -> None:
        self.banks.check(vocabulary)

    def kept(self, vocabulary: Vocabulary) -> tuple[bool, object]:
        bank = self.banks.built(vocabulary)
        return bank is not None, bank

    def prepare(self, vocabulary: Vocabulary, wanted: Callable[[], bool] = always) -> TextBank:
        """``vocabulary``'s text bank (held by the request, whatever the LRU drops meanwhile);
        see :meth:`TextBanks.get` for ``wanted``."""
        return self.banks.get(vocabulary, wanted)


class ClipRecognizer(BankRecognizer):
    """Names masks with CLIP (the paper's Image-Crop baseline); ``note`` describes the weights,
    ``random_weights`` says they are random (labels meaningless, for testing)."""

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
        self.banks = TextBanks(self.clip, prompt_templates(templates), banks_kept)

    def label(
        self, state: ImageState, decoded: DecodedMask, prepared: object, top_k: int
    ) -> list[tuple[str, float]]:
        pixels = state.extras[PIXELS].numpy()
        labels = classify_regions(
            self.clip, pixels, cast(TextBank, prepared), masks=decoded.mask[None], top_k=top_k
        )
        return labels.top_k()[0]

    def label_masks(
        self, state: ImageState, masks: np.ndarray, prepared: object, top_k: int
    ) -> list[list[tuple[str, float]]]:
        pixels = state.extras[PIXELS].numpy()
        return classify_regions(
            self.clip, pixels, cast(TextBank, prepared), masks=masks, top_k=top_k
        ).top_k()


class OVSamRecognizer(BankRecognizer):
    """Names masks with Open-Vocabulary SAM: the CLIP2SAM head fused with frozen CLIP, on the
    features of ``predictor`` (the engine's own, whose model also segments), class names
    embedded by its ``text_model``. ``label`` runs under the engine's lock with the image's
    state loaded in ``predictor``."""

    needs_pixels = False

    def __init__(
        self,
        predictor: OVSamPredictor,
        note: str,
        banks_kept: int = 4,
        random_weights: bool = False,
    ) -> None:
        if predictor.text_model is None:
            raise ValueError("OVSamRecognizer needs a predictor with a text_model")
        self.predictor = predictor
        self.message = f"recognition: Open-Vocabulary SAM (CLIP2SAM head + frozen CLIP), {note}"
        self.random_weights = random_weights
        self.banks = TextBanks(predictor.text_model, predictor.templates, banks_kept)

    def label(
        self, state: ImageState, decoded: DecodedMask, prepared: object, top_k: int
    ) -> list[tuple[str, float]]:
        predictor = self._naming(prepared, top_k)
        (labels,) = predictor.recognize_logits(decoded.logits[None], decoded.box)
        return labels.top

    def label_masks(
        self, state: ImageState, masks: np.ndarray, prepared: object, top_k: int
    ) -> list[list[tuple[str, float]]]:
        return [labels.top for labels in self._naming(prepared, top_k).recognize_masks(masks)]

    def _naming(self, prepared: object, top_k: int) -> OVSamPredictor:
        """The predictor, set to name ``top_k`` classes of the bank ``prepared``."""
        bank = cast(TextBank, prepared)
        if self.predictor.bank is not bank:
            self.predictor.set_text_bank(bank)
        self.predictor.top_k = top_k
        return self.predictor
