"""The web page over a session of edits: Undo, a new image while an answer is slow, a narrower
window or a phone, a jittery tap, the vocabulary list and the downloads. Skipped like the other
browser tests when Chromium or Playwright is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser_helpers import (
    browser_page,
    drag_box,
    drag_box_on_sample,
    open_page,
    upload_sample,
    wait_idle,
)

pytestmark = pytest.mark.browser


def click(page: object, x: float, y: float, **options: object) -> None:
    """Click sample-photo pixel ``(x, y)`` and wait for its mask."""
    canvas = page.locator("#overlay").bounding_box()
    scale = canvas["width"] / page.evaluate("state.width")
    page.mouse.click(canvas["x"] + x * scale, canvas["y"] + y * scale, **options)
    page.wait_for_timeout(50)
    wait_idle(page)


def test_undo_brings_back_the_previous_box_and_mask(server_url: str) -> None:
    """A second box deleted the first from the history (Undo left no box), and Undo asked
    again for the remaining prompts, whose mask then differed from the one shown before."""
    with browser_page() as page:
        drag_box_on_sample(page, server_url)
        wait_idle(page)
        first = page.evaluate("[JSON.stringify(state.prompts), state.result.mask_png]")
        click(page, 20, 20)  # a point, then a second box replaces the first
        two = page.evaluate("state.result.mask_png")
        canvas = page.locator("#overlay").bounding_box()
        scale = canvas["width"] / 600
        page.mouse.move(canvas["x"] + 20 * scale, canvas["y"] + 20 * scale)
        page.mouse.down()
        page.mouse.move(canvas["x"] + 120 * scale, canvas["y"] + 120 * scale, steps=4)
        page.mouse.up()
        page.wait_for_timeout(50)
        wait_idle(page)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url) if r.url.endswith("/predict") else None)
        page.click("#undo")
        assert page.evaluate("state.result.mask_png") == two  # the point and the first box
        page.click("#undo")
        assert page.evaluate("[JSON.stringify(state.prompts), state.result.mask_png]") == first
        page.wait_for_timeout(300)
    assert requests == []  # shown again, not asked again


def test_a_new_image_is_not_held_up_by_the_old_ones_slow_answer(
    server_url: str, tmp_path: Path
) -> None:
    from PIL import Image

    other = tmp_path / "other.png"
    Image.new("RGB", (300, 200), (40, 120, 40)).save(other)
    with browser_page() as page:
        open_page(page, server_url)
        upload_sample(page)
        held: list = []
        page.route(
            "**/predict", lambda route: held.append(route) if not held else route.continue_()
        )
        drag_box(page)
        while not held:
            page.wait_for_timeout(20)
        upload_sample(page, other)  # the sample's "Ready" status may still be showing:
        page.wait_for_function("state.imageId && state.width === 300")  # the new one's
        click(page, 150, 100)  # answered while the sample's request is still held
        assert page.evaluate("state.result.prompts.length") == 1
        held[0].continue_()


def test_the_image_follows_the_window_and_never_covers_the_panel(server_url: str) -> None:
    """The canvases were sized once: in a narrower window they painted over the panel, and a
    click on the Vocabulary list became a point on the image."""
    with browser_page() as page:
        open_page(page, server_url)
        upload_sample(page)
        page.set_viewport_size({"width": 800, "height": 800})
        page.wait_for_function("overlay.width < 600")  # laid out again (next animation frame)
        overlay = page.locator("#overlay").bounding_box()
        panel = page.locator("aside").bounding_box()
        assert overlay["x"] + overlay["width"] <= panel["x"] + 1
        page.click("#vocabulary")
        assert page.evaluate("state.prompts.length") == 0
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the panel goes below
        page.wait_for_function("overlay.getBoundingClientRect().width > 300")


def test_a_tap_that_rolls_a_few_pixels_is_a_point(server_url: str) -> None:
    """A 5.7 px roll of the finger made a 4x4 box that replaced the user's box."""
    with browser_page(touch=True) as page:
        open_page(page, server_url)
        upload_sample(page)
        touch = page.context.new_cdp_session(page)
        canvas = page.locator("#overlay").bounding_box()
        path = [(300, 200), (302, 202), (304, 204)]
        kinds = ["touchStart", "touchMove", "touchMove"]
        for kind, (x, y) in zip(kinds, path, strict=True):
            point = {"x": canvas["x"] + x, "y": canvas["y"] + y}
            touch.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [point]})
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_timeout(50)
        wait_idle(page)
        assert [p["kind"] for p in page.evaluate("state.prompts")] == ["point"]


def test_other_pages_typed_names_are_not_listed_and_downloads_name_the_image(
    server_url: str, tmp_path: Path
) -> None:
    from PIL import Image

    with browser_page() as first:
        open_page(first, server_url)
        first.fill("#custom-names", "prototype housing\nsecret part")
        first.click("#add-vocabulary")
        first.wait_for_function("document.getElementById('status').textContent.startsWith('Vocab')")
        mine = first.evaluate("CUSTOM_VOCABULARY")
        assert mine in first.evaluate("[...$('vocabulary').options].map((o) => o.value)")
    picture = tmp_path / "street_001.png"
    Image.new("RGB", (640, 480), (30, 30, 200)).save(picture)
    with browser_page() as page:
        open_page(page, server_url)
        assert mine not in page.evaluate("[...$('vocabulary').options].map((o) => o.value)")
        upload_sample(page, picture)
        click(page, 100, 100)
        with page.expect_download() as mask:
            page.click("#download-png")
        with page.expect_download() as record:
            page.click("#download-json")
        saved = json.loads(Path(record.value.path()).read_text())
    assert (mask.value.suggested_filename, record.value.suggested_filename) == (
        "street_001.mask.png",
        "street_001.json",
    )
    assert (saved["image"], saved["width"], saved["height"]) == ("street_001.png", 640, 480)
