"""What the benchmark modules share: the timing loop, Pearson agreement and the method list."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

GRADIENT_CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def time_ms(
    fns: dict[str, Callable[[], object]],
    device: str | torch.device,
    repeats: int,
    warmup: int = 1,
    summary: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Wall time of each function in milliseconds, ``summary`` (median, or min for best-of) over
    ``repeats`` runs after ``warmup`` untimed calls each. The functions' runs are interleaved, so
    a machine whose load drifts (shared CPUs) biases none of them; on a GPU each run is
    synchronised, so the time is that of finished work."""
    cuda = torch.device(device).type == "cuda"
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: summary(values) for name, values in times.items()}


def pearson(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Pearson correlation of two maps, flattened, in float64."""
    a, b = (np.asarray(torch.as_tensor(v).detach().cpu(), dtype=np.float64).ravel() for v in (a, b))
    return float(np.corrcoef(a, b)[0, 1])
