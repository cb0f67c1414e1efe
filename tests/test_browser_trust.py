"""The Trust & bias page in a real browser at 1400×1000: the bias demo, a model switch that must
not reset the class into an error, the no-tag image; no label is cut off; a screenshot each."""

from __future__ import annotations

import pytest
from browser_support import assert_no_exception, cut_off_labels, wait_until_idle

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def trust_page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(f"{server}/Trust")
    page.get_by_text("Grad-CAM energy in the tag's box").first.wait_for()
    wait_until_idle(page)
    yield page
    context.close()


def choose(page, box: str, option: str) -> None:
    page.get_by_role("combobox", name=box).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(300)  # the rerun starts; then wait for it to end
    wait_until_idle(page)


def test_the_bias_demo_reads_in_display_names_and_nothing_is_cut_off(trust_page, artifacts):
    page = trust_page
    assert_no_exception(page)
    assert page.get_by_text("Bias demo · biased", exact=True).count() >= 1
    assert cut_off_labels(page) == []
    page.screenshot(path=artifacts / "trust-models.png")


def test_switching_a_model_keeps_the_page_working(trust_page, artifacts):
    page = trust_page
    choose(page, "Class (a name both models have)", "dots")
    choose(page, "Left model", "EfficientNet-Lite0")
    assert_no_exception(page)
    assert page.get_by_text("has no class named").count() == 0
    assert page.locator('[data-testid="stAlert"]').filter(has_text="each side explains").count() == 1
    assert cut_off_labels(page) == []
    page.screenshot(path=artifacts / "trust-models-lite0.png")
    choose(page, "Image", "Bias demo image (no tag)")
    assert_no_exception(page)
    assert page.get_by_text("the tag's box").count() == 0
    page.screenshot(path=artifacts / "trust-models-no-tag.png")
