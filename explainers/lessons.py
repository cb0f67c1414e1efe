"""Lessons from the CAM literature, each a claim checked live on a model and an image.

A lesson function computes its evidence now (no canned numbers) and returns a `Lesson`: the
claim, the panels that show it, the numbers measured, and a verdict derived from those numbers,
so a lesson that does not hold for this model and image says so and by how much.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from explainers.core import explain
from explainers.images import load_image
from explainers.metrics import class_scores, energy_in_box, saliency, spearman
from explainers.multi import explain_classes, fuse_layers, stage_ends, sweep
from explainers.render import overlay, to_numpy
from explainers.samples import SAMPLES_DIR
from models_zoo import ZooModel

CARTON = 478  # ImageNet "carton": the class ImageNet-W's watermark triggers


@dataclass(frozen=True)
class Panel:
    """One picture of a lesson: an RGB uint8 image and its caption."""

    caption: str
    image: np.ndarray


@dataclass(frozen=True, kw_only=True)
class Lesson:
    """A lesson's claim, the live evidence for it and the verdict drawn from that evidence.

    Attributes:
        key: registry key (set by `lesson`).
        title: short heading (set by `lesson`).
        claim: what the literature says, one sentence.
        source: the paper it comes from.
        panels: pictures that show the evidence.
        measurements: what was measured now: name -> value.
        holds: whether the measurements support the claim.
        verdict: one or two sentences built from the measurements.
        series: optional curves to plot: name -> values over `series_x`.
        series_x: labels of the curves' x axis.
        axis_titles: (x, y) axis titles of the curves.
    """

    key: str = ""
    title: str = ""
    claim: str
    source: str
    panels: list[Panel]
    measurements: dict[str, float]
    holds: bool
    verdict: str
    series: dict[str, list[float]] = field(default_factory=dict)
    series_x: list[str] = field(default_factory=list)
    axis_titles: tuple[str, str] = ("", "")


LessonFn = Callable[[ZooModel, Image.Image | None], Lesson]
LESSONS: dict[str, LessonFn] = {}
TITLES: dict[str, str] = {}
# Teaching order: the order of the issue and the literature, not of definition in this file.
ORDER = ("discrimination", "instances", "depth", "counterfactual", "sanity", "watermark")


def lesson(key: str, title: str) -> Callable[[LessonFn], LessonFn]:
    """Register a lesson function under ``key`` with its heading; its lessons carry both."""

    def add(fn: LessonFn) -> LessonFn:
        if key in LESSONS:
            raise ValueError(f"Lesson {key!r} is registered twice.")

        @functools.wraps(fn)
        def run(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
            return replace(fn(zoo, image), key=key, title=title)

        LESSONS[key] = run
        TITLES[key] = title
        return run

    return add


def sample(name: str) -> Image.Image:
    return load_image(SAMPLES_DIR / name)


def inputs(
    zoo: ZooModel, image: Image.Image | None, default: str
) -> tuple[Image.Image, torch.Tensor, np.ndarray]:
    """The lesson's image (a bundled sample unless one is given), its model input and its crop."""
    image = image or sample(default)
    crop, x = zoo.preprocess.crop_and_tensor(image)
    return image, x, np.asarray(crop)


def label(zoo: ZooModel, index: int) -> str:
    return zoo.labels[index]


@lesson("counterfactual", "Counterfactual: what would make the model less sure")
def counterfactual_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Grad-CAM paper section 5.2: negated gradients show what argues against the class."""
    image, x, crop = inputs(zoo, image, "cat_and_coffee.jpg")
    factual = explain(zoo.model, x, zoo.default_layer, ["gradcam"])
    target = factual.target
    counter = explain(zoo.model, x, zoo.default_layer, ["gradcam"], target=target, counterfactual=True)
    base = float(factual.probabilities[target])
    # Remove a region softly: blend it towards the model's zero input (its mean colour).
    removed = torch.cat([x * (1 - counter.maps["gradcam"].cpu()), x * (1 - factual.maps["gradcam"].cpu())])
    without_counter, without_factual = class_scores(zoo.model, removed, target).tolist()
    name = label(zoo, target)
    holds = without_counter > base > without_factual
    verdict = (
        f"Removing what the counterfactual map highlights moves P({name}) from {base:.3f} to "
        f"{without_counter:.3f} ({without_counter / base:.2f}×); removing what Grad-CAM highlights moves it "
        f"to {without_factual:.3f} ({without_factual / base:.2f}×). "
        + ("The claim holds here." if holds else "The claim does not hold for this model and image.")
    )
    return Lesson(
        claim="Negating the gradient highlights the regions that argue against the class; "
        "removing them makes the model more confident.",
        source="Selvaraju et al., Grad-CAM (arXiv 1610.02391), section 5.2",
        panels=[
            Panel("input", crop),
            Panel(f"Grad-CAM: evidence for {name}", overlay(crop, to_numpy(factual.maps["gradcam"]))),
            Panel(
                f"counterfactual: evidence against {name}", overlay(crop, to_numpy(counter.maps["gradcam"]))
            ),
        ],
        measurements={
            f"P({name})": base,
            "P after removing the counterfactual region": without_counter,
            "P after removing the Grad-CAM region": without_factual,
        },
        holds=holds,
        verdict=verdict,
    )


def add_watermark(image: Image.Image, size: int) -> Image.Image:
    """ImageNet-W's exact watermark (Li et al., CVPR 2023) on a square RGB image of side `size`."""
    from imagenet_w import AddWatermark

    return AddWatermark(image_size=size)(image)


@lesson("watermark", "A real shortcut in a real model: the 'carton' watermark")
def watermark_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """ImageNet-W: a faint Chinese-text watermark pushes ImageNet models towards 'carton'."""
    image = image or sample("chelsea.jpg")
    crop = zoo.preprocess.crop_image(image)
    marked = add_watermark(crop, crop.size[0])
    x_clean, x_marked = zoo.preprocess.normalise(crop), zoo.preprocess.normalise(marked)
    before = float(class_scores(zoo.model, x_clean, CARTON)[0])
    result = explain(zoo.model, x_marked, zoo.default_layer, ["gradcam"], target=CARTON)
    after = float(result.probabilities[CARTON])
    heatmap = to_numpy(result.maps["gradcam"])
    changed = np.abs(np.asarray(marked, np.int16) - np.asarray(crop, np.int16)).sum(-1) > 0
    rows = np.nonzero(changed.any(1))[0]
    band = np.zeros_like(changed)
    band[rows.min() : rows.max() + 1] = True
    inside, outside = float(heatmap[band].mean()), float(heatmap[~band].mean())
    density = inside / outside if outside > 0 else float("inf")
    rise = after / before if before > 0 else float("inf")
    holds = rise > 1.5 and density > 1.2
    verdict = (
        f"P(carton) went from {before:.5f} to {after:.5f} ({rise:.1f}×) with the watermark; Grad-CAM for "
        f"carton is {density:.1f}× as dense on the watermark band (rows {rows.min()}–{rows.max()}) as elsewhere. "
        + (
            "The shortcut shows here."
            if holds
            else "The shortcut does not show clearly for this model and image."
        )
    )
    crop_array, marked_array = np.asarray(crop), np.asarray(marked)
    return Lesson(
        claim="ImageNet classifiers associate a faint Chinese-text watermark with the class 'carton'.",
        source="Li et al., A Whac-A-Mole Dilemma / ImageNet-W (CVPR 2023)",
        panels=[
            Panel(f"without watermark: P(carton) = {before:.5f}", crop_array),
            Panel(f"with watermark: P(carton) = {after:.5f}", marked_array),
            Panel("Grad-CAM for carton, watermarked", overlay(marked_array, heatmap)),
        ],
        measurements={
            "P(carton) without watermark": before,
            "P(carton) with watermark": after,
            "rise (×)": rise,
            "Grad-CAM density on the band / elsewhere": density,
        },
        holds=holds,
        verdict=verdict,
    )


def two_classes(zoo: ZooModel, x: torch.Tensor, image_given: bool) -> tuple[int, int]:
    """The bundled collage's cat and espresso; for a user's image its top two classes."""
    with torch.inference_mode():
        probabilities = zoo.model(x.to(zoo.device)).softmax(-1)[0].cpu()
    if not image_given and len(zoo.labels) == 1000:
        cat = max(range(281, 286), key=lambda i: float(probabilities[i]))
        return cat, 967  # espresso
    first, second = probabilities.topk(2).indices.tolist()
    return first, second


@lesson("discrimination", "Where the class lives")
def discrimination_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Grad-CAM is class-discriminative; guided backprop alone barely is; Guided Grad-CAM is."""
    from explainers.guided import guided_to_image

    given = image is not None
    image, x, crop = inputs(zoo, image, "cat_and_coffee.jpg")
    methods = ["gradcam", "guided_backprop", "guided_gradcam"]
    first, second = two_classes(zoo, x, given)
    a, b = explain_classes(zoo.model, x, zoo.default_layer, methods, [first, second])
    rho = {m: spearman(saliency(a.maps[m]), saliency(b.maps[m])) for m in methods}
    name_a, name_b = label(zoo, first), label(zoo, second)
    holds = rho["gradcam"] < rho["guided_backprop"] - 0.3 and rho["guided_gradcam"] < rho["guided_backprop"]
    verdict = (
        f"Rank correlation between the maps for {name_a} and {name_b}: Grad-CAM {rho['gradcam']:+.2f}, "
        f"guided backprop {rho['guided_backprop']:+.2f}, Guided Grad-CAM {rho['guided_gradcam']:+.2f}. "
        + (
            "Grad-CAM separates the classes and guided backprop barely does, as claimed."
            if holds
            else "The claim does not hold clearly for this model and image."
        )
    )
    panels = [Panel("input", crop)]
    for result, name in [(a, name_a), (b, name_b)]:
        panels += [
            Panel(f"Grad-CAM: {name}", overlay(crop, to_numpy(result.maps["gradcam"]))),
            Panel(f"guided backprop: {name}", guided_to_image(result.maps["guided_backprop"])),
            Panel(f"Guided Grad-CAM: {name}", guided_to_image(result.maps["guided_gradcam"])),
        ]
    return Lesson(
        claim="Grad-CAM's maps for two classes in one image differ; guided backprop's are nearly the "
        "same (it is barely class-discriminative); Guided Grad-CAM combines the two.",
        source="Selvaraju et al., Grad-CAM (arXiv 1610.02391), section 3",
        panels=panels,
        measurements={f"Spearman, {m}": value for m, value in rho.items()},
        holds=holds,
        verdict=verdict,
    )


@lesson("instances", "Several instances of one class")
def instances_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Grad-CAM++ claims to cover several instances of a class better than Grad-CAM."""

    image, x, crop = inputs(zoo, image, "two_cats.jpg")
    result = explain(zoo.model, x, zoo.default_layer, ["gradcam", "gradcam++"])
    height, width = crop.shape[:2]
    left, right = (0, 0, width // 2, height), (width // 2, 0, width, height)
    shares, balance = {}, {}
    for method in ["gradcam", "gradcam++"]:
        heatmap = result.maps[method]
        shares[method] = (energy_in_box(heatmap, left), energy_in_box(heatmap, right))
        low, high = sorted(shares[method])
        balance[method] = low / high if high > 0 else 0.0
    name = label(zoo, result.target)
    gap = balance["gradcam++"] - balance["gradcam"]
    holds = gap > 0.05
    both_even = min(balance.values()) > 0.8
    verdict = (
        f"Share of each map's energy on the left / right object: Grad-CAM "
        f"{shares['gradcam'][0]:.0%} / {shares['gradcam'][1]:.0%}, Grad-CAM++ "
        f"{shares['gradcam++'][0]:.0%} / {shares['gradcam++'][1]:.0%}. "
        + (
            "Grad-CAM++ covers both instances more evenly, as claimed."
            if holds
            else "Both methods already split their energy almost evenly here, so this model and image "
            "do not show the difference the paper reports."
            if both_even
            else "Grad-CAM++ does not cover the instances more evenly here."
        )
    )
    return Lesson(
        claim="Grad-CAM++ highlights every instance of a class; Grad-CAM tends to favour one.",
        source="Chattopadhyay et al., Grad-CAM++ (arXiv 1710.11063)",
        panels=[
            Panel("input", crop),
            Panel(f"Grad-CAM: {name}", overlay(crop, to_numpy(result.maps["gradcam"]))),
            Panel(f"Grad-CAM++: {name}", overlay(crop, to_numpy(result.maps["gradcam++"]))),
        ],
        measurements={
            "Grad-CAM share, left": shares["gradcam"][0],
            "Grad-CAM share, right": shares["gradcam"][1],
            "Grad-CAM++ share, left": shares["gradcam++"][0],
            "Grad-CAM++ share, right": shares["gradcam++"][1],
            "balance gain of Grad-CAM++": gap,
        },
        holds=holds,
        verdict=verdict,
    )


# The sanity lesson re-initialises this many units from the top, once per seed of
# `explainers.sanity.DEFAULT_SEEDS`: the top units tell Adebayo et al.'s story, and 4 x 3 steps
# keep the lesson to seconds on a CPU.
SANITY_STEPS = 4


@lesson("sanity", "Sanity check: randomise the model")
def sanity_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Adebayo et al. 2018: a faithful map must change when the model's weights are randomised.

    Measured with the paper's four similarity measures over the cascade and three seeds; not
    measurable on an untrained model or when an original map is blank (`explainers.sanity.judge`).
    """
    from explainers.guided import guided_to_image
    from explainers.sanity import DEFAULT_SEEDS, JUDGED, MEASURES, judge, judge_untrained, sanity_check

    image, x, crop = inputs(zoo, image, "chelsea.jpg")
    methods = {"gradcam": "Grad-CAM", "guided_backprop": "guided backprop"}
    claim = (
        "Re-initialising the top layers changes Grad-CAM a lot but guided backprop little: "
        "guided backprop mostly reflects the image, not what the model learnt."
    )
    source = "Adebayo et al., Sanity Checks for Saliency Maps (NeurIPS 2018)"
    if not zoo.trained:  # the precondition first: a cascade on random weights would measure nothing
        maps = explain(zoo.model, x, zoo.default_layer, list(methods)).maps
        return Lesson(
            claim=claim,
            source=source,
            panels=[
                Panel("input", crop),
                Panel("Grad-CAM, random weights", overlay(crop, to_numpy(maps["gradcam"]))),
                Panel("guided backprop, random weights", guided_to_image(maps["guided_backprop"])),
            ],
            measurements={},
            holds=False,
            verdict="Not measurable here. " + judge_untrained(),
        )
    result = sanity_check(
        zoo.model,
        x,
        zoo.default_layer,
        list(methods),
        max_steps=SANITY_STEPS,
        seeds=DEFAULT_SEEDS,
        keep_maps=True,
    )
    verdicts = {m: judge(result, m, zoo.trained) for m in methods}
    unmeasurable = [f"{methods[m]}: {v.reason}" for m, v in verdicts.items() if v.status == "cannot judge"]
    holds = (
        not unmeasurable
        and verdicts["gradcam"].status == "changes"
        and verdicts["guided_backprop"].status == "stays"
    )
    steps = f"the top {len(result.steps)} units ({', '.join(result.step_names)})"
    if unmeasurable:
        verdict = "Not measurable here. " + " ".join(unmeasurable)
    else:
        numbers = "; ".join(
            f"{title}: " + ", ".join(f"{MEASURES[k]} {verdicts[m].overall[k]:.2f}" for k in JUDGED)
            for m, title in methods.items()
        )
        verdict = (
            f"After re-initialising {steps}, the mean similarity with the original map over the steps "
            f"and {len(result.seeds)} seeds is {numbers} (1: unchanged, below 0.5: changed). "
            + (
                "Grad-CAM changes with the weights; guided backprop stays close to the original, as claimed."
                if holds
                else f"Not as claimed here: Grad-CAM {_SANITY_WORDS[verdicts['gradcam'].status]}, guided "
                f"backprop {_SANITY_WORDS[verdicts['guided_backprop'].status]}."
            )
        )
    measurements = {
        f"{MEASURES[k]}, {title}": verdicts[m].overall[k]
        for m, title in methods.items()
        for k in MEASURES
        if k in verdicts[m].overall
    }
    return Lesson(
        claim=claim,
        source=source,
        panels=[
            Panel("input", crop),
            Panel("Grad-CAM, trained", overlay(crop, to_numpy(result.maps["gradcam"][0]))),
            Panel("Grad-CAM, top randomised", overlay(crop, to_numpy(result.maps["gradcam"][-1]))),
            Panel("guided backprop, trained", guided_to_image(result.maps["guided_backprop"][0])),
            Panel("guided backprop, top randomised", guided_to_image(result.maps["guided_backprop"][-1])),
        ],
        measurements=measurements,
        holds=holds,
        verdict=verdict,
        series={
            f"{title}, {MEASURES[k]}": [1.0, *result.curve(m, k)]
            for m, title in methods.items()
            for k in JUDGED
        },
        series_x=["trained", *result.step_names],
        axis_titles=(
            "re-initialised, from the top",
            f"similarity with the original map (mean of {len(result.seeds)} seeds)",
        ),
    )


_SANITY_WORDS = {
    "changes": "changes with the weights",
    "stays": "stays close to the original",
    "mixed": "changes by some measures and not by others",
}


@lesson("depth", "Depth: coarse versus fine")
def depth_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Deep layers: coarse, class-level maps; shallow layers: fine detail (LayerCAM keeps them usable)."""

    image, x, crop = inputs(zoo, image, "chelsea.jpg")
    layers = stage_ends(zoo.model, zoo.input_size)
    results = sweep(zoo.model, x, layers, ["gradcam", "layercam"])  # one forward, one backward
    ordered = list(results)
    deep, shallow = ordered[-1], ordered[0]
    # Coarseness: the share of the image where the map is above half its peak.
    area = {layer: float((results[layer].maps["layercam"] > 0.5).float().mean()) for layer in ordered}
    # Where the class is, by the deep map; how much of each shallow map lands there.
    focus = (results[deep].maps["gradcam"] > 0.5).cpu()

    def on_focus(method: str) -> float:
        values = saliency(results[shallow].maps[method]).cpu()
        total = float(values.sum())
        return float(values[focus].sum()) / total if total > 0 else 0.0

    on_target = {m: on_focus(m) for m in ["gradcam", "layercam"]}
    fused = fuse_layers(results, "layercam")
    holds = area[deep] > 2 * area[shallow]
    margin = on_target["layercam"] - on_target["gradcam"]
    shapes = {layer: tuple(results[layer].raw["layercam"].shape) for layer in ordered}
    verdict = (
        f"LayerCAM covers {area[deep]:.0%} of the image above half its peak at {deep} "
        f"({shapes[deep][0]}×{shapes[deep][1]}) against {area[shallow]:.1%} at {shallow} "
        f"({shapes[shallow][0]}×{shapes[shallow][1]}). At {shallow}, {on_target['layercam']:.0%} of LayerCAM's "
        f"energy falls on the region the deep map marks, against {on_target['gradcam']:.0%} of Grad-CAM's"
        + (
            " (LayerCAM stays on the object better)."
            if margin > 0.05
            else " (little difference here)."
            if margin > -0.05
            else " (Grad-CAM does better here)."
        )
        + (
            " Coarse deep maps and fine shallow ones, as claimed."
            if holds
            else " The deep map is not clearly coarser than the shallow one for this model and image."
        )
    )
    name = label(zoo, results[deep].target)
    panels = [Panel("input", crop)]
    panels += [
        Panel(
            f"LayerCAM at {layer} ({shapes[layer][0]}×{shapes[layer][1]})",
            overlay(crop, to_numpy(results[layer].maps["layercam"])),
        )
        for layer in ordered
    ]
    panels += [
        Panel(f"Grad-CAM at {shallow}", overlay(crop, to_numpy(results[shallow].maps["gradcam"]))),
        Panel(f"LayerCAM fused over all stages: {name}", overlay(crop, to_numpy(fused))),
    ]
    return Lesson(
        claim="Deep layers give coarse, class-level maps; shallow layers give fine detail, which "
        "LayerCAM's element-wise weights are meant to keep on the object.",
        source="Selvaraju et al. 2017 (section 7.1); Jiang et al., LayerCAM (IEEE TIP 2021)",
        panels=panels,
        measurements={
            f"area above half peak, {deep}": area[deep],
            f"area above half peak, {shallow}": area[shallow],
            f"LayerCAM energy on the object, {shallow}": on_target["layercam"],
            f"Grad-CAM energy on the object, {shallow}": on_target["gradcam"],
        },
        holds=holds,
        verdict=verdict,
        series={"LayerCAM area above half peak": [area[layer] for layer in ordered]},
        series_x=ordered,
        axis_titles=("layer, shallow to deep", "share of the image above half the peak"),
    )


def teaching_order() -> list[str]:
    """Lesson keys in teaching order (any lesson missing from ORDER comes last)."""
    return [key for key in ORDER if key in LESSONS] + [key for key in LESSONS if key not in ORDER]
