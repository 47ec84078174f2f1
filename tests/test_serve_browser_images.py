"""The page in a real browser with images it cannot show itself: a TIFF is refused before
upload, a WebP turned by its EXIF orientation is drawn as the server turned it, and an image the
server dropped from its cache is uploaded again."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser_helpers import (
    browser_page,
    drag_box,
    open_page,
    tinted,
    upload_sample,
    wait_mask,
)
from ovsam.assets import SAMPLE_PHOTO

pytestmark = pytest.mark.browser


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


def test_an_image_the_server_dropped_is_uploaded_again(server_url: str) -> None:
    """Other users' uploads push an image out of the shared cache: every later click showed
    `unknown_image` until the user uploaded the file again by hand."""
    import urllib.request

    with browser_page() as page:
        open_page(page, server_url)
        is_upload = lambda r: r.url.endswith("/v1/images") and r.request.method == "POST"  # noqa: E731
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
