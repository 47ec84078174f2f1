"""Shared fixtures: the real MobileSAM checkpoint (downloaded once through the resolver), the
model, and a server of it for the browser tests; repeated image-encoder passes are reused
(tests/encoder_memo.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import encoder_memo

# A fixture plugin that test modules also import helpers from: rewritten before either.
pytest.register_assert_rewrite("eval_stand_in")
encoder_memo.install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests cleanly when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    passes = encoder_memo.passes
    if any(passes.values()):
        terminalreporter.write_line(
            f"image encoder passes (TinyViT, OV-SAM, CLIP towers): {passes['computed']} computed, "
            f"{passes['reused']} repeated ones reused (OVSAM_TEST_NO_MEMO=1 computes all; "
            "tests/encoder_memo.py)"
        )


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


@pytest.fixture(autouse=True)
def browser_private_cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``browser`` tests: text banks the served page builds go to the test's own cache folder,
    not the user's."""
    if request.node.get_closest_marker("browser"):
        monkeypatch.setenv("OVSAM_CACHE_DIR", str(request.getfixturevalue("tmp_path") / "cache"))


@pytest.fixture(scope="module", autouse=True)
def shared_chromium() -> Iterator[None]:
    """The browser tests of a module share one Chromium (a page each, in its own context):
    closed when the module is done, before other modules' tests run."""
    yield
    from browser_helpers import close_browser

    close_browser()


@pytest.fixture(scope="module")
def server_url(mobilesam_model: torch.nn.Module) -> Iterator[str]:
    """Base URL of ``ovsam serve`` (MobileSAM, no recognition) on a free loopback port."""
    from browser_helpers import running_server
    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine

    with running_server(SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")) as url:
        yield url
