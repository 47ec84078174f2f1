"""End to end in a real browser: upload the sample photo, drag a box, see the mask and score.

Drives Debian's headless Chromium with Playwright's Python package (system browser, no
download). Skipped, with the reason, when either is missing. The screenshot is written to
``test-artifacts/serve_browser.png``.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(mobilesam_model: torch.nn.Module) -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn")
    from ovsam.predictor import SamPredictor
    from ovsam.serve.app import create_app
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.settings import ServeSettings

    engine = SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")
    app = create_app(ServeSettings(), lambda _: engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_drag_a_box_and_see_the_mask(server_url: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (scripts/install_browser_test_deps.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(server_url + "/")
            page.wait_for_function(
                "document.getElementById('status').textContent.includes('ready')"
            )
            page.set_input_files("#file", str(SAMPLE_PHOTO))
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('Ready')"
            )
            canvas = page.locator("#overlay").bounding_box()
            assert canvas is not None and canvas["width"] > 100
            scale = canvas["width"] / 600
            x0, y0, x1, y1 = SAMPLE_BOX
            page.mouse.move(canvas["x"] + x0 * scale, canvas["y"] + y0 * scale)
            page.mouse.down()
            page.mouse.move(
                canvas["x"] + (x0 + x1) / 2 * scale, canvas["y"] + (y0 + y1) / 2 * scale
            )
            page.mouse.move(canvas["x"] + x1 * scale, canvas["y"] + y1 * scale)
            page.mouse.up()
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('Mask in')"
            )
            tinted = page.evaluate(
                """() => {
                  const c = document.getElementById('overlay');
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0;
                  for (let i = 0; i < d.length; i += 4) if (d[i + 3] === 120) n++;
                  return n / (c.width * c.height);
                }"""
            )
            score = page.locator("#score").inner_text()
            note = page.locator("#recognition").inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_browser.png"))
        finally:
            browser.close()
    assert 0.1 < tinted < 0.4, tinted  # the cup covers roughly a fifth of the photo
    assert score.startswith("score 0.") and "area" in score
    assert "recognition weights are missing" in note
