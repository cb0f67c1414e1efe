"""End to end in a real browser: `streamlit run app.py` driven by Playwright in Debian's Chromium.

Needs /usr/bin/chromium (`apt-get install -y chromium`); skipped without it unless
CAM_REQUIRE_BROWSER=1, which turns the skip into a failure (CI sets it). Screenshots go to
$CAM_ARTIFACTS (default: pytest's temporary directory).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_support import assert_no_exception, wait_until_idle
from PIL import Image

pytestmark = pytest.mark.browser

ROOT = Path(__file__).parents[1]
# A model load plus the first explanation take a few seconds on two CPU cores; be generous.
SLOW_MS = 120_000
SAMPLE = "Chelsea the cat"  # the sample the page opens on
VIEWPORT = {"width": 1440, "height": 2000}  # tall: Streamlit scrolls inside the page, not the window


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(SLOW_MS)
    page.goto(server)
    yield page
    context.close()


def overlay_captions(page) -> list[str]:
    return page.locator('[data-testid="stImageCaption"]').all_inner_texts()


def wait_for_overlays(page, image: str, *titles: str) -> None:
    """Wait until the input panel of `image` and an overlay captioned "<title> · ..." for each
    title are shown (captions of a previous image do not count)."""
    captions = page.locator('[data-testid="stImageCaption"]')
    captions.filter(has_text=f"{image} as ").first.wait_for()
    for title in titles:
        captions.filter(has_text=f"{title} · ").first.wait_for()
    wait_until_idle(page)


def choose_method(page, title: str) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_role("button", name=title, exact=True).click()


def png_file(path: Path) -> Path:
    # A transparent-background PNG: exercises alpha flattening on the way in.
    image = Image.open(ROOT / "assets" / "samples" / "two_cats.jpg").convert("RGBA")
    image.putalpha(255)
    image.save(path)
    return path


def test_default_page_explains_a_sample_at_once(page, artifacts):
    wait_for_overlays(page, SAMPLE, "Grad-CAM", "Grad-CAM++", "LayerCAM")
    page.get_by_text("Top-5 predictions").wait_for()
    page.get_by_text("last explanation").wait_for()
    assert_no_exception(page)
    assert f"{SAMPLE} as efficientnet_lite0 sees it (224×224)" in overlay_captions(page)
    page.screenshot(path=artifacts / "default.png")


def test_upload_and_choose_methods(page, artifacts, tmp_path):
    wait_for_overlays(page, SAMPLE, "Grad-CAM")
    page.locator('input[type="file"]').set_input_files(png_file(tmp_path / "two_cats.png"))
    wait_for_overlays(page, "two_cats.png", "Grad-CAM")
    choose_method(page, "HiResCAM")
    wait_for_overlays(page, "two_cats.png", "Grad-CAM", "HiResCAM")
    assert_no_exception(page)
    assert page.get_by_role("combobox", name="…or pick a sample").is_disabled()
    page.screenshot(path=artifacts / "upload.png")


def test_bad_upload_shows_an_error_and_the_page_keeps_working(page, artifacts, tmp_path):
    wait_for_overlays(page, SAMPLE, "Grad-CAM")
    bad = tmp_path / "notes.png"
    bad.write_text("This is a text file, not a picture.\n" * 20)
    page.locator('input[type="file"]').set_input_files(bad)
    alert = page.locator('[data-testid="stAlert"]', has_text="Cannot use notes.png")
    alert.wait_for()
    wait_until_idle(page)
    assert_no_exception(page)
    assert page.locator('[data-testid="stImage"]').count() == 0, "no results for a bad image"
    page.screenshot(path=artifacts / "bad-upload.png")

    # The page still works: remove the bad file, and the sample is explained again.
    page.get_by_role("button", name="Remove notes.png").click()
    wait_for_overlays(page, SAMPLE, "Grad-CAM")
    assert_no_exception(page)


def test_upload_over_the_limit_is_refused_and_the_page_keeps_working(page, artifacts, tmp_path):
    wait_for_overlays(page, SAMPLE, "Grad-CAM")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))  # over maxUploadSize = 20 in .streamlit/config.toml
    page.locator('input[type="file"]').set_input_files(big)
    page.get_by_text("must be 20", exact=False).first.wait_for()  # the uploader's own message
    page.get_by_role("combobox", name="…or pick a sample").click()
    page.get_by_role("option", name="Two cats (two instances)").click()
    wait_for_overlays(page, "Two cats (two instances)", "Grad-CAM")
    assert_no_exception(page)
    page.screenshot(path=artifacts / "too-large.png")


def test_sessions_do_not_interfere(browser, server, tmp_path):
    first, second = (browser.new_context(viewport=VIEWPORT).new_page() for _ in range(2))
    for page in (first, second):
        page.set_default_timeout(SLOW_MS)
        page.goto(server)
        wait_for_overlays(page, SAMPLE, "Grad-CAM")
    # Both sessions change their image at the same time, on one server and one shared model.
    first.locator('input[type="file"]').set_input_files(png_file(tmp_path / "two_cats.png"))
    second.get_by_role("combobox", name="…or pick a sample").click()
    second.get_by_role("option", name="Cup of espresso").click()
    wait_for_overlays(first, "two_cats.png", "Grad-CAM")
    wait_for_overlays(second, "Cup of espresso", "Grad-CAM")
    assert not any("Cup of espresso" in c for c in overlay_captions(first))
    assert not any("two_cats.png" in c for c in overlay_captions(second))
    for page in (first, second):
        assert_no_exception(page)
        page.context.close()


def test_top5_classes_open_in_their_section(page, artifacts):
    wait_for_overlays(page, SAMPLE, "Grad-CAM")
    page.get_by_text("Top-5 classes", exact=True).click()  # computed only once opened
    page.get_by_text("for each of the top 5 classes").wait_for()
    wait_until_idle(page)
    section = page.locator('[data-testid="stExpander"]', has_text="Top-5 classes")
    assert section.locator('[data-testid="stImageCaption"]').count() == 5
    assert_no_exception(page)
    page.screenshot(path=artifacts / "top5.png")


def test_scorecam_can_be_stopped_and_the_other_maps_stay(page, artifacts):
    wait_for_overlays(page, SAMPLE, "Grad-CAM")
    choose_method(page, "Score-CAM")
    page.get_by_text(re.compile(r"Score-CAM will take \d+ forward passes")).wait_for()
    wait_until_idle(page)
    page.locator('label:has-text("Score-CAM approximation")').click()  # exact: long enough to stop
    # Every channel of the 1280 that is not blank on this image: hundreds of passes.
    exact = page.get_by_text(re.compile(r"Score-CAM will take \d{3,4} forward passes"))
    exact.wait_for()
    passes = re.search(r"take (\d+) forward", exact.inner_text()).group(1)
    wait_until_idle(page)
    page.get_by_role("button", name="Run Score-CAM").click()
    page.get_by_text(f"of {passes} forward passes").wait_for()  # the progress bar's text
    # Streamlit interrupts the running script at its next progress update and reruns it.
    page.get_by_role("button", name="Stop Score-CAM").click()
    page.get_by_text("Score-CAM stopped.").wait_for()
    wait_until_idle(page)
    assert_no_exception(page)
    assert page.get_by_role("button", name="Run Score-CAM").is_visible()
    assert any(c.startswith("Grad-CAM · ") for c in overlay_captions(page))
    page.screenshot(path=artifacts / "scorecam-stopped.png")
