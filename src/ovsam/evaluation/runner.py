"""Run the paper's protocol over a dataset, resumably and across ``torchrun`` ranks.

Each rank takes images ``rank, rank + world, ...``, prompts every ground-truth instance with its
box (or its centre point), and appends one JSON line per finished image to
``out/records.rank{R}.jsonl`` (so an interrupted run resumes where it stopped). Rank 0 then
merges all ranks' records and writes ``metrics.json`` and ``table.md`` atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tqdm import tqdm

from ovsam.data.instances import InstanceDataset
from ovsam.data.prompts import box_prompts, center_points
from ovsam.evaluation.metrics import InstanceRecord, markdown_table, records_for_image, summarize
from ovsam.fileio import atomic_write_bytes, atomic_write_json
from ovsam.vocab import builtin_vocabulary

PromptKind = Literal["box", "point"]


class InstancePredictor(Protocol):
    """Masks (``NxHxW`` bool) and one predicted class name per prompt."""

    def predict_instances(
        self, image: np.ndarray, boxes: np.ndarray | None, points: np.ndarray | None
    ) -> tuple[np.ndarray, list[str]]: ...


class LabeledPredictorAdapter:
    """Adapts :class:`~ovsam.ov.predictor.OVSamPredictor` / the crop baselines: the label is
    the best class (never "unknown": the protocol scores the argmax)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def predict_instances(
        self, image: np.ndarray, boxes: np.ndarray | None, points: np.ndarray | None
    ) -> tuple[np.ndarray, list[str]]:
        self.predictor.set_image(image)
        if boxes is not None:
            masks, _, _, labels = self.predictor.predict_boxes(boxes, multimask_output=False)
            return masks[:, 0], [lab.top[0][0] for lab in labels]
        masks_out, names = [], []
        for point in np.asarray(points):
            masks, scores, _, labels = self.predictor.predict(
                point_coords=point[None], point_labels=np.ones(1), multimask_output=False
            )
            best = int(np.argmax(scores))
            masks_out.append(masks[best])
            names.append(labels[min(best, len(labels) - 1)].top[0][0])
        return np.asarray(masks_out), names


def coco_ov_splits() -> dict[int, str]:
    """COCO category id → ``base`` / ``novel`` / ``none`` (the OV-COCO 48/17 split)."""
    coco = builtin_vocabulary("coco")
    return {int(info["id"]): str(info["split"]) for info in coco.info}


def lvis_splits(categories: list[Mapping[str, Any]]) -> dict[int, str]:
    """LVIS category id → ``novel`` for rare classes, ``base`` otherwise (read from the file)."""
    return {int(c["id"]): "novel" if c["frequency"] == "r" else "base" for c in categories}


def _done_images(path: Path) -> dict[int, list[InstanceRecord]]:
    done: dict[int, list[InstanceRecord]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by an interruption: that image is redone
                continue
            done[int(row["image_id"])] = [InstanceRecord(**r) for r in row["records"]]
    return done


def evaluate_rank(
    predictor: InstancePredictor,
    dataset: InstanceDataset,
    splits: Mapping[int, str],
    out_dir: str | Path,
    prompt: PromptKind = "box",
    rank: int = 0,
    world: int = 1,
    limit: int | None = None,
) -> list[InstanceRecord]:
    """Evaluate this rank's share of ``dataset``; returns its records (resuming from disk)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"records.rank{rank}.jsonl"
    done = _done_images(path)
    indices = list(range(len(dataset)))[:limit][rank::world]
    records = [r for rows in done.values() for r in rows]
    with path.open("a", encoding="utf-8") as log:
        for index in tqdm(indices, desc=f"eval rank {rank}", disable=rank != 0):
            if int(dataset.images[index]["id"]) in done:
                continue
            item = dataset[index]
            boxes = box_prompts(item.boxes) if prompt == "box" else None
            points = center_points(item.masks) if prompt == "point" else None
            masks, names = predictor.predict_instances(item.image, boxes, points)
            rows = records_for_image(
                item.image_id,
                masks,
                item.masks,
                names,
                item.names,
                [splits.get(c, "base") for c in item.category_ids],
            )
            log.write(
                json.dumps({"image_id": item.image_id, "records": [r.to_json() for r in rows]})
                + "\n"
            )
            log.flush()
            records.extend(rows)
    return records


def write_report(out_dir: str | Path, method: str, world: int = 1) -> dict[str, float | int]:
    """Merge every rank's records and write ``metrics.json`` and ``table.md`` (atomically)."""
    out = Path(out_dir)
    records = [
        r
        for rank in range(world)
        for rows in _done_images(out / f"records.rank{rank}.jsonl").values()
        for r in rows
    ]
    metrics = summarize(records)
    atomic_write_json(out / "metrics.json", {"method": method, **metrics})
    atomic_write_bytes(out / "table.md", markdown_table({method: metrics}).encode("utf-8"))
    return metrics
