"""deploy/nginx.conf in front of two app replicas on loopback: sessions spread over both, and
each session stays on its replica (its uploads, media files and state live there)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from browser_support import ROOT, free_port, streamlit_app, wait_until_idle
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.browser]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LOG_LINE = re.compile(
    r'"(?P<request>[^"]*)" (?P<status>\d+) upstream=(?P<upstream>\S+) replica=(?P<replica>\S+)'
)


def loopback_config(folder: Path, port: int, replicas: list[str]) -> Path:
    """The shipped config with its upstream servers, port and log path set for this machine."""
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = "\n".join(f"        server {url.removeprefix('http://')};" for url in replicas)
    for old, new in [
        ("        server app:8501;", servers),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("/var/log/nginx/access.log", str(folder / "access.log")),
    ]:
        assert old in config, f"deploy/nginx.conf no longer contains {old!r}"
        config = config.replace(old, new)
    path = folder / "nginx.conf"
    path.write_text(config)
    return path


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    """Two replicas and nginx: (nginx's URL, its access log, the replicas' addresses)."""
    if not Path(NGINX).exists():
        if os.environ.get("CAM_REQUIRE_BROWSER") == "1":
            pytest.fail("nginx is missing (apt-get install -y nginx)")
        pytest.skip("nginx is missing (apt-get install -y nginx)")
    folder = tmp_path_factory.mktemp("nginx")
    with ExitStack() as stack:
        replicas = []
        for i in range(2):
            log = stack.enter_context((folder / f"replica{i}.log").open("w"))
            url, _ = stack.enter_context(streamlit_app(log))
            replicas.append(url)
        port = free_port()
        config = loopback_config(folder, port, replicas)
        options = f"daemon off; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'};"
        nginx = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(config), "-g", options])
        stack.callback(nginx.wait, 30)
        stack.callback(nginx.terminate)
        for _ in range(100):
            if (folder / "nginx.pid").exists():
                break
            assert nginx.poll() is None, (folder / "error.log").read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", folder / "access.log", [u.removeprefix("http://") for u in replicas]


def photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(path)
    return path


def images_loaded(page) -> bool:
    return page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


def session_upstreams(access_log: Path) -> dict[str, set[str]]:
    """Each browser's replica key -> the replicas that answered it, from nginx's log."""
    upstreams_of: dict[str, set[str]] = defaultdict(set)
    for match in map(LOG_LINE.search, access_log.read_text().splitlines()):
        if match and match["upstream"] != "-":
            upstreams_of[match["replica"]].add(match["upstream"])
    return upstreams_of


def use_the_app(context, url: str, upload: Path) -> None:
    """Open the page, upload a photo, then choose one more method: state that lives in one replica."""
    page = context.new_page()
    page.goto(url)
    captions = page.locator('[data-testid="stImageCaption"]')
    captions.filter(has_text="Grad-CAM · ").first.wait_for(timeout=180_000)
    page.locator('input[type="file"]').set_input_files(upload)
    captions.filter(has_text=f"{upload.name} as ").first.wait_for(timeout=180_000)
    page.locator('[data-testid="stSidebar"]').get_by_role("button", name="HiResCAM", exact=True).click()
    captions.filter(has_text="HiResCAM · ").first.wait_for(timeout=180_000)
    wait_until_idle(page)
    assert captions.filter(has_text=f"{upload.name} as ").count() > 0, "the upload was lost"
    assert images_loaded(page), "an image (a media file of another replica?) did not load"
    assert page.locator('[data-testid="stException"]').count() == 0


def test_sessions_spread_over_replicas_and_keep_their_state(browser, balanced, tmp_path):
    url, access_log, replicas = balanced
    contexts = []
    try:
        # New browsers get random keys: go on until both replicas have sessions (4 at least,
        # 12 at most: all 12 on one replica would happen once in 2,048 runs).
        while len(contexts) < 12:
            contexts.append(browser.new_context(viewport={"width": 1400, "height": 1000}))
            use_the_app(contexts[-1], url, photo(tmp_path / f"upload_{len(contexts)}.png", len(contexts)))
            used = set().union(*session_upstreams(access_log).values())
            if len(contexts) >= 4 and used == set(replicas):
                break
    finally:
        for context in contexts:
            context.close()  # closes the websockets, so that nginx logs them

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        streams = [line for line in access_log.read_text().splitlines() if "/_stcore/stream" in line]
        if len(streams) >= len(contexts):
            break
        time.sleep(0.5)
    keys = {LOG_LINE.search(line)["replica"] for line in streams}
    assert len(keys) == len(contexts), "each session's websocket comes with its own key"
    upstreams_of = session_upstreams(access_log)
    for key in keys:
        assert len(upstreams_of[key]) == 1, f"session {key} was served by {sorted(upstreams_of[key])}"
    used = set().union(*(upstreams_of[key] for key in keys))
    assert used == set(replicas), f"the sessions went only to {sorted(used)} of {replicas}"
