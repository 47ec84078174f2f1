"""End to end in a real browser: upload the sample photo, drag a box, see the mask and score.

Drives Debian's headless Chromium with Playwright's Python package (system browser, no
download). Skipped, with the reason, when either is missing. The screenshot is written to
``test-artifacts/serve_browser.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from browser_helpers import (
    browser_page,
    drag_box,
    drag_box_on_sample,
    open_page,
    running_server,
    screenshot,
    tinted,
    upload_sample,
    wait_idle,
    wait_mask,
)
from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO

pytestmark = pytest.mark.browser


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


def test_drag_a_box_and_see_the_mask(server_url: str) -> None:
    with browser_page() as page:
        tinted = drag_box_on_sample(page, server_url)
        score = page.locator("#score").inner_text()
        note = page.locator("#recognition").inner_text()
        screenshot(page, "serve_browser.png")
    assert 0.1 < tinted < 0.4, tinted  # the cup covers roughly a fifth of the photo
    assert score.startswith("predicted IoU 0.") and "area" in score
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


@pytest.mark.parametrize("change", ["clear", "new image"])
def test_an_answer_after_clear_or_a_new_image_is_dropped(
    server_url: str, change: str, tmp_path: Path
) -> None:
    """The answer to a click made before Clear (or before another image was loaded) arrives
    late: it must not bring the old mask back (or stretch it over the new image). The panel
    and Undo are reset too: a new image left the old one's score, and both changes left its
    download links (dimmed, but reached with Tab and followed with Enter)."""
    from PIL import Image

    other = tmp_path / "other.png"
    Image.new("RGB", (300, 200), (40, 120, 40)).save(other)
    with browser_page() as page:
        drag_box_on_sample(page, server_url)
        held: list = []
        page.route("**/predict", lambda route: held.append(route))  # answer held back
        canvas = page.locator("#overlay").bounding_box()
        page.mouse.click(canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
        while not held:
            page.wait_for_timeout(20)
        if change == "clear":
            page.click("#clear")
        else:
            upload_sample(page, other)
        held[0].continue_()
        page.wait_for_function("!state.busy")
        page.wait_for_timeout(100)
        assert page.evaluate("[state.result, state.prompts.length]") == [None, 0]
        assert tinted(page) == 0
        assert page.locator("#score").inner_text() == "No mask yet."
        assert page.evaluate("[$('undo').disabled, $('clear').disabled]") == [True, True]
        links = page.evaluate(
            "['download-png', 'download-json'].map((id) => { const a = $(id); a.focus(); "
            "return [a.getAttribute('href'), document.activeElement === a]; })"
        )
        assert links == [[None, False], [None, False]]


def test_a_late_upload_does_not_replace_the_image_chosen_after_it(
    server_url: str, tmp_path: Path
) -> None:
    """Image A uploads slowly, the user picks B and clicks on it: A's late answer replaced B
    under the click, kept B's click and mask, and sent them for A with the next click."""
    from PIL import Image

    first, chosen = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(first)
    Image.new("RGB", (300, 200), (30, 30, 200)).save(chosen)
    with browser_page() as page:
        open_page(page, server_url)
        held: list = []
        page.route("**/v1/images", lambda r: r.continue_() if held else held.append(r))
        page.set_input_files("#file", str(first))
        while not held:
            page.wait_for_timeout(20)
        upload_sample(page, chosen)
        image_id = page.evaluate("state.imageId")
        canvas = page.locator("#overlay").bounding_box()
        page.mouse.click(canvas["x"] + 150, canvas["y"] + 100)
        wait_idle(page)
        with page.expect_response(lambda r: r.url.endswith("/v1/images")):
            held[0].continue_()  # A's answer, late
        page.wait_for_timeout(200)
        left = page.evaluate(
            "[state.imageId, state.file.name, state.prompts.length, !!state.result, "
            "Array.from($('image').getContext('2d').getImageData(150, 100, 1, 1).data)]"
        )
        status = page.locator("#status").inner_text()
    assert left == [image_id, "b.png", 1, True, [30, 30, 200, 255]]
    assert status.startswith("Mask in"), status


def test_a_straight_drag_is_a_click_where_it_began(server_url: str) -> None:
    """A drag straight down made a box 0 pixels wide, which the server refused."""
    with browser_page() as page:
        open_page(page, server_url)
        upload_sample(page)
        canvas = page.locator("#overlay").bounding_box()
        page.mouse.move(canvas["x"] + 300, canvas["y"] + 100)
        page.mouse.down()
        page.mouse.move(canvas["x"] + 300, canvas["y"] + 140)
        page.mouse.up()
        page.wait_for_function("!state.busy && !state.pending")
        prompts = page.evaluate("state.prompts")
        status = page.locator("#status").inner_text()
    assert status.startswith("Mask in"), status
    (point,) = prompts
    assert (point["kind"], point["label"]) == ("point", 1)
    assert (point["x"], point["y"]) == pytest.approx((300, 100), abs=1)


def test_the_page_works_from_the_keyboard(server_url: str) -> None:
    """The upload was an input that is `hidden` (out of the Tab order), the vocabulary fields
    had no label and a point could only be placed with a mouse. Now the image takes the focus:
    the arrows move a cursor (1% of the image, Shift: 10%), Enter places an object point and
    Shift+Enter a background one, as the page's help says."""
    with browser_page() as page:
        open_page(page, server_url)
        page.focus("#sample")
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("document.activeElement.id") == "file"  # Enter or Space opens it
        upload_sample(page)
        labels = page.evaluate("['vocabulary', 'custom-names'].map((id) => $(id).labels.length)")
        assert labels == [1, 1]
        page.focus("#sample")
        page.keyboard.press("Tab")  # Undo and Clear are disabled
        assert page.evaluate("document.activeElement.id") == "background"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "everything"
        page.keyboard.press("Tab")  # the download links are disabled
        assert page.evaluate("document.activeElement.id") == "overlay"
        assert page.get_attribute("#overlay", "aria-label")
        for key in ["Shift+ArrowLeft", "ArrowUp", "ArrowUp"]:  # from the centre, (300, 200)
            page.keyboard.press(key)
        cursor = page.evaluate(
            "Array.from($('overlay').getContext('2d').getImageData(233, 192, 1, 1).data)"
        )
        page.keyboard.press("Enter")
        wait_mask(page)
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Shift+Enter")
        page.wait_for_function("state.prompts.length === 2 && !state.busy && !state.pending")
        prompts = page.evaluate("state.prompts.flatMap((p) => [p.x, p.y, p.label])")
        status = page.locator("#status").inner_text()
        help_text = page.locator("#help").inner_text()
    assert cursor == [255, 0, 255, 255]  # the cursor's frame, 7 pixels left of (240, 192)
    assert prompts == pytest.approx([240, 192, 1, 240, 196, 0]) and status.startswith("Mask in")
    assert "arrow keys" in help_text and "Shift+Enter = background" in help_text


def test_typed_names_are_the_pages_own_and_come_back_after_eviction(server_url: str) -> None:
    """Typed names go to a vocabulary named for this page (not a shared "custom"); when the
    server has dropped it (LRU), the page posts the names again and the click succeeds."""
    from urllib.request import Request, urlopen

    with browser_page() as page:
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        open_page(page, server_url)
        upload_sample(page)
        page.fill("#custom-names", "cup, mug\nsaucer")
        page.click("#add-vocabulary")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Vocab')")
        name = page.evaluate("CUSTOM_VOCABULARY")
        assert name.startswith("custom-") and page.input_value("#vocabulary") == name
        assert "with 2 names" in page.locator("#status").inner_text()  # commas: synonyms
        urlopen(Request(f"{server_url}/v1/vocabularies/{name}", method="DELETE"))  # evicted
        posts.clear()
        drag_box(page)
        wait_mask(page)
        page.reload()
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
        other = page.evaluate("CUSTOM_VOCABULARY")
    paths = [url.removeprefix(server_url) for url in posts]
    assert paths[1:] == ["/v1/vocabularies", paths[0]] and paths[0].endswith("/predict")
    assert other.startswith("custom-") and other != name


def test_a_failed_upload_clears_the_old_image(server_url: str) -> None:
    with browser_page() as page:
        drag_box_on_sample(page, server_url)
        error = {"error": {"code": "bad_image", "message": "injected upload failure"}}
        page.route("**/v1/images", lambda route: route.fulfill(status=400, json=error))
        page.set_input_files("#file", str(SAMPLE_PHOTO))
        page.wait_for_function("document.getElementById('status').classList.contains('error')")
        status = page.locator("#status").inner_text()
        left = page.evaluate(
            "[state.imageId, state.prompts.length, state.result, "
            "document.getElementById('image').width, document.getElementById('hint').hidden]"
        )
    assert "injected upload failure" in status
    assert left == [None, 0, None, 0, False]  # no image, prompts or mask left to click on


def test_an_error_page_that_is_not_json_shows_its_status(server_url: str) -> None:
    with browser_page() as page:
        open_page(page, server_url)
        upload_sample(page)
        page.route(
            "**/predict",
            lambda route: route.fulfill(
                status=502, body="<html><body>Bad gateway</body></html>", content_type="text/html"
            ),
        )
        drag_box(page)
        page.wait_for_function("document.getElementById('status').classList.contains('error')")
        status = page.locator("#status").inner_text()
    assert status.startswith("502") and "not JSON" in status, status


def test_a_slow_named_mask_says_why(server_url: str) -> None:
    """The first mask named with a large vocabulary waits until all its names are embedded
    (minutes on a CPU): the status says so rather than the page looking frozen."""
    with browser_page() as page:
        open_page(page, server_url)
        page.select_option("#vocabulary", "lvis")
        upload_sample(page)
        held: list = []
        page.route("**/predict", lambda route: held.append(route))  # a slow answer
        drag_box(page)
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Still working')"
        )
        status = page.locator("#status").inner_text()
        held.pop().continue_()
        wait_mask(page)  # the answer replaces the note
        drag_box(page)  # lvis again: its names are embedded by now
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Still working')"
        )
        again = page.locator("#status").inner_text()
        held.pop().continue_()
        wait_mask(page)
    assert "the first mask named with lvis (1203) embeds all its class names once" in status
    assert again == "Still working (the server answers one click at a time)…"
