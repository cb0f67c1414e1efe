"""Benchmark case for auditing many images: per-image explain + faithfulness against the batched path.

    python -m benchmarks.cases_batch [--device cpu] [--repeats 3] [--images 16] [--threads 2]

The audit's work per image, for the default methods (Grad-CAM, Grad-CAM++) at the offline default
model (EfficientNet-Lite0, layer "final") and the audit's 16 deletion/insertion steps, on N
augmented bundled samples (`explainers.services.samples.augmented_samples`):

- per image: `explain` then `faithfulness` for each image, as `explainers.audit` did;
- batched: `explain_batch` then `faithfulness_batch` over all N images.

Rows give the median over ``repeats`` runs (interleaved, after one warm-up: the check that both
paths agree) in milliseconds per image, wall time and process CPU time; ratio = batched / per
image (below 1: batching is faster; 1 / ratio is the gain in images per second). The explanations
alone are timed the same way; the scores are the rest (about 65 forward passes per image).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from explainers import explain, explain_batch
from explainers.methods.metrics import faithfulness, faithfulness_batch
from explainers.services.samples import augmented_samples
from models_zoo import load_model

METHODS = ["gradcam", "gradcam++"]
STEPS = 16


def time_both(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function over ``repeats`` interleaved runs (warm them up first)."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        name: (statistics.median(t[0] for t in values), statistics.median(t[1] for t in values))
        for name, values in times.items()
    }


def run(device: str | torch.device = "cpu", repeats: int = 3, count: int = 16) -> list[dict]:
    """Time the per-image and batched audit paths on ``count`` images; one row per measurement."""
    device = torch.device(device)
    zoo = load_model("efficientnet_lite0", device=device)
    model, layer = zoo.model, zoo.default_layer
    x = torch.cat([zoo.preprocess.crop_and_tensor(image)[1] for image in augmented_samples(count)]).to(device)
    singles = [x[i : i + 1] for i in range(count)]

    def explain_each() -> list:
        return [explain(model, xi, layer, METHODS) for xi in singles]

    def score_each(results: list) -> list:
        return [faithfulness(model, xi, r.maps, r.target, steps=STEPS) for xi, r in zip(singles, results)]

    def explain_all() -> list:
        return explain_batch(model, x, layer, METHODS)

    def score_all(results: list) -> list:
        return faithfulness_batch(  # one-thread passes side by side, as the audit runs them
            model,
            x,
            [r.maps for r in results],
            [r.target for r in results],
            steps=STEPS,
            workers=torch.get_num_threads(),
        )

    # Warm-up, and a check that the two paths agree: the same targets, and given the same maps the
    # same scores. (Across the paths the maps differ by float rounding, 1e-7, which can swap the
    # order of pixels with near-equal values, so end-to-end AUCs differ slightly more: reported.)
    each, batched = explain_each(), explain_all()
    assert [r.target for r in each] == [r.target for r in batched]
    each_scores, batched_scores = score_each(each), score_all(batched)
    same_maps = faithfulness(model, singles[0], batched[0].maps, batched[0].target, steps=STEPS)
    for name in METHODS:
        assert abs(same_maps[name].deletion_auc - batched_scores[0][name].deletion_auc) <= 1e-5, name
        assert abs(same_maps[name].insertion_auc - batched_scores[0][name].insertion_auc) <= 1e-5, name
    auc_gap = max(
        abs(getattr(ours[name], key) - getattr(theirs[name], key))
        for ours, theirs in zip(batched_scores, each_scores)
        for name in METHODS
        for key in ("deletion_auc", "insertion_auc")
    )

    times = time_both(
        {
            "per image": lambda: score_each(explain_each()),
            "batched": lambda: score_all(explain_all()),
            "explain per image": explain_each,
            "explain_batch": explain_all,
        },
        repeats,
    )

    def ms(name: str) -> tuple[float, float]:
        wall, cpu = times[name]
        return 1000 * wall / count, 1000 * cpu / count

    rows = []
    for case, ours, reference in [
        ("audit: explain + faithfulness", "batched", "per image"),
        ("explanations only", "explain_batch", "explain per image"),
    ]:
        (ours_ms, ours_cpu), (reference_ms, reference_cpu) = ms(ours), ms(reference)
        rows.append(
            {
                "case": f"{case}, lite0, {count} images",
                "ours_ms": ours_ms,
                "reference_ms": reference_ms,
                "ratio": ours_ms / reference_ms,
                "ours_cpu_ms": ours_cpu,
                "reference_cpu_ms": reference_cpu,
                "note": f"ms per image; ours: {ours}, reference: {reference}; "
                f"{reference_ms / ours_ms:.2f}x images/s (CPU time {reference_cpu / ours_cpu:.2f}x)"
                + (f"; largest AUC difference {auc_gap:.1e}" if ours == "batched" else ""),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.repeats, args.images)
    print(
        f"device {args.device}, {torch.get_num_threads()} CPU threads, medians of {args.repeats}, ms per image"
    )
    print(
        f"{'case':<46} {'batched':>9} {'per image':>10} {'ratio':>6} {'CPU batched':>12} {'CPU per image':>14}"
    )
    for row in rows:
        print(
            f"{row['case']:<46} {row['ours_ms']:>9.1f} {row.get('reference_ms', float('nan')):>10.1f} "
            f"{row.get('ratio', float('nan')):>6.2f} {row['ours_cpu_ms']:>12.1f} "
            f"{row.get('reference_cpu_ms', float('nan')):>14.1f}  {row['note']}"
        )


if __name__ == "__main__":
    main()
