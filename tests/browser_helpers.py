"""Helpers of the browser tests: a served ovsam on a free loopback port, a headless
Chromium page (skipped, with the reason, when it or Playwright is missing) and the
page actions the tests share."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO

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


def open_page(page: object, server_url: str) -> None:
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')")


def upload_sample(page: object, path: Path = SAMPLE_PHOTO) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Ready')")


def drag_box(page: object) -> None:
    """Drag SAMPLE_BOX on the sample photo (the answer is not awaited)."""
    canvas = page.locator("#overlay").bounding_box()
    assert canvas is not None and canvas["width"] > 100
    scale = canvas["width"] / 600
    x0, y0, x1, y1 = SAMPLE_BOX
    page.mouse.move(canvas["x"] + x0 * scale, canvas["y"] + y0 * scale)
    page.mouse.down()
    page.mouse.move(canvas["x"] + (x0 + x1) / 2 * scale, canvas["y"] + (y0 + y1) / 2 * scale)
    page.mouse.move(canvas["x"] + x1 * scale, canvas["y"] + y1 * scale)
    page.mouse.up()


def wait_mask(page: object) -> None:
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Mask in')")


def tinted(page: object) -> float:
    """The fraction of the canvas tinted by the mask overlay."""
    return page.evaluate(
        """() => {
          const c = document.getElementById('overlay');
          if (!c.width || !c.height) return 0;
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < d.length; i += 4) if (d[i + 3] === 120) n++;
          return n / (c.width * c.height);
        }"""
    )


def drag_box_on_sample(page: object, server_url: str, vocabulary: str | None = None) -> float:
    """Open the page, upload the sample photo, (choose a vocabulary), drag SAMPLE_BOX; returns
    the fraction of the canvas tinted by the mask overlay."""
    open_page(page, server_url)
    if vocabulary:
        page.select_option("#vocabulary", vocabulary)
    upload_sample(page)
    drag_box(page)
    wait_mask(page)
    return tinted(page)


_open: list = []  # [playwright, browser] while a module's tests share one Chromium


def _browser() -> object:
    """The module's headless Debian Chromium, launched by its first page (skips cleanly when
    either it or Playwright is missing)."""
    if not _open:
        if CHROMIUM is None:
            pytest.skip("Debian chromium is not installed (scripts/install_browser_test_deps.sh)")
        sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
        playwright = sync_api.sync_playwright().start()
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except BaseException:
            playwright.stop()
            raise
        _open.extend([playwright, browser])
    return _open[1]


def close_browser() -> None:
    """Close the shared Chromium (after a module's tests; nothing to do when none was opened)."""
    if _open:
        playwright, browser = _open
        _open.clear()
        try:
            browser.close()
        finally:
            playwright.stop()


@contextmanager
def browser_page(touch: bool = False) -> Iterator[object]:
    """A 1200x800 page in a fresh browser context (its own storage and cache) of the shared
    Chromium; ``touch``: the page has a touch screen (``page.touchscreen``, touch events)."""
    context = _browser().new_context(viewport={"width": 1200, "height": 800}, has_touch=touch)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def wait_idle(page: object) -> None:
    page.wait_for_function("state.result && !state.busy && !state.pending")
