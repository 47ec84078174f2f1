"""Which images an evaluation covers, and what became of each of them.

The selection is the first ``--limit`` images of the annotation file (all without one), in the
file's order. Each selected image is either prompted (it has usable instances in the dataset) or
skipped for a reason counted in ``metrics.json``: no annotations at all, only crowd annotations
of the evaluated classes (the protocol ignores crowds), only annotations of classes outside the
split, only annotations that mmdet's rule leaves out (a box under a pixel wide or high, or
outside the image: :class:`~ovsam.data.instances.InstanceDataset`), or (known only once read)
only annotations with an empty mask, or an image file that
cannot be read or an annotation that cannot be decoded (``unreadable``: each such image with its
reason in ``unreadable_images``). Annotations of the evaluated classes whose mask is empty are
counted as ``instances_skipped``, those of unreadable images as ``instances_unreadable``; a
prompted image without records (a rank that never wrote them) as ``images_missing``, so nothing
vanishes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ovsam.data.instances import InstanceDataset
from ovsam.errors import InputError
from ovsam.evaluation.metrics import InstanceRecord

#: why a selected image is not evaluated → how the summary line says it
SKIP_REASONS: dict[str, str] = {
    "no_annotations": "without annotations",
    "only_crowd": "with only crowd annotations",
    "only_other_classes": "with only classes outside the split",
    "only_too_small": "with only boxes under a pixel or outside the image",
    "empty_masks": "with only empty masks",
    "unreadable": "unreadable",
}


@dataclass(frozen=True)
class Selection:
    """The images of one evaluation (see the module docstring)."""

    #: ids of the selected images, in the file's order
    image_ids: tuple[int, ...]
    #: dataset indices of the selected images that are prompted
    indices: tuple[int, ...]
    #: image id → reason (a key of :data:`SKIP_REASONS`), for the selected images not prompted
    skipped: Mapping[int, str]
    #: image id → annotations prompted (non-crowd, evaluated class), for the prompted images
    usable: Mapping[int, int]
    #: annotations whose ``image_id`` is no image of the file (ignored)
    orphan_annotations: int


def select_images(
    data: Mapping[str, Any], dataset: InstanceDataset, limit: int | None = None
) -> Selection:
    """The first ``limit`` images of the annotation file ``data`` (all without one), of which
    ``dataset`` (made from ``data``) prompts those it holds; the others get their reason."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    counts = dataset.annotation_kinds
    prompted = {img["id"]: index for index, img in enumerate(dataset.images)}
    chosen = data["images"][:limit]
    known = {img["id"] for img in data["images"]}
    return Selection(
        image_ids=tuple(int(img["id"]) for img in chosen),
        indices=tuple(prompted[img["id"]] for img in chosen if img["id"] in prompted),
        skipped={
            int(img["id"]): _reason(counts.get(img["id"], Counter()))
            for img in chosen
            if img["id"] not in prompted
        },
        usable={
            int(img["id"]): counts[img["id"]]["usable"] for img in chosen if img["id"] in prompted
        },
        orphan_annotations=sum(c.total() for key, c in counts.items() if key not in known),
    )


def _reason(counts: Counter[str]) -> str:
    """Why an image with these annotation ``counts`` (none usable) is not prompted."""
    if counts["crowd"]:
        return "only_crowd"
    if counts["too_small"]:
        return "only_too_small"
    return "only_other_classes" if counts["other"] else "no_annotations"


def account(
    selection: Selection,
    done: Mapping[int, Sequence[InstanceRecord]],
    unreadable: Mapping[int, str],
) -> dict[str, Any]:
    """Image and instance counts of ``selection`` given the records ``done`` per image and the
    reason per ``unreadable`` image: ``images`` = ``images_evaluated`` + ``images_skipped`` +
    ``images_missing``, the skips split by reason (``images_skipped_<reason>``),
    ``instances_skipped`` (empty masks), ``instances_unreadable`` (the annotations of the
    unreadable images, not evaluated) and ``unreadable_images`` (``[{"image_id", "reason"}]``)."""
    reasons = Counter(selection.skipped.values())
    bad = {
        i: unreadable[i]
        for i in selection.image_ids
        if i in selection.usable and i in unreadable and i not in done
    }
    present = [i for i in selection.image_ids if i in selection.usable and i in done]
    reasons["empty_masks"] += sum(not done[i] for i in present)
    reasons["unreadable"] += len(bad)
    return {
        "images": len(selection.image_ids),
        "images_evaluated": len(present) - reasons["empty_masks"],
        "images_skipped": sum(reasons.values()),
        **{f"images_skipped_{reason}": reasons[reason] for reason in SKIP_REASONS},
        "images_missing": len(selection.usable) - len(present) - len(bad),
        "instances_skipped": sum(selection.usable[i] - len(done[i]) for i in present),
        "instances_unreadable": sum(selection.usable[i] for i in bad),
        "unreadable_images": [{"image_id": i, "reason": reason} for i, reason in bad.items()],
    }


def summary_line(metrics: Mapping[str, Any]) -> str:
    """``instances: N in E of M images; skipped images: ...`` for the CLI (the counts of
    :func:`account`; zero counts left out)."""
    parts = [
        f"instances: {metrics['instances']} in {metrics['images_evaluated']} of "
        f"{metrics['images']} images"
    ]
    if metrics["images_skipped"]:
        counts = [
            f"{metrics[f'images_skipped_{reason}']} {label}"
            for reason, label in SKIP_REASONS.items()
            if metrics[f"images_skipped_{reason}"]
        ]
        parts.append(f"skipped images: {metrics['images_skipped']} ({', '.join(counts)})")
    if metrics["instances_skipped"]:
        parts.append(f"skipped annotations with an empty mask: {metrics['instances_skipped']}")
    if metrics["images_skipped_unreadable"]:
        parts.append(
            f"annotations of unreadable images (not evaluated): {metrics['instances_unreadable']}"
            " (reasons in metrics.json)"
        )
    if metrics["images_missing"]:
        parts.append(f"images without records (not evaluated): {metrics['images_missing']}")
    return "; ".join(parts)
