"""The Lessons page in a real browser: every lesson runs with no exception box; a screenshot each."""

from __future__ import annotations

import re

import pytest
from browser_support import assert_no_exception, cut_off_labels, wait_until_idle

from explainers.services.lessons import TITLES, teaching_order

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lessons_page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(180_000)  # a lesson computes for seconds; the first loads the model
    page.goto(f"{server}/Lessons")
    page.get_by_role("heading", name="Lessons").first.wait_for()
    yield page
    context.close()


@pytest.mark.parametrize("number, key", list(enumerate(teaching_order(), 1)))
def test_every_lesson_runs_in_the_browser(lessons_page, artifacts, number, key):
    page = lessons_page
    page.get_by_text(f"{number}. {TITLES[key]}", exact=True).click()
    page.get_by_role("heading", name=TITLES[key]).wait_for()  # the new run has started
    wait_until_idle(page)  # and finished: the previous lesson's elements are gone
    page.get_by_text("Measured now").wait_for()
    verdict = (
        page.locator('[data-testid="stAlert"]')
        .filter(has_text=re.compile(r"(Holds|Does not hold|Cannot judge) here"))
        .first
    )
    verdict.wait_for()
    page.locator('[data-testid="stMetric"]').nth(1).wait_for()  # at least two measurements
    assert_no_exception(page)
    assert cut_off_labels(page) == []
    page.screenshot(path=artifacts / f"lesson-{number}-{key}.png")
    verdict.scroll_into_view_if_needed()
    page.screenshot(path=artifacts / f"lesson-{number}-{key}-verdict.png")
