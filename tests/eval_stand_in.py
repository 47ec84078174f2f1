"""A fast stand-in for ``ovsam eval``'s model, and helpers to run the command on tiny COCO
files (``pytest_plugins = ("eval_stand_in",)`` provides the fixtures ``built`` and ``tiny``).

Each box prompt gives its filled box, each point a 9x9 square, every label "person", so the
numbers are known without MobileSAM.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import ovsam.recognizers
from ovsam.cli.main import main
from ovsam.errors import InputError
from tiny_coco import write_tiny_coco


class BoxFiller:
    """Stands in for a labelled predictor: a box prompt's mask is the filled box."""

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]

    def _label(self) -> SimpleNamespace:
        return SimpleNamespace(top=[("person", 1.0)])

    def predict_boxes(self, boxes: np.ndarray, multimask_output: bool = False) -> tuple:
        if len(boxes) == 0:  # as the real predictor
            raise InputError(f"box must be XYXY with shape (4,) or Nx4, got {boxes.shape}")
        masks = np.zeros((len(boxes), 1, *self.shape), dtype=bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int), strict=True):
            mask[0, y0:y1, x0:x1] = True
        return masks, None, None, [self._label() for _ in boxes]

    def predict(self, point_coords: np.ndarray, point_labels: np.ndarray, **_: object) -> tuple:
        x, y = point_coords[0].astype(int)
        mask = np.zeros((1, *self.shape), dtype=bool)
        mask[0, max(y - 4, 0) : y + 5, max(x - 4, 0) : x + 5] = True
        return mask, np.ones(1), None, [self._label()]


@pytest.fixture()
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the model by :class:`BoxFiller`; lists the models built (to check none was)."""
    calls: list[str] = []

    def build(options: object, model: str, checkpoint: object, device: str) -> BoxFiller:
        calls.append(model)
        return BoxFiller()

    monkeypatch.setattr(ovsam.recognizers, "build_labeled_predictor", build)
    return calls


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return write_tiny_coco(tmp_path / "coco", images=4)


def run_eval(
    annotations: Path, out: Path, *extra: str, images: Path | None = None
) -> tuple[int, str, str]:
    """``ovsam eval`` in-process; returns ``(status, stdout, stderr)``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    folder = images or annotations.parent / "images"
    argv = ["eval", str(annotations), "--images", str(folder), "--out", str(out),
            "--random-recognition", "--templates", "none", *extra]  # fmt: skip
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


def strict_json(path: Path) -> dict:
    """Parse ``path`` as standard JSON (NaN / Infinity are not JSON)."""

    def reject(name: str) -> None:
        raise ValueError(f"{name} in {path}")

    return json.loads(path.read_text(), parse_constant=reject)
