"""The web page with a finger, the Background toggle, and the blob URLs it lets go.

A finger's drag sends touch events, not mouse moves: the page takes pointer events, and its
canvas's ``touch-action: none`` keeps the drag from scrolling the page. Touches are sent
through the Chrome DevTools Protocol (``Input.dispatchTouchEvent``) as a touch screen sends
them. Skipped like the other browser tests when Chromium or Playwright is missing.
"""

from __future__ import annotations

import pytest

from browser_helpers import (
    browser_page,
    drag_box_on_sample,
    open_page,
    screenshot,
    tinted,
    upload_sample,
    wait_idle,
    wait_mask,
)
from ovsam.assets import SAMPLE_BOX

pytestmark = pytest.mark.browser


def sample_to_page(page: object, x: float, y: float) -> dict[str, float]:
    """Sample-photo pixel ``(x, y)`` -> a touch point in page CSS pixels."""
    canvas = page.locator("#overlay").bounding_box()
    scale = canvas["width"] / 600
    return {"x": canvas["x"] + x * scale, "y": canvas["y"] + y * scale}


def test_a_finger_drags_a_box(server_url: str) -> None:
    with browser_page(touch=True) as page:
        open_page(page, server_url)
        upload_sample(page)
        touch = page.context.new_cdp_session(page)
        x0, y0, x1, y1 = SAMPLE_BOX
        path = [(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2), (x1, y1)]
        touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [
            sample_to_page(page, *path[0])]})  # fmt: skip
        for point in path[1:]:
            touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
                sample_to_page(page, *point)]})  # fmt: skip
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        wait_mask(page)
        prompts = page.evaluate("state.prompts")
        covered = tinted(page)
        screenshot(page, "serve_browser_touch.png")
    assert [p["kind"] for p in prompts] == ["box"], prompts
    assert prompts[0]["box"] == pytest.approx(list(SAMPLE_BOX), abs=2)
    assert 0.1 < covered < 0.4, covered  # the cup, as with a mouse


def test_background_toggle_makes_taps_and_enter_background_points(server_url: str) -> None:
    with browser_page(touch=True) as page:
        open_page(page, server_url)
        upload_sample(page)
        x0, y0, x1, y1 = SAMPLE_BOX
        inside = sample_to_page(page, (x0 + x1) / 2, (y0 + y1) / 2)
        page.touchscreen.tap(inside["x"], inside["y"])
        wait_idle(page)
        page.click("#background")
        pressed = page.get_attribute("#background", "aria-pressed")
        page.touchscreen.tap(inside["x"] + 20, inside["y"])
        wait_idle(page)
        page.focus("#overlay")
        page.keyboard.press("Enter")
        wait_idle(page)
        page.click("#background")
        page.mouse.click(inside["x"] - 20, inside["y"])
        wait_idle(page)
        labels = page.evaluate("state.prompts.map((p) => p.label)")
    assert pressed == "true"
    assert labels == [1, 0, 0, 1], labels


def test_the_old_json_download_and_the_uploaded_file_are_let_go(server_url: str) -> None:
    """Every mask made a new blob URL for its JSON download and kept the old ones (and the
    uploaded file's) alive for as long as the page stayed open."""
    with browser_page() as page:
        drag_box_on_sample(page, server_url)
        first = page.get_attribute("#download-json", "href")
        canvas = sample_to_page(page, sum(SAMPLE_BOX[::2]) / 2, sum(SAMPLE_BOX[1::2]) / 2)
        page.mouse.click(canvas["x"], canvas["y"])
        wait_idle(page)
        second = page.get_attribute("#download-json", "href")
        alive = "(url) => fetch(url).then(() => true, () => false)"
        first_alive, second_alive = page.evaluate(alive, first), page.evaluate(alive, second)
        picture = page.evaluate("state.picture.src")
        picture_alive = page.evaluate(alive, picture)
        drawn = page.evaluate(
            """() => { const c = document.getElementById('image');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              return d.some((v, i) => i % 4 !== 3 && v > 0); }"""
        )
    assert first.startswith("blob:") and second.startswith("blob:") and first != second
    assert not first_alive and second_alive
    assert picture.startswith("blob:") and not picture_alive
    assert drawn  # the photo was drawn from the decoded picture after its URL went
