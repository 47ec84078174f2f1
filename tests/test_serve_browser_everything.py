"""The page's Everything button: every object of the sample photo tinted (and named)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from browser_helpers import browser_page, open_page, running_server, screenshot, upload_sample
from tiny_clip import TINY_CLIP

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def labelled_server_url(mobilesam_model: torch.nn.Module) -> Iterator[str]:
    """MobileSAM with a tiny random CLIP recognizer (labels meaningless, but shown)."""
    from ovsam.clip.model import CLIP
    from ovsam.predictor import SamPredictor
    from ovsam.serve.engine import SegmentationEngine
    from ovsam.serve.recognition import ClipRecognizer

    torch.manual_seed(0)
    recognizer = ClipRecognizer(CLIP(TINY_CLIP), "tiny random test CLIP", templates="none")
    with running_server(
        SegmentationEngine(SamPredictor(mobilesam_model), "mobilesam", recognizer)
    ) as url:
        yield url


def everything_tinted(page: object) -> tuple[float, int]:
    """The fraction of the overlay tinted by "everything" masks, and their distinct colours."""
    return tuple(
        page.evaluate(
            """() => {
              const c = document.getElementById('overlay');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0; const colours = new Set();
              for (let i = 0; i < d.length; i += 4) if (d[i + 3] === 110) {
                n++; colours.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
              }
              return [n / (c.width * c.height), colours.size];
            }"""
        )
    )


def test_everything_tints_every_object_names_them_and_clear_removes_them(
    labelled_server_url: str,
) -> None:
    with browser_page() as page:
        open_page(page, labelled_server_url)
        page.select_option("#vocabulary", "coco")
        upload_sample(page)
        page.click("#everything")
        page.wait_for_function(  # 256 clicks: 15-20 s on a busy 2-core machine
            "/^\\d+ masks in \\d+ ms$/.test(document.getElementById('status').textContent)",
            timeout=180_000,
        )
        share, colours = everything_tinted(page)
        masks = page.evaluate("state.everything.answer.masks.length")
        score = page.locator("#score").inner_text()
        labels = [row for row in page.locator("#labels").inner_text().splitlines() if row.strip()]
        screenshot(page, "serve_browser_everything.png")
        assert masks >= 3 and score == f"{masks} masks (segment everything)"
        assert share > 0.5 and colours >= 3, (share, colours)
        assert len(labels) == masks and all(" px)" in row for row in labels)
        page.click("#clear")
        assert everything_tinted(page)[0] == 0 and page.locator("#score").inner_text() == (
            "No mask yet."
        )
