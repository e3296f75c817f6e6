"""The page of a fake-device sweep over 2 clocks x 2 TP x 2 batches x 2 workloads renders
in headless Chromium with every figure (issue 15's Done-when): a screenshot that is not
blank, every figure laid out at a non-zero size, no console or page error, no request
beyond the file itself.

Chromium is Debian's (``apt-get install chromium``), driven by playwright without its own
browser download. Without it the test is skipped, unless ``GREENLLM_REQUIRE_BROWSER`` is
set (as CI sets it), where a missing browser fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Request, Route, sync_playwright
from sweep_reports import SIXTEEN_POINT_FIGURES, sixteen_point_report

from pytest_greenllm.cli import main

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_ENV = "GREENLLM_REQUIRE_BROWSER"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium; skipped where it is missing and not required."""
    if not CHROMIUM.exists():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {CHROMIUM} is missing: apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); {REQUIRE_ENV}=1 makes that a failure")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def sweep_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML page of the 16-point fake-device sweep."""
    report = sixteen_point_report(tmp_path_factory)
    page = report.parent / "browser.html"
    assert main(["report", str(report), "--html", str(page)]) == 0
    return page


def test_the_sixteen_point_page_renders_every_figure(
    browser: Browser, sweep_page: Path, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    fetched: list[str] = []

    def only_the_file(route: Route, request: Request) -> None:
        if request.url == sweep_page.as_uri():
            route.continue_()
        else:
            fetched.append(request.url)
            route.abort()

    page.route("**/*", only_the_file)
    page.goto(sweep_page.as_uri(), wait_until="load")

    sizes: dict[str, Any] = page.evaluate(
        """() => Object.fromEntries(
            Array.from(document.querySelectorAll('figure.greenllm-figure')).map(f => {
                const svg = f.querySelector('svg');
                const box = f.getBoundingClientRect();
                const art = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                return [f.id, [box.width, box.height, art.width, art.height]];
            }))"""
    )
    assert list(sizes) == list(SIXTEEN_POINT_FIGURES)
    for figure_id, (width, height, svg_width, svg_height) in sizes.items():
        assert width > 300 and height > 200, (figure_id, width, height)
        assert svg_width > 300 and svg_height > 200, (figure_id, svg_width, svg_height)
    assert page.locator("#fake-banner").is_visible()
    assert page.locator("#rq4-table tbody tr").count() == 6  # 2 workloads x 3 objectives
    assert page.locator("#fingerprint tbody tr").count() > 3

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    from matplotlib.image import imread

    pixels = np.asarray(imread(shot))[..., :3].mean(axis=2)
    assert pixels.shape[0] > 5000  # the whole page, every figure below the first screen
    assert pixels.std() > 0.05, "the screenshot is blank"
    assert (pixels < 0.9).mean() > 0.02, "almost nothing but background was drawn"
    assert errors == [], errors
    assert fetched == [], fetched
    page.close()
