"""The Lessons page, headless: every lesson renders with live numbers and one verdict (holds, does
not hold, or cannot judge with its reason), on a trained model, an untrained one and an upload
that does not fit; a bad upload gets an error and the page recovers."""

from __future__ import annotations

import pytest
from conftest import ROOT, run_page
from streamlit.testing.v1 import AppTest

from explainers.services.lessons import LESSONS

VERDICTS = ("Holds here", "Does not hold here", "Cannot judge here")
MINE = [key for key in LESSONS if key != "sanity"]  # the sanity lesson is another change's


@pytest.fixture(scope="module")
def page() -> AppTest:
    return run_page("app_pages/2_Lessons.py")


def verdicts(at: AppTest) -> list[str]:
    return [box.value for box in (*at.success, *at.warning, *at.info) if box.value.startswith(VERDICTS)]


@pytest.mark.parametrize("key", list(LESSONS))
def test_every_lesson_renders(page, key):
    page.sidebar.radio[0].set_value(key).run()
    assert not page.exception and not page.error
    found = verdicts(page)
    assert len(found) == 1, found
    assert len(page.metric) >= 2
    assert page.markdown  # the claim
    if key in MINE and not found[0].startswith("Cannot judge"):
        # Every tile's number appears, written the same way, in the verdict.
        tiles = [m.value for m in page.metric]
        assert all(value in found[0] for value in tiles), (tiles, found[0])


@pytest.mark.parametrize("key", MINE)
def test_no_lesson_judges_random_weights(page, key):
    page.sidebar.radio[0].set_value(key).run()
    page.sidebar.toggle(key="lesson_random").set_value(True).run()
    try:
        assert not page.exception and not page.error
        found = verdicts(page)
        assert len(found) == 1 and found[0].startswith("Cannot judge here") and "untrained" in found[0]
        assert any("Random weights" in box.value for box in page.warning)
    finally:
        page.sidebar.toggle(key="lesson_random").set_value(False).run()


def test_an_upload_that_does_not_fit_is_not_judged(page):
    """rocket.jpg: one rocket for the instances lesson; 'missile' and 'projectile' for the classes."""
    data = (ROOT / "assets" / "samples" / "rocket.jpg").read_bytes()
    page.file_uploader(key="lesson_upload").set_value(("rocket.jpg", data, "image/jpeg")).run()
    try:
        page.sidebar.radio[0].set_value("discrimination").run()
        assert not page.exception
        found = verdicts(page)
        assert len(found) == 1 and found[0].startswith("Cannot judge here") and "same object" in found[0]
        page.sidebar.radio[0].set_value("instances").run()
        found = verdicts(page)
        assert len(found) == 1 and found[0].startswith("Cannot judge here") and "two objects" in found[0]
    finally:
        page.file_uploader(key="lesson_upload").set_value(None).run()


def test_a_bad_own_image_gets_an_error_and_the_page_recovers(page):
    page.sidebar.radio[0].set_value("watermark").run()
    page.file_uploader(key="lesson_upload").set_value(("notes.png", b"not an image", "image/png")).run()
    assert not page.exception
    assert any("Cannot use notes.png" in e.value for e in page.error)
    page.file_uploader(key="lesson_upload").set_value(None).run()
    assert not page.exception and not page.error and len(page.metric) >= 2
