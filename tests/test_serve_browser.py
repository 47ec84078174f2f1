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
from contextlib import contextmanager
from dataclasses import replace
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


@contextmanager
def running_server(engine: object) -> Iterator[str]:
    """Serve ``engine`` on a free loopback port in a thread; yields the base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    from ovsam.serve.app import create_app
    from ovsam.serve.settings import ServeSettings

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
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(mobilesam_model: torch.nn.Module) -> Iterator[str]:
    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine

    with running_server(SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam")) as url:
        yield url


@pytest.fixture(scope="module")
def labelled_server_url(mobilesam_model: torch.nn.Module) -> Iterator[str]:
    """The same server with a (tiny, random) CLIP recognizer: labels appear in the page."""
    from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
    from ovsam.clip.model import CLIP
    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.recognition import ClipRecognizer

    torch.manual_seed(0)
    text = replace(get_clip_config("RN50").text, width=64, heads=1, layers=1)
    clip = CLIP(CLIPConfig(32, VisionConfig("vit", 64, (2,), 64, 16), text, True))
    recognizer = ClipRecognizer(clip, "tiny random test CLIP", templates="none")
    with running_server(
        SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam", recognizer)
    ) as url:
        yield url


def drag_box_on_sample(page: object, server_url: str, vocabulary: str | None = None) -> float:
    """Open the page, upload the sample photo, (choose a vocabulary), drag SAMPLE_BOX; returns
    the fraction of the canvas tinted by the mask overlay."""
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
    if vocabulary:
        page.select_option("#vocabulary", vocabulary)
    page.set_input_files("#file", str(SAMPLE_PHOTO))
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Ready')")
    canvas = page.locator("#overlay").bounding_box()
    assert canvas is not None and canvas["width"] > 100
    scale = canvas["width"] / 600
    x0, y0, x1, y1 = SAMPLE_BOX
    page.mouse.move(canvas["x"] + x0 * scale, canvas["y"] + y0 * scale)
    page.mouse.down()
    page.mouse.move(canvas["x"] + (x0 + x1) / 2 * scale, canvas["y"] + (y0 + y1) / 2 * scale)
    page.mouse.move(canvas["x"] + x1 * scale, canvas["y"] + y1 * scale)
    page.mouse.up()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Mask in')")
    return page.evaluate(
        """() => {
          const c = document.getElementById('overlay');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < d.length; i += 4) if (d[i + 3] === 120) n++;
          return n / (c.width * c.height);
        }"""
    )


@contextmanager
def browser_page() -> Iterator[object]:
    """A 1200x800 page in headless Debian Chromium (skips cleanly when either is missing)."""
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (scripts/install_browser_test_deps.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 800})
        finally:
            browser.close()


def screenshot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def test_drag_a_box_and_see_the_mask(server_url: str) -> None:
    with browser_page() as page:
        tinted = drag_box_on_sample(page, server_url)
        score = page.locator("#score").inner_text()
        note = page.locator("#recognition").inner_text()
        screenshot(page, "serve_browser.png")
    assert 0.1 < tinted < 0.4, tinted  # the cup covers roughly a fifth of the photo
    assert score.startswith("score 0.") and "area" in score
    assert "recognition weights are missing" in note


def test_labels_and_scores_appear_with_a_recognizer(labelled_server_url: str) -> None:
    with browser_page() as page:
        tinted = drag_box_on_sample(page, labelled_server_url, vocabulary="coco")
        page.wait_for_function("document.getElementById('labels').children.length > 0")
        labels = page.locator("#labels").inner_text()
        note = page.locator("#recognition").inner_text()
        screenshot(page, "serve_browser_labels.png")
    assert 0.1 < tinted < 0.4, tinted
    rows = [row for row in labels.splitlines() if row.strip()]
    assert len(rows) == 5 and all(any(ch.isdigit() for ch in row) for row in rows), labels
    assert "tiny random test CLIP" in note and "missing" not in note


def wait_idle(page: object) -> None:
    page.wait_for_function("state.result && !state.busy && !state.pending")


def test_tiff_is_refused_in_the_page_before_upload(server_url: str, tmp_path: Path) -> None:
    from PIL import Image

    tiff = tmp_path / "scan.tiff"
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tiff)
    with browser_page() as page:
        uploads: list[str] = []
        page.on("request", lambda r: uploads.append(r.url) if r.method == "POST" else None)
        page.goto(server_url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
        page.set_input_files("#file", str(tiff))
        page.wait_for_function("document.getElementById('status').classList.contains('error')")
        status = page.locator("#status").inner_text()
    assert "cannot show TIFF images" in status and "PNG or JPEG" in status
    assert uploads == []


def click_twice_in_the_box(page: object, server_url: str) -> dict:
    """Box, then two object clicks (the second refines the first's mask); returns the canvas."""
    drag_box_on_sample(page, server_url)
    canvas = page.locator("#overlay").bounding_box()
    scale = canvas["width"] / 600
    x0, y0, x1, y1 = SAMPLE_BOX
    for dx in (0, 10):
        page.mouse.click(
            canvas["x"] + ((x0 + x1) / 2 + dx) * scale, canvas["y"] + (y0 + y1) / 2 * scale
        )
        wait_idle(page)
    return canvas


def test_vocabulary_change_does_not_feed_the_mask_back(server_url: str) -> None:
    with browser_page() as page:
        bodies: list[dict] = []
        page.on(
            "request",
            lambda r: bodies.append(r.post_data_json) if r.url.endswith("/predict") else None,
        )
        click_twice_in_the_box(page, server_url)
        assert "mask_id" in bodies[-1]
        before = page.evaluate("JSON.stringify(state.prompts)")
        with page.expect_response(lambda r: r.url.endswith("/predict")):
            page.select_option("#vocabulary", "coco")
        wait_idle(page)
        after = page.evaluate("JSON.stringify(state.prompts)")
    assert bodies[-1]["vocabulary"] == "coco" and "mask_id" not in bodies[-1]
    assert after == before


def test_a_failed_box_restores_the_previous_prompts(server_url: str) -> None:
    with browser_page() as page:
        canvas = click_twice_in_the_box(page, server_url)
        before = page.evaluate("JSON.stringify(state.prompts)")
        error = {"error": {"code": "invalid_input", "message": "injected failure"}}
        page.route("**/predict", lambda route: route.fulfill(status=400, json=error))
        page.mouse.move(canvas["x"] + 5, canvas["y"] + 5)
        page.mouse.down()
        page.mouse.move(canvas["x"] + 60, canvas["y"] + 60)
        page.mouse.up()
        page.wait_for_function("document.getElementById('status').textContent.includes('injected')")
        wait_idle(page)
        after = page.evaluate("JSON.stringify(state.prompts)")
    assert after == before  # the earlier box and both clicks are back, nothing else is lost
