"""What a checkpoint records of the data it was trained on, and the check a resume makes.

Batches are drawn by position (:func:`ovsam.train.engine.batch_items`), so a resume on another
world size, another number of items, or other items in the same number would replay other data.
A checkpoint records the world size, ``num_items``, the task's ``data_rule`` (which items it
keeps) when it has one, and a sha256 of the task's ``item_keys()`` (image ids or relative
paths, in order) when it has them. Older checkpoints lack the later fields: those are not
compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ovsam.errors import InputError


def items_sha256(task: Any) -> str | None:
    """sha256 of ``task.item_keys()`` in order, or None for a task without them."""
    keys = getattr(task, "item_keys", None)
    if keys is None:
        return None
    return hashlib.sha256(json.dumps(list(keys())).encode("utf-8")).hexdigest()


def data_record(task: Any, world: int) -> dict[str, object]:
    """The checkpoint's ``data`` entry for ``task`` trained on ``world`` processes."""
    record: dict[str, object] = {"world": world, "num_items": task.num_items}
    rule, items = getattr(task, "data_rule", None), items_sha256(task)
    if rule is not None:
        record["rule"] = rule
    if items is not None:
        record["items_sha256"] = items
    return record


def check_same_data(recorded: object, task: Any, world: int, path: Path) -> None:
    """Refuse (:class:`InputError`) to resume from the checkpoint ``path`` whose ``recorded``
    data differ from this run's: another rule, world size, number of items or items."""
    if not isinstance(recorded, dict):  # checkpoints written before this was recorded
        return
    rule = getattr(task, "data_rule", None)
    if recorded.get("rule") != rule and recorded.get("num_items") != task.num_items:
        raise InputError(
            f"{path} counted num_items={recorded.get('num_items')} by another rule than "
            f"this ovsam's ({rule or 'every item'}: num_items={task.num_items}); "
            "finish the run with the ovsam version that started it, or use a new --out"
        )
    now = {"world": world, "num_items": task.num_items}
    remedy = {
        "world": f"start it on {recorded.get('world')} processes (torchrun --nproc_per_node)",
        "num_items": "train on the data it was trained on",
    }
    for key, value in now.items():
        if recorded.get(key) not in (None, value):
            raise InputError(
                f"{path} was trained with {key}={recorded[key]}, this run has {key}={value}: "
                f"resuming would draw other batches; {remedy[key]}, or use a new --out"
            )
    if recorded.get("items_sha256") not in (None, items_sha256(task)):
        raise InputError(
            f"{path} was trained on other items ({task.num_items} as now, but other images "
            "or in another order): resuming would draw other batches; train on the data it "
            "was trained on, or use a new --out"
        )


def require_items(config: Any, num_items: int) -> None:
    """Refuse (:class:`InputError`) a run whose data hold no training item, naming them."""
    if num_items < 1:
        where = config.annotations or config.data
        raise InputError(f"nothing to train on: {where} holds no training items")
