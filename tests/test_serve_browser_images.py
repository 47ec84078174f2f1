"""The page in a real browser with images it cannot show itself: a TIFF is refused before
upload, a WebP turned by its EXIF orientation is drawn as the server turned it, a thin strip
gets a canvas one can click on, and an image the server dropped from its cache is uploaded
again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from browser_helpers import (
    browser_page,
    drag_box,
    open_page,
    running_server,
    tinted,
    upload_sample,
    wait_mask,
)
from ovsam.assets import SAMPLE_PHOTO

pytestmark = pytest.mark.browser


def is_upload(response: object) -> bool:
    return response.url.endswith("/v1/images") and response.request.method == "POST"


def test_tiff_is_refused_in_the_page_before_upload(server_url: str, tmp_path: Path) -> None:
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


def test_a_turned_webp_is_shown_as_the_server_turned_it(server_url: str, tmp_path: Path) -> None:
    """Chromium ignores WebP's EXIF orientation: the page showed the landscape grid stretched
    over the server's portrait one. It now draws the server's upright picture."""
    from turned_images import turned_image_files

    path = tmp_path / "turned.webp"
    path.write_bytes(turned_image_files()["webp-exif"][0])
    with browser_page() as page:
        open_page(page, server_url)
        upload_sample(page, path)
        drawn = page.evaluate(
            """() => {
              const c = document.getElementById('image');
              const px = (x, y) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);
              return {w: c.width, h: c.height, top: px(c.width / 2, 2),
                      bottom: px(c.width / 2, c.height - 3)};
            }"""
        )
    assert drawn["h"] == 2 * drawn["w"]  # portrait, as the server's 20x40
    assert drawn["top"][0] > 200 and drawn["top"][1] < 60  # the red side, turned to the top
    assert drawn["bottom"][0] < 60


def test_a_thin_strip_gets_a_canvas_one_can_click_on(server_url: str, tmp_path: Path) -> None:
    """A 4000x10 image was drawn 2 pixels high (a 40000x10 one: 0). Each side of the canvas is
    now at least 32 pixels, each axis scaled on its own, and clicks map to the image's pixels."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (4000, 10), (120, 120, 120)).save(strip)
    with browser_page() as page:
        open_page(page, server_url)
        upload_sample(page, strip)
        canvas = page.locator("#overlay").bounding_box()
        page.mouse.click(canvas["x"] + canvas["width"] / 4, canvas["y"] + canvas["height"] * 3 / 4)
        point = page.evaluate("[state.prompts[0].x, state.prompts[0].y]")
        wait_mask(page)
    assert canvas["height"] >= 32 and canvas["width"] > 500
    css_pixels = [canvas["width"] / 4000, canvas["height"] / 10]  # per image pixel
    assert abs(point[0] - 1000) * css_pixels[0] <= 1 and abs(point[1] - 7.5) * css_pixels[1] <= 1


def test_an_image_the_server_dropped_is_uploaded_again(server_url: str) -> None:
    """Other users' uploads push an image out of the shared cache: every later click showed
    `unknown_image` until the user uploaded the file again by hand."""
    import urllib.request

    with browser_page() as page:
        open_page(page, server_url)
        with page.expect_response(is_upload) as upload:
            page.set_input_files("#file", str(SAMPLE_PHOTO))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Ready')")
        dropped = upload.value.json()["image_id"]
        request = urllib.request.Request(f"{server_url}/v1/images/{dropped}", method="DELETE")
        assert urllib.request.urlopen(request).status == 204
        with page.expect_response(is_upload) as again:
            drag_box(page)
            wait_mask(page)
        assert again.value.json()["image_id"] != dropped
        assert tinted(page) > 0.05


def test_another_image_opened_while_a_dropped_one_is_uploaded_again_keeps_its_click(
    mobilesam_model: torch.nn.Module, tmp_path: Path
) -> None:
    """The failed answer's clean-up ran after the (seconds long) upload, against the image
    opened meanwhile: its click was wiped and the old image's error shown."""
    import time
    import urllib.request

    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine

    class SlowOnce(SegmentationEngine):
        slow = False

        def embed(self, image: np.ndarray) -> tuple:
            if self.slow:
                self.slow = False
                time.sleep(3)  # the re-upload of the dropped image
            return super().embed(image)

    engine = SlowOnce(SamPredictor(mobilesam_model), "mobilesam")
    other = tmp_path / "b.png"
    Image.fromarray(np.full((200, 300, 3), 120, np.uint8)).save(other)
    with running_server(engine) as url, browser_page() as page:
        open_page(page, url)
        with page.expect_response(is_upload) as upload:
            page.set_input_files("#file", str(SAMPLE_PHOTO))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Ready')")
        request = f"{url}/v1/images/{upload.value.json()['image_id']}"
        urllib.request.urlopen(urllib.request.Request(request, method="DELETE"))
        engine.slow = True
        drag_box(page)  # unknown_image: uploaded again, slowly
        page.wait_for_function("document.getElementById('status').textContent.includes('again')")
        upload_sample(page, other)  # the user moves on meanwhile and clicks
        canvas = page.locator("#overlay").bounding_box()
        page.mouse.click(canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
        wait_mask(page)
        time.sleep(3.5)  # the slow upload is over: its clean-up must leave image B alone
        left = page.evaluate("[state.prompts.length, !!state.result, state.imageId]")
        status = page.locator("#status").inner_text()
    assert left[:2] == [1, True] and status.startswith("Mask in"), (left, status)
