"""The page in a real browser: Playwright driving Debian's headless Chromium.

Needs ``/usr/bin/chromium`` and the ``playwright`` Python package (``.ci/install-browser.sh``).
When either is missing the test fails under CI (the ``CI`` environment variable is set) and is
skipped elsewhere. The screenshot goes to ``test-artifacts/app.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def app_url(tmp_path_factory):
    settings, service = tiny_app_service(tmp_path_factory.mktemp("app-browser"), port=free_port())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(settings.uploads_dir))  # create_app sets it; restored afterwards
        web = create_app(settings, service)
        url = web.launch(block=False)
        yield url
        web.close()


@pytest.mark.browser
def test_pick_an_example_move_a_slider_run_and_see_the_result(app_url):
    sync_api = require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1500})
            page.set_default_timeout(TIMEOUT_MS)
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(app_url)
            page.get_by_text("SoftREPA image editor").first.wait_for()
            page.locator("#model-status").get_by_text("tiny-random-sd3").first.wait_for()

            # the copy button starts the target from the source wording
            page.locator("#source-prompt textarea").fill("a cat on a sofa")
            page.get_by_role("button", name="Copy the source prompt into the target").click()
            target = page.locator("#target-prompt textarea")
            sync_api.expect(target).to_have_value("a cat on a sofa")

            # pick the first example: it fills the image and both prompts
            page.locator("#examples").locator("tbody tr, .gallery-item, button").first.click()
            sync_api.expect(target).not_to_have_value("a cat on a sofa", timeout=TIMEOUT_MS)
            page.locator("#source-image img").first.wait_for()

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
            assert not page_errors, page_errors
        finally:
            browser.close()
