"""Helpers for the real-browser tests (their fixtures, shared by the browser test modules,
are in conftest.py): Debian's Chromium, a `streamlit run` server, waiting on the page."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)  # polling interval of the health check, not a wait for the page
    raise TimeoutError(f"{url} did not become healthy in {timeout:.0f} s")


@contextmanager
def streamlit_app(
    log: IO[str], cpus: set[int] | None = None, port: int | None = None
) -> Iterator[tuple[str, int]]:
    """`streamlit run app.py` with the shipped settings on a loopback port, healthy: (url, pid).

    Args:
        log: where its output goes.
        cpus: pin it to these CPUs (as taskset does).
        port: a free port is chosen when None.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)
    try:
        wait_until_healthy(url, process)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_idle(page) -> None:
    """Wait for the script run to finish: until then, elements of the previous run still show.

    Call it after waiting for an element the new run draws, so the run has started.
    """
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def assert_no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


# Labels and captions Streamlit cuts with an ellipsis when they do not fit: (how many were
# checked, the texts of those cut off).
_CUT_OFF = """() => {
  const all = [...document.querySelectorAll(
    '[data-testid="stMetricLabel"] *, [data-testid="stImageCaption"], [data-testid="stWidgetLabel"] *'
  )];
  return [all.length, all.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)];
}"""


def cut_off_labels(page) -> list[str]:
    """The texts of labels and captions that do not fit (at least one label must be on the page)."""
    checked, cut = page.evaluate(_CUT_OFF)
    assert checked > 0, "no labels found: the selectors no longer match Streamlit's page"
    return cut
