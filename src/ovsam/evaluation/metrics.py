"""The paper's metrics (official ``ins_cls_iou_metric``), per ground-truth instance.

For every instance prompted by its ground truth: the IoU of the predicted mask with the
ground-truth mask, and a score of 100 if the predicted label names the ground-truth class
(else 0; names compared by :func:`~ovsam.vocab.name_key`, as categories are told apart:
a bank shows ``"person "`` as ``"person"``). Reported (in %): ``IoU`` over all instances,
``IoU_b`` / ``IoU_n`` over instances of base / novel classes, ``Acc`` the mean score (also
per split).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ovsam.vocab import name_key

SPLITS = ("base", "novel")


@dataclass(frozen=True)
class InstanceRecord:
    """One evaluated instance."""

    image_id: int
    category: str
    split: str
    iou: float
    predicted: str

    @property
    def correct(self) -> bool:
        return name_key(self.predicted) == name_key(self.category)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def mask_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-instance IoU of ``NxHxW`` boolean masks (``intersection / (union + 1e-8)``)."""
    pred, gt = pred.reshape(len(pred), -1), gt.reshape(len(gt), -1)
    inter = np.logical_and(pred, gt).sum(1)
    union = np.logical_or(pred, gt).sum(1)
    return inter / (union + 1e-8)


def records_for_image(
    image_id: int,
    pred_masks: np.ndarray,
    gt_masks: np.ndarray,
    predicted: Sequence[str],
    categories: Sequence[str],
    splits: Sequence[str],
) -> list[InstanceRecord]:
    """Records of one image's instances (all arguments aligned by instance)."""
    ious = mask_ious(np.asarray(pred_masks, bool), np.asarray(gt_masks, bool))
    return [
        InstanceRecord(image_id, c, s, float(i), p)
        for c, s, i, p in zip(categories, splits, ious, predicted, strict=True)
    ]


def summarize(records: Iterable[InstanceRecord]) -> dict[str, float | int | None]:
    """``{"IoU", "IoU_b", "IoU_n", "Acc", "Acc_b", "Acc_n", "instances", ...}`` in percent;
    a mean over no instances (e.g. no novel class in the split) is None."""
    records = list(records)
    out: dict[str, float | int | None] = {"instances": len(records)}

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) * 100 if values else None

    out["IoU"] = mean([r.iou for r in records])
    out["Acc"] = mean([float(r.correct) for r in records])
    for split, suffix in (("base", "b"), ("novel", "n")):
        part = [r for r in records if r.split == split]
        out[f"IoU_{suffix}"] = mean([r.iou for r in part])
        out[f"Acc_{suffix}"] = mean([float(r.correct) for r in part])
        out[f"instances_{suffix}"] = len(part)
    return out


def percent(value: float | int | None) -> str:
    """``12.3``, or ``n/a`` for a metric without data (None)."""
    return "n/a" if value is None else f"{value:.1f}"


def markdown_table(rows: Mapping[str, Mapping[str, float | int | None]]) -> str:
    """The paper's table shape: method | IoU_b | IoU_n | Acc (plus IoU and instance count)."""
    lines = ["| method | IoU_b | IoU_n | Acc | IoU | instances |", "|---|---|---|---|---|---|"]
    for method, m in rows.items():
        cells = [percent(m[key]) for key in ("IoU_b", "IoU_n", "Acc", "IoU")]
        lines.append(f"| {method} | {' | '.join(cells)} | {m['instances']} |")
    return "\n".join(lines) + "\n"
