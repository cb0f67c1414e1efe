"""Where the server's time goes in one request of the Explore page: a fresh upload and a rerun.

    python -m benchmarks.request_profile [--photos 5] [--json FILE]

Runs the real page (`app.py`, Streamlit's AppTest, in this process) on the offline default
model: the sample first (model loading, not counted), then --photos different photos uploaded one
after another (fresh explanations), each followed by a rerun of the same page (its explanation is
cached: what a widget change or a re-upload costs). It times, in process CPU seconds (Torch's
threads included), the pieces each request runs: decoding the image, the prediction, the
explanation (forward, backward, the CAMs) with the guided backward pass apart, rendering the
overlays, encoding pictures (st.image, the PNG download), plotly (building and serialising the
charts), the download buttons, and the rest: Streamlit's own work (running the script, widgets,
protobuf) and the page code. Medians over the photos.

What AppTest does not run, the browser's fetching of the images over HTTP and the websocket,
also costs the server: `python -m benchmarks.load` measures the whole. AppTest would parse and
compile app.py afresh for every run (a new script cache each time: about 0.04 CPU-s, half of a
cached rerun); the server compiles it once, so the profile shares one script cache as it does.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from benchmarks.load import make_photos

ROOT = Path(__file__).resolve().parents[1]

# (piece, module, attribute): the functions that make up a request, timed where they are defined
# (the page imports them by name at each run, so it picks the timed ones up).
PIECES = [
    ("decode", "explainers.services.service", "prepare_image"),
    ("predict", "explainers.services.service", "predict"),
    ("explain", "explainers.services.service", "run_explanation"),
    ("explain", "explainers.services.service", "run_explanations"),  # the coalesced path
    ("guided pass", "explainers.methods.guided", "rectified_input_gradients"),
    ("guided pass", "explainers.methods.guided", "_batch_rectified_gradients"),  # batched
    ("render overlays", "explainers.services.render", "picture"),
    ("encode pictures", "streamlit.elements.lib.image_utils", "image_to_url"),
    ("encode pictures", "explainers.services.service", "to_png"),
    ("plotly", "explainers.services.figures", "predictions_figure"),
    ("plotly", "explainers.services.figures", "heatmap_figure"),
    ("plotly", "streamlit.delta_generator:DeltaGenerator", "plotly_chart"),
    ("downloads", "streamlit.delta_generator:DeltaGenerator", "download_button"),
    ("teaching sections", "app_teach", "render_steps"),
    ("teaching sections", "app_teach", "render_edit"),
    ("teaching sections", "app_teach", "render_share"),
]


class Timer:
    """Process CPU seconds per piece; a piece's time excludes the timed pieces it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []

    def wrap(self, piece: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            frame = [piece, time.process_time(), 0.0]  # piece, start, time of pieces inside
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = time.process_time() - frame[1]
                self.seconds[piece] += spent - frame[2]
                if self._stack:
                    self._stack[-1][2] += spent

        return timed


def resolve(path: str) -> object:
    """ "package.module" or "package.module:Class"."""
    module_name, _, class_name = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name) if class_name else module


def run_page(at, timer: Timer) -> dict[str, float]:
    timer.seconds.clear()
    start = time.process_time()
    at.run()
    total = time.process_time() - start
    if at.exception:
        raise RuntimeError(f"the page failed: {at.exception[0].value}")
    pieces = dict(timer.seconds)
    pieces["Streamlit and page code"] = total - sum(pieces.values())
    pieces["total"] = total
    return pieces


def profile(photos: Sequence[Path]) -> dict[str, dict[str, float]]:
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import AppTest, local_script_runner

    timer = Timer()
    with ExitStack() as stack:
        for piece, path, name in PIECES:
            owner = resolve(path)
            stack.enter_context(mock.patch.object(owner, name, timer.wrap(piece, getattr(owner, name))))
        shared = ScriptCache()  # as the server's runtime holds one
        stack.enter_context(mock.patch.object(local_script_runner, "ScriptCache", lambda: shared))
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        at.run()  # the model and the sample: start-up, not a request
        runs: dict[str, list[dict[str, float]]] = {"fresh upload": [], "cached rerun": []}
        for photo in photos:
            data = photo.read_bytes()
            at.file_uploader(key="upload").set_value((photo.name, data, "image/jpeg"))
            runs["fresh upload"].append(run_page(at, timer))
            runs["cached rerun"].append(run_page(at, timer))
    return {
        kind: {piece: statistics.median(r.get(piece, 0.0) for r in results) for piece in results[0]}
        for kind, results in runs.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.request_profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--photos", type=int, default=5, help="different photos to upload (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cam-profile-") as tmp:
        split = profile(make_photos(Path(tmp), args.photos, seed=1))
    out = io.StringIO()
    pieces = list(dict.fromkeys(p for s in split.values() for p in s))
    print(f"{'CPU seconds (median)':<26}" + "".join(f"{kind:>16}" for kind in split), file=out)
    for piece in pieces:
        print(f"{piece:<26}" + "".join(f"{s.get(piece, 0.0):16.3f}" for s in split.values()), file=out)
    print(out.getvalue(), end="")
    if args.json:
        args.json.write_text(json.dumps(split, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
