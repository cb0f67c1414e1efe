"""The Lessons page, headless: every lesson renders with live numbers and no exception."""

from __future__ import annotations

import pytest
from conftest import run_page
from streamlit.testing.v1 import AppTest

from explainers.lessons import LESSONS


@pytest.fixture(scope="module")
def page() -> AppTest:
    return run_page("app_pages/2_Lessons.py")


@pytest.mark.parametrize("key", list(LESSONS))
def test_every_lesson_renders(page, key):
    page.sidebar.radio[0].set_value(key).run()
    assert not page.exception
    verdicts = [box.value for box in (*page.success, *page.warning)]
    assert len(verdicts) == 1 and ("Holds here" in verdicts[0] or "Does not hold here" in verdicts[0])
    assert len(page.metric) >= 2
    assert page.markdown  # the claim


def test_a_bad_own_image_gets_an_error_and_the_page_recovers(page):
    page.sidebar.radio[0].set_value("watermark").run()
    page.file_uploader(key="lesson_upload").set_value(("notes.png", b"not an image", "image/png")).run()
    assert not page.exception
    assert any("Cannot use notes.png" in e.value for e in page.error)
    page.file_uploader(key="lesson_upload").set_value(None).run()
    assert not page.exception and not page.error and len(page.metric) >= 2
