"""Shared fixtures: the real MobileSAM checkpoint (downloaded once through the resolver), the
model, and a server of it for the browser tests; repeated image-encoder passes are reused
(tests/encoder_memo.py).

Under pytest-xdist (``scripts/test.sh`` runs ``-n`` workers) each worker, and each process a
test starts, gets an equal share of the CPU's threads: two workers of two threads on a 2-core
machine would contend. Large tensors are allocated on transparent huge pages
(``THP_MEM_ALLOC_ENABLE``, read by torch's CPU allocator): on a 2-core VM a serial run's minor
page faults fell from 19.2 M to 3.6 M, and its wall time from 354 s to 294 s.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch allocates anything

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import encoder_memo  # noqa: E402

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _share = max(1, (_cpus or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_share)  # the processes tests start
    torch.set_num_threads(_share)

# Fixture plugins that test modules also import helpers from: rewritten before either.
pytest.register_assert_rewrite("eval_stand_in", "train_harness")
encoder_memo.install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests cleanly when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its memo counts to the controlling process."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["encoder_passes"] = dict(encoder_memo.passes)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controlling process sums its xdist workers' memo counts (xdist's hook)."""
    for key, count in getattr(node, "workeroutput", {}).get("encoder_passes", {}).items():
        encoder_memo.passes[key] += count


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    passes = encoder_memo.passes
    if any(passes.values()):
        terminalreporter.write_line(
            f"image encoder passes (TinyViT, OV-SAM, CLIP towers): {passes['computed']} computed, "
            f"{passes['reused']} repeated ones reused (OVSAM_TEST_NO_MEMO=1 computes all; "
            "tests/encoder_memo.py)"
        )


@pytest.fixture(autouse=True)
def seeded_random_state() -> None:
    """Every test starts from the same torch, NumPy and ``random`` seeds: a test that
    initialises a module at random gets the same weights whichever tests its xdist worker ran
    before (CI once saw 2 records where a local run saw 15, from an unseeded CLIP2SAM head)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


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
