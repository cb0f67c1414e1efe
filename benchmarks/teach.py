"""CPU time of the teaching tools on the default model (EfficientNet-Lite0, Chelsea, the final
feature map, the default methods):

    python -m benchmarks.teach [--repeats N]

- steps: what keeping the steps adds to an explanation (`map_steps` on a request's evidence),
  and the page drawing an opened step view (an AppTest rerun with the Grad-CAM section open
  minus one with it closed, the explanation cached);
- edit: one edit round (the edited crop's top 5 and its explanation with the default methods);
- occlusion: the map at the default settings (window 32, stride 16: 169 forward passes);
- download: writing the view's HTML file, as the page's button does (every image encoded: the
  input, five maps, three sums, the edited crop and its five maps).

CPU time is the process's (all threads), from `time.process_time`; wall time beside it. Medians
over the repeats after one warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def page_step_view(repeats: int) -> tuple[float, float]:
    """The page's extra time to draw the opened Grad-CAM step view (explanation cached)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()

    def rerun(opened: bool) -> None:
        at.session_state["steps_open:gradcam"] = opened
        at.run()
        assert not at.exception, at.exception

    closed = measure(lambda: rerun(False), repeats)
    opened = measure(lambda: rerun(True), repeats)
    return opened[0] - closed[0], opened[1] - closed[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from explainers import service
    from explainers.methods.core import Evidence
    from explainers.methods.steps import map_steps
    from explainers.services.edits import ImageEdit
    from models_zoo import load_model

    zoo = load_model("efficientnet_lite0", device="cpu")
    image = Image.open(ROOT / "assets" / "samples" / "chelsea.jpg").convert("RGB")
    methods = list(service.default_methods())
    cams = [m for m in methods if service.METHODS[m].kind == "cam"]
    x = zoo.preprocess(image)
    evidence = Evidence(zoo.model, x, ["final"])
    for name in methods:
        evidence.result(name, "final")
    edit = ImageEdit((56, 56, 168, 168), "grey")
    result = service.run_explanation(zoo, image, "final", methods)

    def edit_round() -> None:
        service.predict(zoo, image, edit=edit)
        service.run_explanation(zoo, image, "final", methods, result.target, edit=edit)

    import app_teach  # the page's own download callable (imports Streamlit, draws nothing here)

    predictions = service.predict(zoo, image)
    edited = app_teach.EditOutcome(
        edit,
        service.predict(zoo, image, edit=edit),
        service.run_explanation(zoo, image, "final", methods, result.target, edit=edit),
    )
    parts = app_teach.ViewParts(
        title="benchmark",
        settings=[("Image", "Chelsea the cat")],
        predictions=predictions,
        result=result,
        input_view=result.image,
        input_caption="input",
        colormap="jet",
        opacity=0.5,
        scores={},
        extra=[],
        agreement={},
        edit=edited,
        link="http://localhost:8501/?page=explore",
        uploaded=False,
        notes=[],
    )

    def download() -> str:
        return app_teach.view_report(parts)

    rows = {
        "explanation (default methods)": measure(
            lambda: service.run_explanation(zoo, image, "final", methods), args.repeats
        ),
        "steps kept (map_steps, 3 CAMs)": measure(lambda: map_steps(evidence, cams, "final"), args.repeats),
        "edit round (top 5 + explanation)": measure(edit_round, args.repeats),
        "occlusion, default (169 passes)": measure(
            lambda: service.run_occlusion(zoo, image, "final", result.target), args.repeats
        ),
        "download (HTML: 15 images, edit included)": measure(download, args.repeats),
        "page: step view opened (AppTest)": page_step_view(args.repeats),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':40} {'CPU s':>8} {'wall s':>8}")
    for name, (cpu, wall) in rows.items():
        print(f"{name:40} {cpu:8.3f} {wall:8.3f}")


if __name__ == "__main__":
    main()
