"""The gateway calibrates the "no close match" threshold from the catalogue's own photos (setting `auto`, the
default) on the shared indexed stack: searches then report it, a photo of nothing in the catalogue (noise) scores
below it, a catalogue photo above, /metrics shows it, and the page says "No close match" for the noise photo only."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .test_web_ui import DESKTOP, _open, browser, upload  # noqa: F401

pytestmark = pytest.mark.e2e

CALIBRATION_DEADLINE_S = 180.0


@pytest.fixture(scope="module")
def noise_photo(tmp_path_factory) -> Path:
    """Coloured noise: no product looks like it."""
    pixels = np.random.default_rng(14).integers(0, 256, size=(320, 320, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("weak-match") / "noise.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def catalogue_photo(small_catalogue) -> Path:
    return sorted((small_catalogue / "shoes").iterdir())[0]


def search(http: httpx.Client, photo: Path) -> dict:
    """A search whose answer carries a calibrated threshold, polled until the gateway has one."""
    give_up = time.monotonic() + CALIBRATION_DEADLINE_S
    while True:
        response = http.post("/v1/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                             data={"top_k": "5"})
        assert response.status_code == 200, response.text
        body = response.json()
        if body["weak_match_score"] > 0:
            return body
        assert time.monotonic() < give_up, f"no weak_match_score after {CALIBRATION_DEADLINE_S:.0f} s"
        time.sleep(1.0)  # polling the background calibration, with the deadline above


def test_searches_report_the_calibrated_threshold_and_noise_falls_below_it(indexed_stack, noise_photo,
                                                                            catalogue_photo):
    with httpx.Client(base_url=indexed_stack.http_url, timeout=60) as http:
        noise = search(http, noise_photo)
        assert 0 < noise["weak_match_score"] < 1
        assert noise["results"][0]["score"] < noise["weak_match_score"], noise
        known = search(http, catalogue_photo)
        assert known["results"][0]["score"] > known["weak_match_score"], known
        metrics = http.get("/metrics").text
    gauge = [line for line in metrics.splitlines() if line.startswith("lookalike_gateway_weak_match_score ")]
    assert gauge and float(gauge[0].split()[1]) == pytest.approx(known["weak_match_score"], abs=1e-6)


def test_the_page_says_no_close_match_for_noise_only(browser, indexed_stack, noise_photo, catalogue_photo):
    with httpx.Client(base_url=indexed_stack.http_url, timeout=60) as http:
        search(http, noise_photo)  # calibrated before the page searches
    context, page = _open(browser, indexed_stack.http_url, DESKTOP)
    try:
        page.goto("/")
        upload(page, str(noise_photo))
        assert page.evaluate("document.body.dataset.closeMatch") == "none"
        assert page.is_visible("#weak") and "No close match" in page.inner_text("#weak")
        upload(page, str(catalogue_photo))
        assert page.evaluate("document.body.dataset.closeMatch") == "yes"
        assert not page.is_visible("#weak")
        assert not page.problems, page.problems
    finally:
        context.close()
