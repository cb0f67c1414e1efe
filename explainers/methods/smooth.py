"""Smoothing options of the CAMs: eigen_smooth and aug_smooth, as the `grad-cam` package offers them.

- eigen_smooth replaces the channel sum sum_k w_k A^k by the projection of the weighted
  activations onto their first principal component (as in Eigen-CAM, Muhammad & Yeasin 2020,
  arXiv 2008.00299): less noise, at the cost of a sign to choose.
- aug_smooth averages each map over test-time augmentations of the input, mapped back.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from explainers.methods.core import Evidence, Explanation, collect, get_method, normalise

# The `grad-cam` package's default test-time augmentations (ttach): a horizontal flip times a
# multiplication of the pixel values (not a resize) by each factor.
FLIPS = (False, True)
FACTORS = (0.9, 1.0, 1.1)
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple(itertools.product(FLIPS, FACTORS))


def eigen_projection(weighted: torch.Tensor, counterfactual: bool = False) -> torch.Tensor:
    """Project weighted activations (k, C, h, w) onto their first principal component: (k, h, w).

    As the package's ``get_2d_projection``: the (h*w, C) matrix of each target is centred per
    channel, and its rows are projected on the first right singular vector. An SVD fixes that
    vector only up to sign; the package leaves the sign to LAPACK, we flip it so that the
    largest magnitude is positive (the package's ``get_2d_projection_with_sign_correction``,
    Seg-Eigen-CAM eq. 13), so the map shows the dominant direction rather than its opposite.

    That correction would undo a counterfactual: the counterfactual Grad-CAM's weighted
    activations are the plain ones negated, their principal component is the same up to sign,
    and the correction would turn it back. With ``counterfactual`` the sign is chosen on the
    negated activations (which point the plain way) and then flipped, so the map is the
    opposite side of the dominant direction, as ReLU(-sum) is for the plain channel sum.
    """
    if counterfactual:
        return -eigen_projection(-weighted)
    k, channels, h, w = weighted.shape
    rows = torch.nan_to_num(weighted.float(), nan=0.0).reshape(k, channels, h * w).transpose(1, 2)
    rows = rows - rows.mean(1, keepdim=True)  # (k, h*w, C), each channel centred
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    projection = (rows @ vh[:, 0, :, None])[..., 0]  # (k, h*w)
    flip = projection.amin(1).abs() > projection.amax(1).abs()
    projection = torch.where(flip[:, None], -projection, projection)
    return projection.reshape(k, h, w).to(weighted.dtype)


def augment(x: torch.Tensor, flip: bool, factor: float) -> torch.Tensor:
    """The input flipped left-right (if ``flip``) with its pixel values scaled by ``factor``."""
    return (x.flip(-1) if flip else x) * factor


def explain_augmented(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    methods: Sequence[str],
    targets: Sequence[int] | None,
    counterfactual: bool,
    options: Mapping[str, object],
    start: float | None = None,
) -> Explanation:
    """`explain` with ``aug_smooth=True``: each CAM averaged over `AUGMENTATIONS`.

    Every augmented input gets its own forward and backward pass (six in all); each map is
    flipped back before the average, which is then min-max normalised again. Unlike the
    package, the class is fixed to the one explained on the original image (the package lets
    each augmented input pick its own top-1). Guided (input-gradient) maps and the logits
    come from the original image alone; ``raw`` holds the average of the flipped-back raw maps.
    """
    start = time.perf_counter() if start is None else start
    progress = options.get("progress")

    def evidence_for(index: int, flip: bool, factor: float, targets: Sequence[int] | None) -> Evidence:
        step_options = dict(options)
        if callable(progress):
            step_options["progress"] = _offset_progress(progress, index, len(AUGMENTATIONS))
        return Evidence(
            model, augment(x, flip, factor), [layer], targets, counterfactual, options=step_options
        )

    # The original image first: it fixes the class and gives the guided maps and the logits.
    base = evidence_for(0, False, 1.0, targets)
    explanation = collect(base, methods, layer)
    cams = [name for name in methods if get_method(name).kind == "cam"]
    raw_sum = {name: explanation.raw[name].clone() for name in cams}
    map_sum = {name: explanation.maps[name].clone() for name in cams}
    others = [aug for aug in AUGMENTATIONS if aug != (False, 1.0)]
    for index, (flip, factor) in enumerate(others, start=1):
        evidence = evidence_for(index, flip, factor, base.targets.tolist())
        for name in cams:
            raw, shown = evidence.result(name, layer)
            raw_sum[name] += raw[0].flip(-1) if flip else raw[0]
            map_sum[name] += shown[0].flip(-1) if flip else shown[0]
    n = len(AUGMENTATIONS)
    maps = dict(explanation.maps)
    raw = dict(explanation.raw)
    for name in cams:
        mean = map_sum[name][None] / n
        maps[name] = normalise(mean, mean.flatten(1).amax(1))[0]
        raw[name] = raw_sum[name] / n
    return dataclasses.replace(
        explanation,
        maps=maps,
        raw=raw,
        seconds=time.perf_counter() - start,
        extras={**explanation.extras, "aug_smooth": f"mean over {n} augmented inputs"},
    )


def _offset_progress(progress: Callable, index: int, count: int) -> Callable[[int, int], object]:
    """Report the progress of augmentation ``index`` of ``count`` as progress over all of them."""

    def report(done: int, total: int) -> object:
        return progress(index * total + done, count * total)

    return report
