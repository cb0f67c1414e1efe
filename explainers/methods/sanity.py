"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
arXiv 1810.03292): does a map change when the model it explains is destroyed?

Cascading randomisation re-initialises the model's layers from the output back, one unit at a
time, keeping earlier units random, and recomputes every map after each step. A map that
depends on what the model learned (Grad-CAM) decorrelates at once; one that mostly reflects the
image and the ReLU pattern (guided backprop) stays close to the original.

As in the paper, each map after a step is compared with the original by four similarity
measures (`MEASURES`): Spearman rank correlation of the absolute maps and of the signed maps,
the structural similarity (SSIM) and the Pearson correlation of HOG features. For Grad-CAM
and the other CAMs, whose maps are non-negative, the two Spearman values coincide.

A re-initialised BatchNorm layer has running statistics 0 and 1 and normalises nothing; in a
deep network the signal then fades with every re-initialised block until the model is a
constant function and every map is blank or arbitrary. So after each step the BatchNorm layers
re-initialised so far get their statistics back from synthetic images
(`models_zoo.untrained.recalibrate_batchnorm`): the randomised units compute random functions of
their input at the scale of a trained network, as in the paper, instead of vanishing.

The verdict (`judge`) reads the whole cascade, not one step: the mean similarity over every
step and over several seeds. All work happens on deep copies of the model: the
shared model is never modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from explainers.methods.capture import model_device, resolve_layer
from explainers.methods.core import explain
from explainers.methods.metrics import hog_similarity, is_blank, scaled_saliency, signed_map, spearman, ssim
from models_zoo.untrained import batchnorm_layers, recalibrate_batchnorm

# Containers whose children are randomised one by one rather than all at once.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

# Similarity of a map after a randomisation step with the original, as in Adebayo et al.
MEASURES: dict[str, str] = {
    "spearman_abs": "Spearman ρ (absolute)",
    "spearman": "Spearman ρ (signed)",
    "ssim": "SSIM",
    "hog": "HOG similarity",
}
# The measures the verdict reads: for non-negative maps the signed Spearman repeats the
# absolute one, and for guided maps the sign of the gradient flips with the class-score's
# sign, so the paper reads the absolute value as the evidence of the map's ranking.
JUDGED = ("spearman_abs", "ssim", "hog")
# A map "changes with the model" when its mean similarity over the cascade and the seeds is
# below this on each judged measure, and "stays like the original" when it is above it on all of
# them. Trained EfficientNet-Lite0 on Chelsea, three seeds, the top 6 units: Grad-CAM 0.09 /
# 0.24 / 0.05 (Spearman / SSIM / HOG), guided backprop 0.99 / 0.98 / 0.98; all 21 units:
# Grad-CAM 0.14 / 0.28 / 0.05, guided backprop 0.77 / 0.66 / 0.69 (it too changes once the
# lowest layers are random).
CHANGED_BELOW = 0.5
# Synthetic images per BatchNorm recalibration in the cascade (one per step): two images of
# h x w positions give every channel hundreds of samples, at a quarter of the cost of eight.
CASCADE_CALIBRATION_IMAGES = 2
# Seeds of the verdict: Spearman at one step swings between -0.58 and 0.75 across seeds on an
# unrecalibrated cascade; the mean over seeds and steps does not hinge on one draw.
DEFAULT_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class SanityResult:
    """What `sanity_check` returns.

    Attributes:
        steps: the randomisation steps, top (output) first: each a tuple of module names
            re-initialised at that step (on top of all earlier steps).
        similarities: method -> measure (a key of `MEASURES`) -> one list per seed of one value
            per step: the similarity of the map after that step with the original map.
        target: the explained class (the original model's choice when none was given).
        seeds: the seeds of the cascades, one per list in ``similarities``.
        blank: method -> whether its original map is blank (then nothing can be judged).
        blank_after: method -> the share of the maps after the steps (all seeds) that are blank.
        maps: method -> [original map, map after step 1, ...] of the first seed, as shown
            ((H, W) for CAMs, (H, W, 3) for guided maps), on the CPU; kept only when asked for.
    """

    steps: tuple[tuple[str, ...], ...]
    similarities: dict[str, dict[str, list[list[float]]]]
    target: int
    seeds: tuple[int, ...] = (0,)
    blank: dict[str, bool] = field(default_factory=dict)
    blank_after: dict[str, float] = field(default_factory=dict)
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def step_names(self) -> list[str]:
        """One short label per step, e.g. "_fc" or "_blocks.15 + _blocks.14"."""
        return [" + ".join(step) for step in self.steps]

    @property
    def methods(self) -> list[str]:
        return list(self.similarities)

    def curve(self, method: str, measure: str = "spearman_abs") -> list[float]:
        """One measure after each step, the mean over the seeds."""
        runs = self.similarities[method][measure]
        return [sum(values) / len(values) for values in zip(*runs, strict=True)]

    @property
    def correlations(self) -> dict[str, list[float]]:
        """method -> Spearman ρ of the absolute maps after each step (mean over the seeds)."""
        return {method: self.curve(method) for method in self.similarities}

    def overall(self, method: str, measure: str) -> float:
        """The mean of a measure over every step of the cascade and every seed (NaN without steps)."""
        curve = self.curve(method, measure)
        return sum(curve) / len(curve) if curve else math.nan


@dataclass(frozen=True)
class SanityVerdict:
    """What the cascade says about one method's map.

    Attributes:
        status: "changes" (the map depends on the learned weights: it passes the sanity check),
            "stays" (it stays like the original: it fails), "mixed" (the measures disagree) or
            "cannot judge".
        overall: measure -> the mean over the cascade and the seeds (empty when nothing could
            be judged).
        reason: one sentence that says why, with the numbers.
    """

    status: str
    overall: dict[str, float]
    reason: str

    @property
    def passes(self) -> bool:
        return self.status == "changes"

    @property
    def evidence(self) -> str:
        """The judged means in words, e.g. "Spearman ρ (absolute) 0.09, SSIM 0.24, HOG similarity 0.05"."""
        return ", ".join(f"{MEASURES[m]} {self.overall[m]:.2f}" for m in JUDGED if m in self.overall)


def randomisation_steps(model: nn.Module) -> list[tuple[str, ...]]:
    """The cascade of Adebayo et al.: the model's units from the output back, one step each.

    A unit is a child module that carries parameters; `nn.Sequential`, `nn.ModuleList` and
    `nn.ModuleDict` are opened and their children taken one by one (a ResNet's `layer4.1`,
    EfficientNet's `_blocks.15`). The order is the registration order, reversed: for the common
    architectures that is the forward order from the output back.

    Returns:
        One single-module step per unit, top first, e.g. [("fc",), ("layer4.1",), ...].
    """
    units: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if not any(True for _ in child.parameters()):
                continue
            if isinstance(child, _CONTAINERS):
                walk(child, f"{full}.")
            else:
                units.append(full)

    walk(model, "")
    return [(unit,) for unit in reversed(units)]


def reinitialise(module: nn.Module) -> None:
    """Re-initialise a module in place with its submodules' own `reset_parameters()` (and
    `reset_running_stats()` for batch norms); parameters of modules without one are drawn
    from N(0, 0.01²)."""
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        elif own:
            with torch.no_grad():
                for parameter in own:
                    parameter.normal_(0, 0.01)


def compare_maps(original: torch.Tensor, changed: torch.Tensor) -> dict[str, float]:
    """The four `MEASURES` between an original map and the map after randomisation.

    Spearman (absolute) ranks `scaled_saliency` values; Spearman (signed) ranks `signed_map`
    values (a guided map's channel sum; a CAM itself); SSIM and HOG compare the
    `scaled_saliency` maps in [0, 1] (guided maps scaled by their 99th percentile, as in the
    paper's figures, so that a few extreme pixels do not make every map look black).
    """
    a, b = scaled_saliency(original).cpu(), scaled_saliency(changed).cpu()
    return {
        "spearman_abs": spearman(a, b),
        "spearman": spearman(signed_map(original).cpu(), signed_map(changed).cpu()),
        "ssim": ssim(a, b),
        "hog": hog_similarity(a, b),
    }


def cascade_copies(
    model: nn.Module,
    cascade: Sequence[Sequence[str]],
    seed: int,
    input_size: tuple[int, int],
    channels: int = 3,
    recalibrate: bool = True,
) -> Iterator[nn.Module]:
    """A deep copy of the model after each step of a cascade (the same copy, randomised further).

    Each step re-initialises its modules (`reinitialise`); with ``recalibrate`` the BatchNorm
    layers re-initialised so far then get statistics from synthetic images (see the module
    docstring). The copy is in eval mode when yielded. Re-initialisation draws from a forked
    random state seeded with ``seed``, so the global random state is left as it was.
    """
    randomised = copy.deepcopy(model).eval()
    reset: list[nn.Module] = []  # BatchNorm layers re-initialised so far
    device = model_device(model)
    devices = [device.index or 0] if device.type == "cuda" else []
    for index, step in enumerate(cascade):
        with torch.random.fork_rng(devices=devices):
            # One seed per step: the draws do not depend on what the caller does between steps.
            torch.manual_seed(seed * 1_000_003 + index)
            for name in step:
                module = resolve_layer(randomised, name)
                reinitialise(module)
                reset += batchnorm_layers(module)
        if recalibrate and reset:
            recalibrate_batchnorm(
                randomised, input_size, seed, reset, count=CASCADE_CALIBRATION_IMAGES, channels=channels
            )
        yield randomised


def sanity_check(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    methods: Sequence[str],
    target: int | None = None,
    steps: Sequence[Sequence[str]] | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    keep_maps: bool = False,
    seeds: Sequence[int] | None = None,
    recalibrate: bool = True,
) -> SanityResult:
    """Cascading randomisation: how similar each method's map stays to the original, per step.

    Args:
        model: the trained classifier, in eval mode; only deep copies are randomised.
        x: the preprocessed image, (1, channels, H, W).
        layer: the target layer of the CAMs (it is also randomised when its turn comes).
        methods: names from `METHODS`.
        target: the class to explain; None: the original model's top-1, kept for every step.
        steps: groups of module names, top first; None uses `randomisation_steps(model)`.
        max_steps: stop after this many steps.
        seed: the seed of a single cascade (when ``seeds`` is None).
        keep_maps: also return the maps after each step of the first seed, for display.
        seeds: run one cascade per seed (the verdict averages over them); None: ``(seed,)``.
        recalibrate: after each step, re-estimate the statistics of the BatchNorm layers
            re-initialised so far (see the module docstring); False re-initialises only.

    Returns:
        A `SanityResult` with the four `MEASURES` per method, seed and step. The global
        random state is left as it was.

    Raises:
        ExplainerInputError: unknown layer, method or target, as in `explain`.
    """
    original = explain(model, x, layer, methods, target=target)
    target = original.target
    cascade = [tuple(step) for step in (randomisation_steps(model) if steps is None else steps)]
    if max_steps is not None:
        cascade = cascade[:max_steps]
    for step in cascade:
        for name in step:
            resolve_layer(model, name)  # fail early, with close matches, on a wrong name
    seeds = (seed,) if seeds is None else tuple(seeds)
    if not seeds:
        raise ValueError("Give at least one seed.")

    reference = {name: original.maps[name].cpu() for name in methods}
    similarities = {name: {measure: [] for measure in MEASURES} for name in methods}
    maps: dict[str, list[torch.Tensor]] = {name: [reference[name]] for name in methods}
    blank_counts = dict.fromkeys(methods, 0)
    for run, run_seed in enumerate(seeds):
        runs = {name: {measure: [] for measure in MEASURES} for name in methods}
        size = (tuple(x.shape[-2:]), x.shape[1])
        for randomised in cascade_copies(model, cascade, run_seed, *size, recalibrate=recalibrate):
            result = explain(randomised, x, layer, methods, target=target)
            for name in methods:
                changed = result.maps[name].cpu()
                blank_counts[name] += is_blank(changed)
                for measure, value in compare_maps(reference[name], changed).items():
                    runs[name][measure].append(value)
                if keep_maps and run == 0:
                    maps[name].append(changed)
        for name in methods:
            for measure in MEASURES:
                similarities[name][measure].append(runs[name][measure])
    total = max(1, len(seeds) * len(cascade))
    return SanityResult(
        steps=tuple(cascade),
        similarities=similarities,
        target=target,
        seeds=seeds,
        blank={name: is_blank(reference[name]) for name in methods},
        blank_after={name: blank_counts[name] / total for name in methods},
        maps=maps if keep_maps else {},
    )


def judge(result: SanityResult, method: str, trained: bool = True) -> SanityVerdict:
    """Does the method's map depend on the learned weights? Read over the cascade and the seeds.

    Cannot judge: an untrained model (there is nothing learned to destroy), a blank original
    map (nothing to compare with), a cascade of fewer than two steps, or randomised maps that
    are mostly blank (their similarity would measure blankness). Otherwise the mean of each
    `JUDGED` measure over the whole cascade and the seeds decides: all below
    `CHANGED_BELOW`: "changes" (passes); none below: "stays" (fails); else "mixed".

    Args:
        result: a `sanity_check` result that includes ``method``.
        method: the method to judge.
        trained: whether the model had learned weights (`ZooModel.trained`).
    """
    if not trained:
        return SanityVerdict("cannot judge", {}, judge_untrained())
    if result.blank.get(method, False):
        return SanityVerdict(
            "cannot judge", {}, "Cannot judge: the original map is blank, so there is nothing to compare."
        )
    if len(result.steps) < 2:
        return SanityVerdict(
            "cannot judge",
            {},
            "Cannot judge: the verdict reads the cascade; re-initialise at least 2 layers.",
        )
    if result.blank_after.get(method, 0.0) > 0.5:
        return SanityVerdict(
            "cannot judge",
            {},
            f"Cannot judge: {result.blank_after[method]:.0%} of the maps after randomisation are blank.",
        )
    overall = {measure: result.overall(method, measure) for measure in MEASURES}
    judged = [overall[measure] for measure in JUDGED]
    numbers = SanityVerdict("", overall, "").evidence
    seeds = "1 seed" if len(result.seeds) == 1 else f"{len(result.seeds)} seeds"
    where = f"mean over {len(result.steps)} steps and {seeds}: {numbers}; threshold {CHANGED_BELOW}"
    if all(value < CHANGED_BELOW for value in judged):
        return SanityVerdict("changes", overall, f"The map changes with the model ({where}).")
    if all(value >= CHANGED_BELOW for value in judged):
        return SanityVerdict("stays", overall, f"The map stays like the original ({where}).")
    return SanityVerdict("mixed", overall, f"The measures disagree ({where}).")


def judge_untrained() -> str:
    """Why the sanity check cannot judge a model with random weights (checked before any cascade)."""
    return (
        "Cannot judge: the model has random weights, so there is nothing learned for the "
        "randomisation to destroy."
    )
