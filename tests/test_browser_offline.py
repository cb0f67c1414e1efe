"""A newcomer's first session in a real browser, offline: no failed request over the three pages,
a quiet server log, and a sidebar whose controls show all they hold (1400×1000, as in the issue).

Needs /usr/bin/chromium; skipped without it unless CAM_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import io
import re
from urllib.parse import urlparse

import numpy as np
import pytest
from browser_support import assert_no_exception, wait_until_idle

from explainers.services.service import default_methods, method_options, method_title

pytestmark = pytest.mark.browser

SLOW_MS = 180_000  # the first visit imports PyTorch and loads the model on two busy cores
VIEWPORT = {"width": 1400, "height": 1000}
WATCHER_NOISE = re.compile(r"inotify|watchdog|reconciling recursive watches|WARNING", re.IGNORECASE)


@pytest.fixture(scope="module")
def session(browser, served):
    """One visit to the three pages through the sidebar's navigation, with every failed request
    and every HTTP error response recorded."""
    url, log = served
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(SLOW_MS)
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(f"{request.url} {request.failure}"))
    page.on("response", lambda r: failed.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url)
    captions = page.locator('[data-testid="stImageCaption"]')
    captions.filter(has_text="Grad-CAM · ").first.wait_for()
    page.get_by_text("last explanation").wait_for()
    wait_until_idle(page)
    visited = {"Explore": page.title()}
    nav = page.locator('[data-testid="stSidebarNav"]')
    for link, heading in [("Trust & bias", "Trust"), ("Lessons", "Lessons")]:
        nav.get_by_role("link", name=link).click()
        page.wait_for_url(f"**/{heading}")
        page.locator('[data-testid="stHeading"]').first.wait_for()
        wait_until_idle(page)
        assert_no_exception(page)
        visited[link] = page.title()
    nav.get_by_role("link", name="Explore").click()
    captions.filter(has_text="Grad-CAM · ").first.wait_for()
    wait_until_idle(page)
    yield page, failed, log, visited, url
    context.close()


def test_three_pages_make_no_failed_request(session):
    page, failed, _, visited, url = session
    assert set(visited) == {"Explore", "Trust & bias", "Lessons"}
    assert failed == []
    # The favicon is the app's own PNG, served by the app, never fetched from a font server.
    icons = page.locator("link[rel='shortcut icon'], link[rel='icon']").evaluate_all(
        "links => links.map(link => link.href)"
    )
    assert icons and all(urlparse(href).netloc == urlparse(url).netloc for href in icons), icons
    assert any(href.endswith(".png") and "/media/" in href for href in icons), icons


def test_server_log_has_no_watcher_warnings(session):
    _, _, log, _, _ = session
    noise = [line for line in log.read_text().splitlines() if WATCHER_NOISE.search(line)]
    assert noise == []


def test_sidebar_shows_every_method_and_the_whole_upload_hint(session, artifacts):
    page, *_ = session
    sidebar = page.locator('[data-testid="stSidebar"]')
    hint = sidebar.locator('[data-testid="stFileUploaderDropzoneInstructions"]').first
    assert "GIF" in hint.inner_text()
    clipped = hint.locator("span").evaluate_all(
        "spans => spans.filter(s => s.scrollWidth > s.clientWidth + 1).length"
    )
    assert clipped == 0, "the upload hint is cut off"
    sidebar.get_by_role("heading", name="Methods").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "sidebar_methods_1400x1000.png")
    edge = sidebar.bounding_box()
    for method in method_options():
        pill = sidebar.get_by_role("button", name=method_title(method), exact=True)
        pill.scroll_into_view_if_needed()
        box = pill.bounding_box()
        assert box and pill.is_visible(), method
        assert edge["x"] <= box["x"] and box["x"] + box["width"] <= edge["x"] + edge["width"], method
    # Nothing scrolls inside the methods control: every choice is in view at once.
    group = sidebar.locator('[data-testid="stButtonGroup"]').first
    assert group.evaluate("g => g.scrollHeight <= g.clientHeight + 1 && g.scrollWidth <= g.clientWidth + 1")
    chosen = group.locator('button[aria-pressed="true"]').all_inner_texts()
    assert sorted(chosen) == sorted(method_title(m) for m in default_methods())


def test_all_maps_download_is_made_on_click(session):
    page, *_ = session
    with page.expect_download() as download:
        page.get_by_role("button", name="All maps (.npz)").click()
    with np.load(io.BytesIO(download.value.path().read_bytes())) as maps:
        assert {"image", "gradcam", "gradcam_raw"} <= set(maps.files)
        assert maps["gradcam"].shape == (224, 224) and maps["image"].shape == (224, 224, 3)
