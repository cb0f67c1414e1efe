"""Load test: many headless-Chromium sessions of the app uploading different photos at once.

    python -m benchmarks.load [--url URL [--server-pid PID] | --start] [--sessions 1,4,16,32]
                              [--soak 200] [--server-cpus 0] [--browser-cpus 1] [--json FILE]

For each N in --sessions, N browser pages (one context each: separate Streamlit sessions) open
the Explore page; then all upload a different photo at the same moment (a fresh explanation
each), then a second one each (fresh again), then the first again: its explanation is cached, so
this rerun measures what the page costs without the science. It reports per phase the time from
upload to the maps shown (p50, p95, max), the sessions that failed (an exception on the page, an
error, no maps within --timeout), the server's CPU-seconds per request and its resident memory.
--soak K then uploads K different photos one after another, a new session every
--soak-per-session uploads, and records the server's memory after each: whether it levels off.

The photos are the colour pictures scikit-image ships (no test uses them), cropped, flipped and
colour-shifted so that every upload is a new image. Everything stays on loopback: --start runs
`streamlit run app.py` on a free local port; --url must point at 127.0.0.1 or localhost.

--start pins the server to --server-cpus and the browsers to --browser-cpus (sched_setaffinity,
as taskset does), so that the latency is the server's and not the browsers' competing for it.
The server's CPU time and memory come from /proc/<pid> (--start, or --server-pid for a server
started by hand); without them those columns are empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser_support import CHROMIUM, CHROMIUM_ARGS, streamlit_app  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` different JPEG photos in ``folder``: crops, flips and colour shifts of
    scikit-image's colour pictures, at 300 to 700 px."""
    import skimage.data

    rng = np.random.default_rng(seed)
    sources = [getattr(skimage.data, name)() for name in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        source = sources[i % len(sources)]
        h, w = source.shape[:2]
        crop = rng.uniform(0.6, 1.0)
        ch, cw = int(h * crop), int(w * crop)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        picture = source[y : y + ch, x : x + cw].astype(np.float32)
        if rng.random() < 0.5:
            picture = picture[:, ::-1]
        picture = np.clip(picture * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-20, 20), 0, 255)
        image = Image.fromarray(picture.astype(np.uint8))
        side = int(rng.integers(300, 700))
        image.thumbnail((side, side))
        path = folder / f"photo_{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


@dataclass
class ServerProbe:
    """CPU time and memory of the server process, from /proc (Linux)."""

    pid: int | None

    def cpu_seconds(self) -> float | None:
        if self.pid is None:
            return None
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, all threads

    def memory_mb(self, key: str = "VmRSS") -> float | None:
        if self.pid is None:
            return None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return None


@dataclass
class Phase:
    """One phase of a round: N sessions doing the same thing at once."""

    sessions: int
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_cpu_seconds: float | None = None
    rss_mb: float | None = None
    requests: int | None = None  # sessions still working when the phase began (a failed one stops)

    def row(self) -> dict[str, object]:
        done = sorted(self.latencies)
        requests = self.sessions if self.requests is None else self.requests
        cpu = None if self.server_cpu_seconds is None or not requests else self.server_cpu_seconds / requests
        return {
            "sessions": self.sessions,
            "phase": self.name,
            "p50_s": statistics.median(done) if done else None,
            "p95_s": done[min(len(done) - 1, round(0.95 * (len(done) - 1)))] if done else None,
            "max_s": done[-1] if done else None,
            "errors": len(self.errors),
            "requests": self.requests,
            "cpu_s_per_request": cpu,
            "rss_mb": self.rss_mb,
        }


async def wait_for_maps(page, caption: str, timeout_s: float) -> None:
    """Until the page shows the maps of the image whose caption starts with ``caption``."""
    captions = page.locator('[data-testid="stImageCaption"]')
    await captions.filter(has_text=f"{caption} as ").first.wait_for(timeout=timeout_s * 1000)
    await captions.filter(has_text="Grad-CAM · ").first.wait_for(timeout=timeout_s * 1000)
    await page.locator(IDLE).wait_for(timeout=timeout_s * 1000)


async def page_problem(page) -> str | None:
    if await page.locator('[data-testid="stException"]').count():
        return "exception on the page"
    alerts = page.locator('[data-testid="stAlertContentError"]')
    if await alerts.count():
        return "error: " + (await alerts.first.inner_text())[:120]
    return None


async def upload(page, photo: Path, timeout_s: float) -> float:
    """Upload ``photo`` and return the seconds until its maps are shown."""
    start = time.perf_counter()
    await page.locator('input[type="file"]').set_input_files(str(photo), timeout=timeout_s * 1000)
    await wait_for_maps(page, photo.name, timeout_s)
    return time.perf_counter() - start


async def run_round(
    browser, url: str, photos: Sequence[Path], probe: ServerProbe, timeout_s: float
) -> list[Phase]:
    """N = len(photos) // 2 sessions: open the page, upload at once twice (fresh), then the
    first photo again (cached)."""
    n = len(photos) // 2
    contexts = [await browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(n)]
    pages = [await context.new_page() for context in contexts]
    phases = [
        Phase(n, "open"),
        Phase(n, "fresh upload"),
        Phase(n, "fresh upload 2"),
        Phase(n, "cached rerun"),
    ]
    alive = [True] * n

    async def step(i: int, phase: Phase, action) -> None:
        if not alive[i]:
            return
        try:
            phase.latencies.append(await action())
            problem = await page_problem(pages[i])
        except Exception as error:  # a timeout or a closed page: this session failed
            problem = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        if problem:
            alive[i] = False
            phase.errors.append(f"session {i}: {problem}")

    async def open_page(i: int) -> float:
        start = time.perf_counter()
        await pages[i].goto(url, timeout=timeout_s * 1000)
        await (
            pages[i]
            .locator('[data-testid="stImageCaption"]')
            .filter(has_text="Grad-CAM · ")
            .first.wait_for(timeout=timeout_s * 1000)
        )
        await pages[i].locator(IDLE).wait_for(timeout=timeout_s * 1000)
        return time.perf_counter() - start

    first, second = photos[:n], photos[n:]
    actions = [
        open_page,
        lambda i: upload(pages[i], first[i], timeout_s),
        lambda i: upload(pages[i], second[i], timeout_s),
        lambda i: upload(pages[i], first[i], timeout_s),  # its explanation is cached
    ]
    try:
        for phase, action in zip(phases, actions):
            phase.requests = sum(alive)
            cpu_before = probe.cpu_seconds()
            await asyncio.gather(*(step(i, phase, lambda i=i: action(i)) for i in range(n)))
            cpu_after = probe.cpu_seconds()
            if cpu_before is not None and cpu_after is not None:
                phase.server_cpu_seconds = cpu_after - cpu_before
            phase.rss_mb = probe.memory_mb()
    finally:
        for context in contexts:
            await context.close()
    return phases


async def soak(
    browser, url: str, photos: Sequence[Path], probe: ServerProbe, timeout_s: float, per_session: int
) -> list[dict]:
    """Upload ``photos`` one after another, ``per_session`` in each new session (a class: each
    student comes, uploads a few, leaves); the server's memory after each upload."""
    curve = []
    for start in range(0, len(photos), per_session):
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = await context.new_page()
            await page.goto(url, timeout=timeout_s * 1000)
            await page.locator(IDLE).wait_for(timeout=timeout_s * 1000)
            for photo in photos[start : start + per_session]:
                seconds = await upload(page, photo, timeout_s)
                curve.append({"uploads": len(curve) + 1, "seconds": seconds, "rss_mb": probe.memory_mb()})
        finally:
            await context.close()
    return curve


def check_loopback(url: str) -> str:
    host = urllib.parse.urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"error: --url must be on loopback (127.0.0.1 or localhost), not {host!r}")
    return url.rstrip("/")


def parse_cpus(text: str | None) -> set[int] | None:
    if not text:
        return None
    cpus = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


async def measure(args: argparse.Namespace, url: str, probe: ServerProbe, photos: list[Path]) -> dict:
    from playwright.async_api import async_playwright

    report: dict[str, object] = {"url": url, "rounds": [], "soak": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            used = 0
            for n in args.sessions:
                phases = await run_round(browser, url, photos[used : used + 2 * n], probe, args.timeout)
                used += 2 * n
                for phase in phases:
                    report["rounds"].append(phase.row() | {"error_messages": phase.errors[:5]})
                    print(format_row(phase.row()), flush=True)
            if args.soak:
                report["soak"] = await soak(
                    browser, url, photos[used : used + args.soak], probe, args.timeout, args.soak_per_session
                )
                for point in report["soak"][:: max(1, len(report["soak"]) // 10)] + report["soak"][-1:]:
                    print(
                        f"soak: after {point['uploads']:4d} uploads  RSS {fmt(point['rss_mb'], '.0f')} MB",
                        flush=True,
                    )
        finally:
            await browser.close()
    return report


def fmt(value: object, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def format_row(row: dict) -> str:
    return (
        f"N={row['sessions']:3d} {row['phase']:<14} p50 {fmt(row['p50_s'], '6.2f')} s  p95 {fmt(row['p95_s'], '6.2f')} s"
        f"  max {fmt(row['max_s'], '6.2f')} s  errors {row['errors']}"
        f"  server CPU {fmt(row['cpu_s_per_request'], '.3f')} s/request  RSS {fmt(row['rss_mb'], '.0f')} MB"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running app on loopback, e.g. http://127.0.0.1:8501")
    where.add_argument(
        "--start", action="store_true", help="start `streamlit run app.py` on a free local port"
    )
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process, for CPU and memory")
    parser.add_argument("--sessions", default="1,4,16,32", help="comma-separated N (default: 1,4,16,32)")
    parser.add_argument("--soak", type=int, default=0, help="uploads one after another")
    parser.add_argument(
        "--soak-per-session", type=int, default=10, help="soak uploads per session (default 10)"
    )
    parser.add_argument("--server-cpus", default="0", help="with --start: CPUs for the server (default 0)")
    parser.add_argument("--browser-cpus", default="1", help="CPUs for the browsers (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds a session may wait for its maps"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.sessions = [int(n) for n in args.sessions.split(",") if n]
    if not args.sessions or min(args.sessions) < 1 or max(args.sessions) > 64:
        parser.error("--sessions takes numbers from 1 to 64")
    if not 0 <= args.soak <= 1000:
        parser.error("--soak takes 0 to 1000 uploads")
    available = os.sched_getaffinity(0)
    args.server_cpus, args.browser_cpus = parse_cpus(args.server_cpus), parse_cpus(args.browser_cpus)
    for cpus in (args.server_cpus, args.browser_cpus):
        if cpus and not cpus <= available:
            parser.error(
                f"CPUs {sorted(cpus - available)} are not available (this process has {sorted(available)})"
            )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    affinity = os.sched_getaffinity(0)
    try:
        with tempfile.TemporaryDirectory(prefix="cam-load-") as tmp:
            photos = make_photos(Path(tmp) / "photos", 2 * sum(args.sessions) + args.soak)
            if args.start:
                log = (Path(tmp) / "server.log").open("w")
                with log, streamlit_app(log, args.server_cpus) as (url, pid):
                    if args.browser_cpus:
                        os.sched_setaffinity(0, args.browser_cpus)  # the browsers inherit it
                    report = asyncio.run(measure(args, url, ServerProbe(pid), photos))
            else:
                if args.browser_cpus:
                    os.sched_setaffinity(0, args.browser_cpus)
                url = check_loopback(args.url)
                report = asyncio.run(measure(args, url, ServerProbe(args.server_pid), photos))
    finally:
        os.sched_setaffinity(0, affinity)
    report["server_cpus"] = sorted(args.server_cpus or [])
    report["browser_cpus"] = sorted(args.browser_cpus or [])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(row["errors"] == 0 for row in report["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
