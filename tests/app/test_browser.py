"""The page in a real browser: Playwright driving Debian's headless Chromium.

Needs ``/usr/bin/chromium`` and the ``playwright`` Python package (``.ci/install-browser.sh``).
When either is missing the test fails under CI (the ``CI`` environment variable is set) and is
skipped elsewhere. The screenshots go to ``test-artifacts/app.png``, ``app-mask.png``, ``app-variations.png``,
``app-auto.png`` and ``app-phone.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.api import edit
from app.prompt_help import ShapesDescriber, ShapesInstructor
from app.service import EditorService
from app.testing import fast_controls, free_port, tiny_loader, tiny_settings
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
def served(tmp_path_factory, clip_dir):
    """(URL, service) of the app on the tiny pipeline, with the shapes model's prompt help (the
    examples are shapes-world pictures, which its classifier reads)."""
    settings = tiny_settings(tmp_path_factory.mktemp("app-browser"), port=free_port(), scorer=str(clip_dir))
    service = EditorService(settings, loader=tiny_loader(), prompt_helpers=(ShapesDescriber(), ShapesInstructor()))
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
def loaded_page(app_url: str, viewport: dict | None = None):
    """(sync_api, page) with the app loaded and its model ready; page errors are collected in
    ``page.errors`` (checked by the test)."""
    sync_api = require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1360, "height": 1500})
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


def half_mask_file(service, folder, half: str):
    """A mask PNG the size of the first example image, white (= may change) on its left or top half."""
    with Image.open(service.examples()[0].image) as image:
        width, height = image.size
    mask = np.zeros((height, width), np.uint8)
    if half == "left":
        mask[:, : width // 2] = 255
    elif half == "top":
        mask[: height // 2] = 255
    else:
        raise ValueError(f"half must be left or top, got {half!r}")
    path = folder / f"{half}-half.png"
    Image.fromarray(mask).save(path)
    return path


@pytest.mark.browser
def test_upload_a_mask_edit_inside_it_and_see_the_region(served, tmp_path):
    url, service = served
    mask_file = half_mask_file(service, tmp_path, "left")  # white = may change: the left half

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


def open_advanced(page) -> None:
    """Open the Advanced accordion (its controls, the seed box among them, are rendered only when open)."""
    page.get_by_text("Advanced", exact=True).click()
    page.locator("#seed input").wait_for()


def no_error_badges(page) -> None:
    """No error toast and no red "Error" status on any component."""
    assert page.locator(".toast-body.error").count() == 0
    assert page.get_by_text("Error", exact=True).count() == 0


@pytest.mark.browser
def test_variations_pick_one_then_edit_it_again(app_url):
    with loaded_page(app_url) as (sync_api, page):
        pick_the_first_example(sync_api, page)
        open_advanced(page)
        page.locator("#n-max input[type=range]").fill("3")
        page.locator("#variations input[type=range]").fill("3")
        sync_api.expect(page.locator("#variations input[type=number]")).to_have_value("3")
        page.locator("#edit-button").click()
        page.locator("#summary").get_by_text("Done in").wait_for()
        assert "3 variations, seeds 42, 43, 44" in page.locator("#summary").inner_text()
        candidates = page.locator("#candidates .thumbnail-item")
        sync_api.expect(candidates).to_have_count(3)
        assert page.locator("#candidates .caption-label").all_inner_texts() == ["seed 42", "seed 43", "seed 44"]

        # picking one makes it the result: the image, the PNG, the seed box, the history entry
        candidates.nth(1).click()
        sync_api.expect(page.locator("#png-files")).to_contain_text("seed43")
        sync_api.expect(page.locator("#seed input")).to_have_value("43")
        assert "seed43" in page.locator("#result img").get_attribute("src")
        sync_api.expect(page.locator("#history .caption-label").first).to_contain_text("seed 43 · 3 variations")

        # Edit again: the result becomes the source, its target prompt the source prompt
        target = page.locator("#target-prompt textarea").input_value()
        page.locator("#edit-again").click()
        sync_api.expect(page.locator("#source-prompt textarea")).to_have_value(target)
        sync_api.expect(page.locator("#source-image img")).to_have_attribute("src", re.compile("seed43"))
        page.locator("#target-prompt textarea").fill(target + " in the rain")
        page.locator("#variations input[type=range]").fill("1")
        page.locator("#edit-button").click()
        page.locator("#summary").get_by_text("· seed 43 ·").wait_for()  # one edit, with the picked seed
        sync_api.expect(page.locator("#candidates")).to_be_hidden()
        sync_api.expect(page.locator("#history .caption-label").first).to_contain_text("edited again")
        page.get_by_text("Seed and parameters used (JSON)").click()
        sync_api.expect(page.locator("#details")).to_contain_text("seed43")  # the parent: the picked candidate
        no_error_badges(page)
        page.screenshot(path=str(ARTIFACTS / "app-variations.png"), full_page=True)
        assert not page.errors, page.errors


@pytest.mark.browser
def test_auto_strength_shows_the_scored_candidates_and_another_can_be_taken(app_url):
    with loaded_page(app_url) as (sync_api, page):
        pick_the_first_example(sync_api, page)
        page.locator("#n-max input[type=range]").fill("10")
        page.locator("#auto-strength input").check()
        page.locator("#edit-button").click()
        page.locator("#summary").get_by_text("Auto strength:").wait_for()
        candidates = page.locator("#candidates .thumbnail-item")
        sync_api.expect(candidates).to_have_count(4)
        captions = page.locator("#candidates .caption-label").all_inner_texts()
        assert [int(re.search(r"n(\d+) ·", c).group(1)) for c in captions] == [7, 8, 10, 12]
        picked = [index for index, caption in enumerate(captions) if caption.startswith("★ ")]
        assert len(picked) == 1 and all(re.search(r" · -?\d+\.\d/\d+$", c) for c in captions)  # the two scores
        assert f"nmax{[7, 8, 10, 12][picked[0]]}" in page.locator("#result img").get_attribute("src")

        # another candidate: it becomes the result, and the controls take its setting (Auto off)
        other = 0 if picked[0] != 0 else 1
        n_max = [7, 8, 10, 12][other]
        candidates.nth(other).click()
        sync_api.expect(page.locator("#png-files")).to_contain_text(f"nmax{n_max}")
        assert f"nmax{n_max}" in page.locator("#result img").get_attribute("src")
        sync_api.expect(page.locator("#n-max input[type=number]")).to_have_value(str(n_max))
        sync_api.expect(page.locator("#auto-strength input")).not_to_be_checked()
        no_error_badges(page)
        page.screenshot(path=str(ARTIFACTS / "app-auto.png"), full_page=True)
        assert not page.errors, page.errors


@pytest.mark.browser
def test_replay_a_result_png_into_the_controls(served, tmp_path):
    url, service = served
    mask_file = half_mask_file(service, tmp_path, "top")
    example = service.examples()[0]
    controls = fast_controls(source_prompt=example.source_prompt, target_prompt="a replayed target prompt", seed=17,
                             n_max=2, tar_cfg=6.5, mask_mode="drawn")
    made = edit(service, example.image, controls, session="made-elsewhere", mask=str(mask_file))
    foreign = tmp_path / "foreign.png"
    Image.new("RGB", (32, 32)).save(foreign)

    with loaded_page(url) as (sync_api, page):
        open_advanced(page)
        page.locator("#replay input[type=file]").set_input_files(made.final.path)
        sync_api.expect(page.locator("#replay-note")).to_contain_text("Replayed")
        sync_api.expect(page.locator("#target-prompt textarea")).to_have_value("a replayed target prompt")
        sync_api.expect(page.locator("#source-prompt textarea")).to_have_value(example.source_prompt)
        sync_api.expect(page.locator("#seed input")).to_have_value("17")
        sync_api.expect(page.locator("#n-max input[type=number]")).to_have_value("2")
        assert page.locator("#mask-mode").get_by_label("drawn").is_checked()
        page.locator("#mask-image img").first.wait_for()  # the mask the PNG carries
        page.locator("#source-image img").first.wait_for()  # its input, found beside it on this server
        page.locator("#edit-button").click()
        page.locator("#summary").get_by_text("Done in").wait_for()
        assert "seed 17" in page.locator("#summary").inner_text()
        assert "drawn mask: 50.0 % of the image" in page.locator("#summary").inner_text()
        no_error_badges(page)

        page.locator("#replay input[type=file]").set_input_files(str(foreign))
        page.locator(".toast-body.error").get_by_text("was not written by softrepa-edit").wait_for()
        # a refused PNG leaves the box empty, ready for the next one, and the controls as they were
        sync_api.expect(page.locator("#replay")).not_to_contain_text("foreign.png")
        sync_api.expect(page.locator("#target-prompt textarea")).to_have_value("a replayed target prompt")
        page.locator("#target-prompt textarea").fill("changed by hand")
        page.locator("#replay input[type=file]").set_input_files(made.final.path)  # the next PNG goes in at once
        sync_api.expect(page.locator("#target-prompt textarea")).to_have_value("a replayed target prompt")
        assert not page.errors, page.errors


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.browser
def test_cancel_says_cancelled_and_leaves_the_controls_ready(served, tmp_path):
    from gradio_client import Client, handle_file

    url, service = served
    with loaded_page(url) as (sync_api, page):
        pick_the_first_example(sync_api, page)
        summary = page.locator("#summary")
        page_summary = summary.inner_text()
        assert "Cancelled" not in page_summary

        # an edit waiting for the device (another client's edit runs) is stopped as soon as it starts
        client = Client(url, verbose=False, download_files=str(tmp_path))
        other = client.submit(image=handle_file(service.examples()[0].image),
                              **dataclasses.asdict(fast_controls(steps=100, n_max=100, n_avg=4)), api_name="/edit")
        wait_for(lambda: service.running() == 1, 60, "the other client's edit did not start")
        page.locator("#n-max input[type=range]").fill("45")  # many steps: it is cancelled long before its end
        page.locator("#edit-button").click()
        time.sleep(1.0)  # waiting in the queue
        page.locator("#cancel-button").click()
        sync_api.expect(summary).to_contain_text("Cancelled")
        other.cancel()
        wait_for(lambda: service.running() == 0, 10, "an edit kept running")
        time.sleep(1.0)  # the page's edit has had its turn: started and stopped at once
        assert "Done in" not in summary.inner_text() and page.locator("#history img").count() == 0
        no_error_badges(page)

        # the page's own running edit: at once after Edit (the click that used to leave "Error" on the
        # outputs), then later in the run
        for pause in (0.0, 0.5):
            page.locator("#edit-button").click()
            wait_for(lambda: service.running() == 1, 60, "the edit did not start")
            time.sleep(pause)
            page.locator("#cancel-button").click()
            sync_api.expect(summary).to_contain_text("Cancelled")
            wait_for(lambda: service.running() == 0, 5, "the cancelled edit kept running")
            sync_api.expect(page.locator("#edit-button")).to_be_enabled()
            no_error_badges(page)

        # the controls are ready: the next edit runs
        page.locator("#n-max input[type=range]").fill("2")
        page.locator("#edit-button").click()
        summary.get_by_text("Done in").wait_for()
        no_error_badges(page)
        assert not page.errors, page.errors


@pytest.mark.browser
def test_a_phone_sees_the_whole_page(app_url):
    with loaded_page(app_url, viewport={"width": 390, "height": 844}) as (sync_api, page):
        page.locator("#examples table").first.wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 2  # nothing wider than the screen
        preset = page.locator("#preset input")
        width, visible = preset.evaluate("element => [element.scrollWidth, element.clientWidth]")
        assert width <= visible, f"the preset's text is clipped ({width} px in {visible} px)"
        clipped = page.evaluate("""() => [...document.querySelectorAll('#examples, #examples *')]
            .filter(element => element.clientWidth > 0 && element.scrollWidth > element.clientWidth + 1)
            .map(element => element.className.toString())""")
        assert clipped == [], f"the examples are cut off inside {clipped}"
        page.screenshot(path=str(ARTIFACTS / "app-phone.png"), full_page=True)
        assert not page.errors, page.errors


@pytest.mark.browser
def test_describe_the_image_then_write_the_target_from_an_instruction(served):
    url, service = served
    describer, instructor = service.prompt_helpers()
    picture = service.examples()[0].image
    described = describer.describe(picture)
    instruction = next(text for text in ("change the background to black", "change the background to grey",
                                         "change the background to white")
                       if instructor.rewrite(text, described, picture).ok)
    expected = instructor.rewrite(instruction, described, picture)
    with loaded_page(url) as (sync_api, page):
        pick_the_first_example(sync_api, page)
        source = page.locator("#source-prompt textarea")
        source.fill("")
        page.locator("#describe").click()
        sync_api.expect(source).to_have_value(described)
        page.locator("#instruction textarea, #instruction input").first.fill(instruction)
        page.locator("#write-target").click()
        sync_api.expect(page.locator("#target-prompt textarea")).to_have_value(expected.target)
        sync_api.expect(page.locator("#prompt-note")).to_contain_text("Valid")
        page.locator("#target-prompt textarea").fill(expected.target + " today")  # still the person's to change
        page.locator("#instruction textarea, #instruction input").first.fill("add a dragon")
        page.locator("#write-target").click()
        page.locator(".toast-body.error").first.wait_for()  # refused with the world's reason, not guessed
        sync_api.expect(page.locator("#target-prompt textarea")).to_have_value(expected.target + " today")
        assert not page.errors, page.errors

