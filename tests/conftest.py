"""Shared fixtures: the real MobileSAM checkpoint (downloaded once through the resolver)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# A fixture plugin that test modules also import helpers from: rewritten before either.
pytest.register_assert_rewrite("eval_stand_in")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests cleanly when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mobilesam_checkpoint() -> Path:
    """Path of the real ``mobile_sam.pt``, fetched and sha256-verified by ovsam.weights."""
    from ovsam.weights import resolve_weights

    return resolve_weights("mobile_sam", progress=False)


@pytest.fixture(scope="session")
def mobilesam_model(mobilesam_checkpoint: Path) -> torch.nn.Module:
    """The real MobileSAM model (eval mode, CPU), built once per test session."""
    from ovsam.build import build_model

    return build_model("mobilesam", checkpoint=mobilesam_checkpoint)
