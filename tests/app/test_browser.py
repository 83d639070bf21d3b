"""The page in a real browser: Playwright driving Debian's headless Chromium.

Needs ``/usr/bin/chromium`` and the ``playwright`` Python package (``.ci/install-browser.sh``).
When either is missing the test fails under CI (the ``CI`` environment variable is set) and is
skipped elsewhere. The screenshots go to ``test-artifacts/app.png`` and ``test-artifacts/app-mask.png``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.testing import free_port, tiny_app_service
from app.ui import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 60_000  # a loaded shared machine: page load and a tiny edit take seconds, not minutes


def require_browser():
    """The Playwright module, or fail (CI) / skip (elsewhere) with what to install."""
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} is missing")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
        problems.append("the playwright Python package is missing")
    if problems:
        message = f"browser test needs Chromium and Playwright: {' and '.join(problems)}; run .ci/install-browser.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_api


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(URL, service) of the app on the tiny pipeline."""
    settings, service = tiny_app_service(tmp_path_factory.mktemp("app-browser"), port=free_port())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(settings.uploads_dir))  # create_app sets it; restored afterwards
        web = create_app(settings, service)
        url = web.launch(block=False)
        yield url, service
        web.close()


@pytest.fixture(scope="module")
def app_url(served) -> str:
    return served[0]


@contextlib.contextmanager
def loaded_page(app_url: str):
    """(sync_api, page) with the app loaded and its model ready; page errors are collected in
    ``page.errors`` (checked by the test)."""
    sync_api = require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1500})
            page.set_default_timeout(TIMEOUT_MS)
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.goto(app_url)
            page.get_by_text("SoftREPA image editor").first.wait_for()
            page.locator("#model-status").get_by_text("tiny-random-sd3").first.wait_for()
            yield sync_api, page
        finally:
            browser.close()


def pick_the_first_example(sync_api, page) -> None:
    """Click the first example: it fills the image and both prompts."""
    target = page.locator("#target-prompt textarea")
    before = target.input_value()
    page.locator("#examples").locator("tbody tr, .gallery-item, button").first.click()
    sync_api.expect(target).not_to_have_value(before, timeout=TIMEOUT_MS)
    page.locator("#source-image img").first.wait_for()


@pytest.mark.browser
def test_pick_an_example_move_a_slider_run_and_see_the_result(app_url):
    with loaded_page(app_url) as (sync_api, page):
        # the copy button starts the target from the source wording
        page.locator("#source-prompt textarea").fill("a cat on a sofa")
        page.get_by_role("button", name="Copy the source prompt into the target").click()
        target = page.locator("#target-prompt textarea")
        sync_api.expect(target).to_have_value("a cat on a sofa")

        pick_the_first_example(sync_api, page)

        # move the edit-strength slider: a few steps keep the run short
        strength = page.locator("#n-max input[type=range]")
        strength.fill("4")
        sync_api.expect(page.locator("#n-max input[type=number]")).to_have_value("4")

        page.locator("#edit-button").click()
        page.locator("#summary").get_by_text("Done in").wait_for()
        result = page.locator("#result img")
        result.wait_for()
        assert result.get_attribute("src")
        page.locator("#history img").first.wait_for()  # the run entered the session history
        assert "T 50, n_max 4" in page.locator("#summary").inner_text()
        assert page.locator(".toast-body.error").count() == 0
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        assert not page.errors, page.errors


@pytest.mark.browser
def test_upload_a_mask_edit_inside_it_and_see_the_region(served, tmp_path):
    url, service = served
    with Image.open(service.examples()[0].image) as image:
        width, height = image.size
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 2] = 255  # white = may change: the left half
    mask_file = tmp_path / "left-half.png"
    Image.fromarray(mask).save(mask_file)

    with loaded_page(url) as (sync_api, page):
        pick_the_first_example(sync_api, page)
        # nothing drawn: choose "drawn" and upload the mask file instead
        page.locator("#mask-mode").get_by_label("drawn").check()
        page.locator("#mask-image input[type=file]").set_input_files(str(mask_file))
        page.locator("#mask-image img").first.wait_for()
        page.locator("#n-max input[type=range]").fill("3")
        sync_api.expect(page.locator("#n-max input[type=number]")).to_have_value("3")

        page.locator("#edit-button").click()
        page.locator("#summary").get_by_text("Done in").wait_for()
        assert "drawn mask: 50.0 % of the image, pasted back" in page.locator("#summary").inner_text()
        region = page.locator("#region img")
        region.wait_for()
        assert region.get_attribute("src")
        # the mask is among the downloads (the list shows a name's stem and its ".png" apart)
        sync_api.expect(page.locator("#png-files")).to_contain_text("-tokens.mask")
        assert page.locator(".toast-body.error").count() == 0
        page.screenshot(path=str(ARTIFACTS / "app-mask.png"), full_page=True)
        assert not page.errors, page.errors
