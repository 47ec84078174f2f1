"""Run the paper's protocol over a dataset, resumably and across ``torchrun`` ranks.

Each rank takes images ``rank, rank + world, ...``, prompts every ground-truth instance with its
box (or its centre point), and appends one JSON line per finished image to
``out/records.rank{R}.jsonl`` (so an interrupted run resumes where it stopped; a line cut by the
interruption is dropped and its image redone). An image that cannot be read, or one of whose
annotations cannot be decoded, is skipped: its reason is printed (stderr) and logged in place of
its records, so a resumed run does not retry it and the report counts it (with its reason).
``out/settings.json`` holds the settings the records were made with; resuming with others is
refused. Rank 0 then merges the records of the selected images
(:mod:`ovsam.evaluation.accounting`: every image of the selection is evaluated or counted as
skipped, with its reason) and writes ``metrics.json`` and ``table.md`` atomically.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tqdm import tqdm

from ovsam.data.instances import InstanceDataset, Instances
from ovsam.data.prompts import box_prompts, frame_center_points
from ovsam.errors import InputError
from ovsam.evaluation.accounting import Selection, account
from ovsam.evaluation.metrics import InstanceRecord, markdown_table, records_for_image, summarize
from ovsam.fileio import atomic_write_bytes, atomic_write_json
from ovsam.run_settings import read_settings, settings_changes
from ovsam.vocab import builtin_vocabulary, name_key

PromptKind = Literal["box", "point"]
SETTINGS_FILE = "settings.json"


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


def coco_ov_splits(categories: Sequence[Mapping[str, Any]] | None = None) -> dict[int, str]:
    """COCO category id → ``base`` / ``novel`` / ``none`` (the OV-COCO 48/17 split).

    The split is defined on COCO's category ids, so the ``categories`` of the evaluated file, if
    given, must use them: a category whose id is COCO's id of another name, or whose (COCO) name
    has another id, is an :class:`InputError` (it would silently swap base and novel)."""
    coco = builtin_vocabulary("coco")
    splits = {int(info["id"]): str(info["split"]) for info in coco.info}
    name_of = {
        int(info["id"]): name_key(name) for info, name in zip(coco.info, coco.classes, strict=True)
    }
    id_of = {name: id_ for id_, name in name_of.items()}
    for category in categories or ():  # names compared as labels are: "Traffic_Light" is COCO's
        name, id_ = name_key(str(category["name"])), category["id"]
        clashes = []
        if name_of.get(id_, name) != name:
            clashes.append(f"COCO's id {id_} is {name_of[id_]!r}")
        if id_of.get(name, id_) != id_:
            clashes.append(f"COCO's {name!r} is id {id_of[name]}")
        if clashes:
            raise InputError(
                f"category {category['name']!r} has id {id_}, but {' and '.join(clashes)}: "
                "--split coco-ov needs COCO's category ids (or use --split all)"
            )
    return splits


def lvis_splits(categories: list[Mapping[str, Any]]) -> dict[int, str]:
    """LVIS category id → ``novel`` for rare classes, ``base`` otherwise (read from the file)."""
    for category in categories:
        if "frequency" not in category:
            raise InputError(
                f"the annotation file has no LVIS 'frequency' field (category id {category['id']}):"
                " --split lvis needs an LVIS v1 file"
            )
    return {int(c["id"]): "novel" if c["frequency"] == "r" else "base" for c in categories}


#: Which annotations are instances and where a centre point prompts, recorded with the settings:
#: records made under earlier rules (before this entry) are not resumed into.
PROTOCOL_RULES = (
    "instances: mmdet's CocoDataset filter; points: pixel indices (SAM's convention) of the "
    "argmax of kornia 0.7's distance transform, first of equals, of the mask resized (nearest) "
    "to the 1024 input frame"
)


def check_settings(out_dir: str | Path, settings: Mapping[str, Any], write: bool = True) -> bool:
    """Record the ``settings`` that determine the records in ``out_dir/settings.json``, or
    check them against those of an earlier run there: resuming with other settings (prompt,
    model, split, ...) would mix incompatible records, so it is an :class:`InputError`. While
    ``out_dir`` holds no records (an earlier run failed before its first image), the settings
    are simply replaced.

    Returns True when ``out_dir`` held records but no settings (written by an older ovsam):
    they are assumed to match and the settings are recorded (the caller warns). Under
    torchrun only the main process records (``write``); every process checks, and none may
    write records before all have (a barrier): a rank's first records read as an older run's.
    """
    out = Path(out_dir)
    has_records = any(path.stat().st_size for path in out.glob("records.rank*.jsonl"))
    path = out / SETTINGS_FILE
    if not path.is_file() or not has_records:  # no records yet: any settings may start them
        if write:
            atomic_write_json(path, dict(settings))
        return has_records
    changed = settings_changes(read_settings(path, "use a new --out"), settings)
    if changed:
        raise InputError(
            f"{out} holds records of an evaluation with other settings ({changed}): use a new --out"
        )
    return False


def check_image_files(image_root: str | Path, paths: Iterable[Path]) -> None:
    """:class:`InputError` (one line) when ``image_root`` is no folder or any of ``paths`` (the
    images an evaluation will read) is missing, naming the first missing ones."""
    root = Path(image_root)
    if not root.is_dir():
        if root.exists():
            raise InputError(f"{root} is not a folder (given as the image folder)")
        raise InputError(f"image folder {root} does not exist")
    missing = [str(path) for path in dict.fromkeys(paths) if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise InputError(f"{len(missing)} image file(s) of the evaluation are missing: {shown}")


@dataclass
class RecordLog:
    """What records files hold: the records per finished image, and the reason per image
    skipped because it (or one of its annotations) could not be read."""

    records: dict[int, list[InstanceRecord]] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)

    def __contains__(self, image_id: int) -> bool:
        return image_id in self.records or image_id in self.unreadable

    def update(self, other: RecordLog) -> None:
        """Add ``other``'s images (records of an image win over its being unreadable)."""
        self.records.update(other.records)
        self.unreadable.update(other.unreadable)
        for image_id in self.records:
            self.unreadable.pop(image_id, None)


def _parse_line(line: str, log: RecordLog) -> bool:
    """Add the image of one JSON line to ``log``; False (nothing added) for an unreadable line."""
    try:
        row = json.loads(line)
        image_id = int(row["image_id"])
        records = [InstanceRecord(**r) for r in row["records"]]
        reason = row.get("unreadable")
    except (ValueError, KeyError, TypeError):
        return False
    if reason is None:
        log.records[image_id] = records
    else:
        log.unreadable[image_id] = str(reason)
    return True


def _done_images(path: Path, repair: bool = False) -> RecordLog:
    """The finished (or unreadable) images logged in ``path``. A line cut by an interruption
    (or otherwise unreadable) is skipped, so its image is redone; with ``repair`` such lines are
    also removed from the file (atomically), so that the next line appended starts a line of its
    own."""
    log = RecordLog()
    if not path.is_file():
        return log
    *lines, cut = path.read_text(encoding="utf-8", errors="replace").split("\n")
    kept = [line + "\n" for line in lines if _parse_line(line, log)]
    if repair and (cut or len(kept) != len(lines)):
        atomic_write_bytes(path, "".join(kept).encode("utf-8"))
    return log


def _logged_images(out: Path, but: Path | None = None) -> RecordLog:
    """What every rank's records file in ``out`` (but ``but``) logs, files in name order."""
    log = RecordLog()
    for path in sorted(out.glob("records.rank*.jsonl")):
        if path != but:
            log.update(_done_images(path))
    return log


def evaluate_rank(
    predictor: InstancePredictor,
    dataset: InstanceDataset,
    splits: Mapping[int, str],
    out_dir: str | Path,
    prompt: PromptKind = "box",
    rank: int = 0,
    world: int = 1,
    indices: Sequence[int] | None = None,
) -> list[InstanceRecord]:
    """Evaluate this rank's share of the images ``indices`` of ``dataset`` (all by default, else
    :attr:`Selection.indices <ovsam.evaluation.accounting.Selection.indices>`); returns its
    records (resuming from disk: an image found in any rank's file, also one of an earlier run
    with another number of processes, is not evaluated again). An image left without usable instances (all empty masks) is
    logged with no records and not prompted; one that cannot be read or prompted (an
    :class:`InputError` from its image file, an annotation or a prompt made from one) is logged
    with the reason, also printed to stderr."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"records.rank{rank}.jsonl"
    done = _done_images(path, repair=True)
    # those of the other ranks' files too (a run of another world size); read only, as their
    # ranks may be writing
    done.update(_logged_images(out, but=path))
    share = list(range(len(dataset)) if indices is None else indices)[rank::world]
    records: list[InstanceRecord] = []
    with path.open("a", encoding="utf-8") as log:
        for index in tqdm(share, desc=f"eval rank {rank}", disable=rank != 0):
            image_id = int(dataset.images[index]["id"])
            if image_id not in done:
                row: dict[str, Any] = {"image_id": image_id, "records": []}
                try:  # an annotation its prompt cannot be made from is named, not fatal
                    image_records = _evaluate_image(predictor, dataset[index], splits, prompt)
                except InputError as exc:
                    done.unreadable[image_id] = row["unreadable"] = str(exc)
                    tqdm.write(f"warning: skipped image id {image_id}: {exc}", file=sys.stderr)
                else:
                    done.records[image_id] = image_records
                    row["records"] = [r.to_json() for r in image_records]
                log.write(json.dumps(row) + "\n")
                log.flush()
            records.extend(done.records.get(image_id, []))
    return records


def _evaluate_image(
    predictor: InstancePredictor, item: Instances, splits: Mapping[int, str], prompt: PromptKind
) -> list[InstanceRecord]:
    """The records of one image's instances (none, unprompted, when it has none)."""
    if not item.category_ids:
        return []
    boxes = box_prompts(item.boxes) if prompt == "box" else None
    points = frame_center_points(item.masks) if prompt == "point" else None
    masks, names = predictor.predict_instances(item.image, boxes, points)
    return records_for_image(
        item.image_id,
        masks,
        item.masks,
        names,
        item.names,
        [splits.get(c, "base") for c in item.category_ids],
    )


def write_report(
    out_dir: str | Path,
    method: str,
    selection: Selection,
    about: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge every rank's records of the images of ``selection`` and write ``metrics.json`` and
    ``table.md`` (atomically): the metrics and the image / instance counts of
    :func:`~ovsam.evaluation.accounting.account` (every selected image evaluated, skipped with
    its reason, or missing; the unreadable ones listed with their reasons), and ``about`` the
    run (prompt, split, model, checkpoint, ovsam version, ...: fields of ``metrics.json`` and a
    line under the table, a file named there by its path and sha256, a None not shown)."""
    out = Path(out_dir)
    log = _logged_images(out)  # also those of an earlier, larger world
    done = {i: log.records[i] for i in selection.usable if i in log.records}
    metrics = {
        **summarize(r for records in done.values() for r in records),
        **account(selection, done, log.unreadable),
    }
    about = dict(about or {})
    atomic_write_json(out / "metrics.json", {"method": method, **about, **metrics})
    table = markdown_table({method: metrics})
    if about:
        shown = (f"{key}: {_about(value)}" for key, value in about.items() if value is not None)
        table += "\n" + "; ".join(shown) + "\n"
    atomic_write_bytes(out / "table.md", table.encode("utf-8"))
    return metrics


def _about(value: Any) -> str:
    """A field of ``about`` under the table: a file record (:mod:`ovsam.run_settings`) as
    ``path (sha256 hex)``, anything else as itself."""
    if isinstance(value, Mapping):
        return f"{value['path']} (sha256 {value['sha256']})"
    return str(value)
