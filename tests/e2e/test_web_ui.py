"""The web page (served by the gateway at `/`) driven in a real headless Chromium against the real stack.

Playwright uses Debian's Chromium (/usr/bin/chromium, installed by scripts/setup.sh); `playwright install`
is never needed. Screenshots land in test-artifacts/ (gitignored).
"""
from __future__ import annotations

import collections
import io
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 90_000   # the first search on a busy 2-core machine embeds on CPU


def _no_browser(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (browser tests must run in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _no_browser(f"{CHROMIUM} is missing (scripts/setup.sh installs Debian's chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser, base_url: str, viewport: dict, **options):
    context = browser.new_context(viewport=viewport, base_url=base_url, **options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # Turn on file-chooser interception now: expect_file_chooser() enables it without waiting for
    # Chromium's reply, so on a loaded machine the key press could otherwise win the race.
    page.on("filechooser", lambda _chooser: None)
    page.problems = []   # uncaught exceptions and CSP violations
    page.on("pageerror", lambda exc: page.problems.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: page.problems.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    return context, page


@pytest.fixture
def page(browser, indexed_stack):
    context, page = _open(browser, indexed_stack.http_url, DESKTOP)
    page.goto("/")
    yield page
    problems = page.problems
    context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def shoe_photo(clothing_test_photos, tmp_path_factory) -> Path:
    """A shoes test photo re-encoded to bytes no other test uploads: its first search is a cache miss."""
    source = clothing_test_photos["shoes"][7]
    path = tmp_path_factory.mktemp("web-ui") / "my-sneaker.jpg"
    Image.open(source).convert("RGB").save(path, "JPEG", quality=91)
    return path


# ---------------------------------------------------------------------------------------------- helpers

def searches(page) -> int:
    return int(page.evaluate("document.body.dataset.searches || '0'"))


def wait_search(page, before: int) -> None:
    """Waits until the page has finished a search started after `before` finished ones."""
    page.wait_for_function("n => Number(document.body.dataset.searches || 0) > n", arg=before)


def upload(page, files) -> None:
    before = searches(page)
    page.set_input_files("#file-input", files)
    wait_search(page, before)


def cards(page) -> list[dict]:
    return page.eval_on_selector_all("#grid .card:not(.skeleton)", """cards => cards.map(c => ({
        id: c.dataset.id, category: c.dataset.category,
        title: c.querySelector('.card-title').textContent,
        alt: c.querySelector('img') ? c.querySelector('img').alt : null,
        score: c.querySelector('.score-text').textContent,
        top: c.getBoundingClientRect().top, left: c.getBoundingClientRect().left}))""")


def wait_images(page, selector: str = "#grid .card img", first: int = 4) -> None:
    """Waits until the first `first` images matching `selector` have loaded (decoded, non-empty)."""
    page.wait_for_function("""([sel, n]) => {
        const imgs = Array.from(document.querySelectorAll(sel)).slice(0, n);
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
    }""", arg=[selector, first])


def screenshot(page, name: str, **options) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), **options)
    return path


def error_text(page) -> str:
    page.wait_for_selector("#error:not([hidden])")
    return page.inner_text("#error-text")


# ------------------------------------------------------------------------------------------------ tests

def test_page_is_served_with_security_headers(stack):
    with httpx.Client(base_url=stack.http_url, timeout=30) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        for asset in ("/static/app.js", "/static/api.js", "/static/style.css", "/static/favicon.svg"):
            response = http.get(asset)
            assert response.status_code == 200, asset
            assert response.headers["cache-control"] == "no-cache", asset
        assert "javascript" in http.get("/static/app.js").headers["content-type"]


def test_keyboard_upload_shows_look_alike_products_then_a_cache_hit(page, shoe_photo):
    assert "Lookalike" in page.title()
    assert page.is_visible("#empty")
    # The drop zone is a focusable button reached with Tab; Enter opens the file picker.
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "dropzone":
            break
    assert page.evaluate("document.activeElement.id") == "dropzone"
    assert page.evaluate("getComputedStyle(document.activeElement).boxShadow") != "none"   # visible focus
    before = searches(page)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(shoe_photo))
    wait_search(page, before)

    shown = cards(page)
    assert len(shown) >= 5, page.inner_text("main")
    top5 = collections.Counter(c["category"] for c in shown[:5])
    assert top5["shoes"] >= 3, top5
    assert all(c["title"] and c["alt"] for c in shown)
    assert all(re.fullmatch(r"\d{1,3}% match", c["score"]) for c in shown)
    assert len({c["top"] for c in shown[:3]}) == 1, "desktop grid should have several columns"
    assert page.is_visible("#query-figure") and page.inner_text("#query-caption") == "my-sneaker.jpg"
    assert re.search(r"\d+ products?", page.inner_text("#summary"))
    assert re.fullmatch(r"in \d+(\.\d)? m?s", page.inner_text("#took"))
    assert page.is_hidden("#cache-badge")
    assert page.is_hidden("#prediction")     # no classifier in this stack: nothing is shown
    assert page.is_visible("#filters")
    wait_images(page)
    wait_images(page, "#query-image", 1)
    screenshot(page, "web-ui-desktop.png")

    upload(page, str(shoe_photo))
    assert page.is_visible("#cache-badge")
    assert "Served from cache" in page.inner_text("#cache-badge")
    assert [c["id"] for c in cards(page)] == [c["id"] for c in shown]


def test_more_like_this_shows_that_product_as_the_query(page, shoe_photo):
    upload(page, str(shoe_photo))
    first = cards(page)
    chosen = first[1]
    before = searches(page)
    page.locator("#grid .card").nth(1).get_by_role("button", name=re.compile("More like")).click()
    wait_search(page, before)
    after = cards(page)
    assert after and chosen["id"] not in [c["id"] for c in after]
    assert [c["id"] for c in after] != [c["id"] for c in first]
    assert page.inner_text("#query-caption") == chosen["title"]
    assert page.inner_text("#query-kicker").startswith("More like this")
    assert page.get_attribute("#query-image", "src").startswith("/v1/products/")
    wait_images(page, "#query-image", 1)
    assert "similar=" in page.url
    assert page.evaluate("document.activeElement.id") == "results-title"   # focus is not lost

    before = searches(page)
    page.go_back()
    wait_search(page, before)
    assert page.inner_text("#query-kicker") == "Your photo"
    assert [c["id"] for c in cards(page)] == [c["id"] for c in first]


def test_category_chip_and_price_range_rerun_the_search(page, shoe_photo):
    upload(page, str(shoe_photo))
    categories = [c["category"] for c in cards(page)]
    chips = page.eval_on_selector_all("#chips .chip", "cs => cs.map(c => c.dataset.category)")
    assert chips[0] == "" and set(chips[1:]) >= set(categories)
    # A category other than the top one when the results hold several: the filter must bring in new products.
    wanted = next((c for c in categories if c != categories[0]), categories[0])
    before = searches(page)
    page.click(f"#chips .chip[data-category='{wanted}']")
    wait_search(page, before)
    filtered = cards(page)
    assert filtered and all(c["category"] == wanted for c in filtered), filtered
    assert page.get_attribute(f"#chips .chip[data-category='{wanted}']", "aria-pressed") == "true"
    assert page.get_attribute("#chips .chip[data-category='']", "aria-pressed") == "false"

    before = searches(page)
    page.click("#chips .chip[data-category='']")
    wait_search(page, before)
    assert page.get_attribute("#chips .chip[data-category='']", "aria-pressed") == "true"

    # The catalogue has no prices: any price range leaves nothing, and clearing it brings results back.
    page.fill("#min-price", "5")
    page.fill("#max-price", "50")
    before = searches(page)
    page.get_by_role("button", name="Apply").click()
    wait_search(page, before)
    assert cards(page) == []
    assert "No products match" in page.inner_text("#summary")
    before = searches(page)
    page.click("#clear-price")
    wait_search(page, before)
    assert len(cards(page)) >= 5


def test_unreadable_uploads_get_a_human_sentence(page, shoe_photo):
    upload(page, {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture at all\n"})
    assert "That file isn't a picture we can read" in error_text(page)
    assert page.is_visible("#empty") and page.is_hidden("#query-figure")

    # After a good search, a bad upload keeps the results on screen and explains.
    upload(page, str(shoe_photo))
    assert page.is_hidden("#error")
    good = cards(page)
    upload(page, {"name": "holiday.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff garbage"})
    assert "That file isn't a picture we can read" in error_text(page)
    assert [c["id"] for c in cards(page)] == [c["id"] for c in good]
    assert page.inner_text("#query-caption") == "my-sneaker.jpg"


def test_server_and_network_failures_get_human_sentences(page, shoe_photo):
    def answer(status, code, message, headers=None):
        return lambda route: route.fulfill(status=status, content_type="application/json", headers=headers or {},
                                           body=json.dumps({"error": {"code": code, "message": message}}))

    cases = [
        (answer(503, "UNAVAILABLE", "embedder is unavailable: starting"), "starting up", True),
        (answer(413, "RESOURCE_EXHAUSTED", "request body of 20000000 bytes is above the limit of 10485760 bytes"),
         "too large", False),
        (answer(429, "RESOURCE_EXHAUSTED", "rate limit", {"Retry-After": "3"}), "in 3 seconds", True),
        (lambda route: route.abort("internetdisconnected"), "couldn't reach Lookalike", True),
    ]
    for handler, sentence, retry in cases:
        page.route("**/v1/search", handler)
        upload(page, str(shoe_photo))
        assert sentence in error_text(page)
        assert page.is_visible("#retry") == retry
        page.unroute("**/v1/search")
    # "Try again" after the service is back runs the search for real.
    page.route("**/v1/search", answer(503, "UNAVAILABLE", "search is unavailable"))
    upload(page, str(shoe_photo))
    page.unroute("**/v1/search")
    before = searches(page)
    page.click("#retry")
    wait_search(page, before)
    assert page.is_hidden("#error") and len(cards(page)) >= 5


def test_predicted_category_is_shown_when_a_classifier_answers(page, shoe_photo):
    page.route("**/v1/classify", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"predictions": [{"label": "shoes", "probability": 0.93},
                                         {"label": "hat", "probability": 0.04}]})))
    upload(page, str(shoe_photo))
    page.wait_for_selector("#prediction:not([hidden])")
    assert page.inner_text("#prediction-name") == "Shoes"
    assert page.inner_text("#prediction-prob") == "93%"
    before = searches(page)
    page.click("#prediction-filter")
    wait_search(page, before)
    assert all(c["category"] == "shoes" for c in cards(page))
    assert page.get_attribute("#chips .chip[data-category='shoes']", "aria-pressed") == "true"


def test_phone_layout(browser, indexed_stack, shoe_photo):
    context, page = _open(browser, indexed_stack.http_url, PHONE, is_mobile=True, has_touch=True)
    try:
        page.goto("/")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        upload(page, str(shoe_photo))
        shown = cards(page)
        assert len(shown) >= 5
        assert shown[0]["top"] == shown[1]["top"] and shown[2]["top"] > shown[0]["top"], "two columns"
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "no sideways scrolling"
        wait_images(page, "#query-image", 1)
        wait_images(page, first=2)
        screenshot(page, "web-ui-phone.png")
        page.evaluate("window.scrollTo(0, document.querySelector('#results-title').offsetTop - 70)")
        wait_images(page, first=4)
        screenshot(page, "web-ui-phone-results.png")
        assert not page.problems, page.problems
    finally:
        context.close()
