"""Search by a region on the web page, in a real headless Chromium at phone width against the real stack: the
shopper's photo shows two products side by side; dragging a box over one of them re-runs the search with
that region (`crop`), and the results follow the box."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from .test_web_ui import PHONE, _open, browser, screenshot, searches, upload, wait_search  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_products(clothing_test_photos, tmp_path_factory) -> Path:
    """A shoe (left half) and a hat (right half) in one photo, as a shopper's snapshot might show them."""
    left = Image.open(clothing_test_photos["shoes"][3]).convert("RGB")
    right = Image.open(clothing_test_photos["hat"][3]).convert("RGB")
    height = 360
    left = left.resize((height * left.width // left.height, height))
    right = right.resize((height * right.width // right.height, height))
    assert abs(left.width - right.width) <= 2, "pick photos of the same shape: the halves are the products"
    both = Image.new("RGB", (left.width * 2, height), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    path = tmp_path_factory.mktemp("web-region") / "shoe-and-hat.jpg"
    both.save(path, "JPEG", quality=92)
    return path


def drag(page, x0: float, y0: float, x1: float, y1: float) -> None:
    """Drags over the query photo from (x0, y0) to (x1, y1), fractions of the photo as displayed."""
    box = page.eval_on_selector("#query-image", """img => {
        const r = img.getBoundingClientRect(), s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
        const w = img.naturalWidth * s, h = img.naturalHeight * s;
        return {left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h};
    }""")
    page.mouse.move(box["left"] + x0 * box["width"], box["top"] + y0 * box["height"])
    page.mouse.down()
    page.mouse.move(box["left"] + (x0 + x1) / 2 * box["width"], box["top"] + (y0 + y1) / 2 * box["height"], steps=4)
    page.mouse.move(box["left"] + x1 * box["width"], box["top"] + y1 * box["height"], steps=4)
    page.mouse.up()


def sent_crop(page) -> str | None:
    """The crop of the last search the page sent (body[data-crop]; None: the whole photo)."""
    return page.evaluate("document.body.dataset.crop || null")


def top_categories(page, n: int = 3) -> list[str]:
    return page.eval_on_selector_all("#grid .card:not(.skeleton)", "cs => cs.map(c => c.dataset.category)")[:n]


def test_dragging_a_box_searches_that_region_and_the_results_follow_it(browser, indexed_stack, two_products):
    context, page = _open(browser, indexed_stack.http_url, PHONE, has_touch=False)
    try:
        page.goto("/")
        upload(page, str(two_products))
        assert sent_crop(page) is None  # the whole photo first
        page.wait_for_selector("#region-hint:not([hidden])")
        before = searches(page)
        drag(page, 0.52, 0.02, 0.98, 0.98)  # the hat
        wait_search(page, before)
        assert page.is_visible(".region-box") and page.is_visible("#clear-region")
        x, y, w, h = map(float, sent_crop(page).split(","))
        assert abs(x - 0.52) < 0.02 and abs(w - 0.46) < 0.02 and y < 0.05 and h > 0.9
        hat_region = top_categories(page, 10)
        assert "hat" in hat_region[:3], hat_region
        screenshot(page, "web-ui-region-phone.png", full_page=True)

        before = searches(page)
        drag(page, 0.02, 0.02, 0.48, 0.98)  # the shoe: the results follow the box
        wait_search(page, before)
        shoe_region = top_categories(page, 10)
        assert float(sent_crop(page).split(",")[0]) < 0.05 and "shoes" in shoe_region[:3], shoe_region
        assert shoe_region != hat_region

        before = searches(page)
        page.click("#clear-region")  # back to the whole photo
        wait_search(page, before)
        assert sent_crop(page) is None and not page.is_visible(".region-box")
        assert page.is_hidden("#clear-region")
        assert not page.problems, page.problems
    finally:
        context.close()
