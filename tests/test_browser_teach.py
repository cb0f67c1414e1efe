"""The teaching tools in a real browser (Debian's Chromium): the step view, an edited image, a link
that reopens a view, and the downloaded view opened offline. A screenshot of each goes to
$CAM_ARTIFACTS (default: pytest's temporary directory).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from browser_support import assert_no_exception, wait_until_idle

pytestmark = pytest.mark.browser

SLOW_MS = 180_000  # a model load and the first explanation on two busy cores
VIEWPORT = {"width": 1440, "height": 2000}
SAMPLE = "Chelsea the cat"
# Each image's naturalWidth > 0 once it has loaded or failed (an image still on its way is awaited).
LOADED = """images => Promise.all(images.map(image => image.complete ? image : new Promise(done => {
  image.addEventListener("load", () => done(image)); image.addEventListener("error", () => done(image));
}))).then(all => all.map(image => image.naturalWidth > 0))"""


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(SLOW_MS)
    page.goto(server)
    wait_for_maps(page, SAMPLE, "Grad-CAM")
    yield page
    context.close()


def wait_for_maps(page, image: str, *titles: str) -> None:
    captions = page.locator('[data-testid="stImageCaption"]')
    captions.filter(has_text=f"{image} as ").first.wait_for()
    for title in titles:
        captions.filter(has_text=f"{title} · ").first.wait_for()
    page.get_by_text("last explanation").wait_for()
    wait_until_idle(page)


def selected(sidebar, label: str) -> str:
    """The option a selectbox shows (the value of its combobox input)."""
    return sidebar.get_by_role("combobox", name=label).input_value()


def section(page, label: str):
    return page.locator('[data-testid="stExpander"]', has_text=label)


def open_section(page, label: str, last_words: str):
    page.get_by_text(label, exact=True).click()
    part = section(page, label)
    part.get_by_text(last_words).first.wait_for()
    wait_until_idle(page)
    return part


def test_step_view_shows_thumbnails_the_weight_chart_and_both_sums(page, artifacts):
    steps = open_section(page, "Grad-CAM: how this map was made", "5 · Upsampled and laid over the image")
    assert_no_exception(page)
    captions = steps.locator('[data-testid="stImageCaption"]')
    thumbnails = [c for c in captions.all_inner_texts() if re.fullmatch(r"#\d+ · weight \S+ · \S+%", c)]
    assert len(thumbnails) == 8
    assert all(steps.locator("img").evaluate_all(LOADED))
    assert steps.get_by_text(re.compile(r"These 8 carry \d+(\.\d+)?% of the total")).count() == 1
    charts = steps.locator('[data-testid="stPlotlyChart"]')
    assert charts.count() == 2
    weights, sums = charts.nth(0), charts.nth(1)
    # The weight chart: one bar per channel of the final feature map, red above zero and blue below.
    assert weights.locator("g.point").count() == 1280
    # The sums: before the ReLU (diverging) and after it, side by side, drawn as heat maps.
    assert (
        sums.get_by_text("S before the ReLU").count() == 1
        and sums.get_by_text("ReLU(S): the map").count() == 1
    )
    assert sums.locator("g.hm image").count() == 2
    assert steps.get_by_text(re.compile(r"\d+(\.\d+)?% of the sum is negative")).count() == 1
    # Streamlit scrolls inside the page: photograph the section in two views of the window.
    steps.get_by_text("Grad-CAM asks, for every channel").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "teach-steps-1.png")
    steps.get_by_text("4 · The weighted sum, before and after the ReLU").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "teach-steps-2.png")


def test_a_filled_box_changes_the_prediction_and_both_views_are_shown(page, artifacts):
    edit = open_section(page, "Edit the image, watch the model", "Edited: top 5")
    # Draw a box over the cat's eyes and nose on the picture (plotly's box select), as a user would.
    area = edit.locator('[data-testid="stPlotlyChart"] .nsewdrag').first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.75 * box["height"], steps=12)
    page.mouse.up()
    drawn = edit.get_by_text(re.compile(r"Your box: x \d+–\d+, y \d+–\d+"))
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
        ".some(e => /Your box: x \\d+–\\d+/.test(e.innerText) && !e.innerText.includes('x 56–168, y 56–168'))"
    )
    wait_until_idle(page)
    assert_no_exception(page)
    lists = edit.locator("ol")
    assert lists.count() == 2 and all(
        n == 5 for n in (lists.nth(0).locator("li").count(), lists.nth(1).locator("li").count())
    )
    before, after = lists.nth(0).inner_text(), lists.nth(1).inner_text()
    assert before != after and " pp)" in after
    assert edit.get_by_text("The top class changes: tiger cat → ").count() == 1
    delta = edit.locator('[data-testid="stMetricDelta"]').inner_text()
    assert re.fullmatch(r"-\d+\.\d pp", delta.strip()), delta
    captions = edit.locator('[data-testid="stImageCaption"]').all_inner_texts()
    assert len([c for c in captions if " · original · " in c]) == 5
    assert len([c for c in captions if " · edited · " in c]) == 5
    assert all(edit.locator("img").evaluate_all(LOADED))
    x0, x1, y0, y1 = re.search(r"x (\d+)–(\d+), y (\d+)–(\d+)", drawn.inner_text()).groups()
    assert f"box x {x0}–{x1}, y {y0}–{y1} filled with mid-grey" in captions, "the drawn box is the one filled"
    edit.screenshot(path=artifacts / "teach-edit.png")


def test_a_link_opens_on_exactly_its_model_layer_class_and_methods(browser, server, artifacts):
    query = {
        "sample": "two_cats",
        "model": "resnet18",
        "random": "1",
        "layer": "layer2",
        "class": "281",
        "methods": "gradcam,layercam",
    }
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(SLOW_MS)
    page.goto(f"{server}/?{urlencode(query)}")
    wait_for_maps(page, "Two cats (two instances)", "Grad-CAM", "LayerCAM")
    assert_no_exception(page)
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert "resnet18" in selected(sidebar, "Classifier")
    assert page.get_by_text("resnet18 · layer layer2 · last explanation").count() == 1
    assert "stage 3 · 28×28 — layer2" in selected(sidebar, "Target layer")
    # The class: tabby (281), through "another class…" when it is not in this model's top 5.
    chosen = sidebar.locator('[data-testid="stRadio"] label:has(input:checked)').inner_text()
    if "another class" in chosen:
        assert "tabby (281)" in selected(sidebar, "Any class (type to search)")
    else:
        assert chosen.startswith("tabby")
    pressed = sidebar.locator('[data-testid="stButtonGroup"] button[aria-pressed="true"]').all_inner_texts()
    assert sorted(pressed) == ["Grad-CAM", "LayerCAM"]
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    assert any(c.startswith("Grad-CAM · tabby · ") for c in captions)
    assert any(c.startswith("LayerCAM · tabby · ") for c in captions)
    assert not any(c.startswith("Grad-CAM++ · ") for c in captions)
    # The address bar still names that view, and the page's link is it.
    assert "model=resnet18" in page.url and "layer=layer2" in page.url and "class=281" in page.url
    page.get_by_text("Share this view").scroll_into_view_if_needed()
    link = page.locator('[data-testid="stCode"]').inner_text()
    assert "model=resnet18" in link and "methods=gradcam%2Clayercam" in link
    page.screenshot(path=artifacts / "teach-link.png")
    context.close()


def test_the_downloaded_view_opens_offline_with_its_images(page, browser, artifacts, tmp_path):
    page.get_by_text("Share this view").scroll_into_view_if_needed()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download this view (HTML)").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "Chelsea_the_cat_efficientnet_lite0_class282_view.html"
    offline = browser.new_context(offline=True, viewport={"width": 1300, "height": 1600})
    failed: list[str] = []
    view = offline.new_page()
    view.on("requestfailed", lambda request: failed.append(request.url))
    view.goto(saved.as_uri())
    view.wait_for_load_state("load")
    images = view.locator("img")
    assert images.count() >= 9  # the input, five maps, three sums before the ReLU
    assert all(images.evaluate_all(LOADED))
    assert failed == []
    assert view.get_by_text("Written by CAM Explorer 0.1.0").count() == 1
    assert view.get_by_role("cell", name="tiger cat (282)").count() == 1
    view.screenshot(path=artifacts / "teach-download.png", full_page=True)
    offline.close()
