"""Lessons from the CAM literature, each a claim checked live on a model and an image.

A lesson function computes its evidence now (no canned numbers) and returns a `Lesson`: the
claim, the panels that show it, the numbers measured, and a verdict derived from those numbers,
so a lesson that does not hold for this model and image says so and by how much.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from explainers.core import explain
from explainers.images import load_image
from explainers.render import overlay, to_numpy
from explainers.samples import SAMPLES_DIR
from models_zoo import ZooModel

CARTON = 478  # ImageNet "carton": the class ImageNet-W's watermark triggers


@dataclass(frozen=True)
class Panel:
    """One picture of a lesson: an RGB uint8 image and its caption."""

    caption: str
    image: np.ndarray


@dataclass(frozen=True)
class Lesson:
    """A lesson's claim, the live evidence for it and the verdict drawn from that evidence.

    Attributes:
        key: registry key.
        title: short heading.
        claim: what the literature says, one sentence.
        source: the paper it comes from.
        panels: pictures that show the evidence.
        measurements: what was measured now: name -> value.
        holds: whether the measurements support the claim.
        verdict: one or two sentences built from the measurements.
        series: optional curves to plot: name -> values over `series_x`.
        series_x: labels of the curves' x axis.
    """

    key: str
    title: str
    claim: str
    source: str
    panels: list[Panel]
    measurements: dict[str, float]
    holds: bool
    verdict: str
    series: dict[str, list[float]] = field(default_factory=dict)
    series_x: list[str] = field(default_factory=list)


LessonFn = Callable[[ZooModel, Image.Image | None], Lesson]
LESSONS: dict[str, LessonFn] = {}


def lesson(key: str) -> Callable[[LessonFn], LessonFn]:
    """Register a lesson function under ``key`` (in teaching order)."""

    def add(fn: LessonFn) -> LessonFn:
        if key in LESSONS:
            raise ValueError(f"Lesson {key!r} is registered twice.")
        LESSONS[key] = fn
        return fn

    return add


def sample(name: str) -> Image.Image:
    return load_image(SAMPLES_DIR / name)


def class_probability(zoo: ZooModel, x: torch.Tensor, target: int) -> float:
    with torch.inference_mode():
        return float(zoo.model(x.to(zoo.device)).softmax(-1)[0, target])


def label(zoo: ZooModel, index: int) -> str:
    return zoo.labels[index]


@lesson("counterfactual")
def counterfactual_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Grad-CAM paper section 5.2: negated gradients show what argues against the class."""
    image = image or sample("cat_and_coffee.jpg")
    x = zoo.preprocess(image)
    crop = np.asarray(zoo.preprocess.crop_image(image))
    factual = explain(zoo.model, x, zoo.default_layer, ["gradcam"])
    target = factual.target
    counter = explain(zoo.model, x, zoo.default_layer, ["gradcam"], target=target, counterfactual=True)
    base = float(factual.probabilities[target])
    # Remove a region softly: blend it towards the model's zero input (its mean colour).
    without_counter = class_probability(zoo, x * (1 - counter.maps["gradcam"].cpu()), target)
    without_factual = class_probability(zoo, x * (1 - factual.maps["gradcam"].cpu()), target)
    name = label(zoo, target)
    holds = without_counter > base > without_factual
    verdict = (
        f"Removing what the counterfactual map highlights moves P({name}) from {base:.3f} to "
        f"{without_counter:.3f} ({without_counter / base:.2f}×); removing what Grad-CAM highlights moves it "
        f"to {without_factual:.3f} ({without_factual / base:.2f}×). "
        + ("The claim holds here." if holds else "The claim does not hold for this model and image.")
    )
    return Lesson(
        key="counterfactual",
        title="Counterfactual: what would make the model less sure",
        claim="Negating the gradient highlights the regions that argue against the class; "
        "removing them makes the model more confident.",
        source="Selvaraju et al., Grad-CAM (arXiv 1610.02391), section 5.2",
        panels=[
            Panel("input", crop),
            Panel(f"Grad-CAM: evidence for {name}", overlay(crop, to_numpy(factual.maps["gradcam"]))),
            Panel(f"counterfactual: evidence against {name}", overlay(crop, to_numpy(counter.maps["gradcam"]))),
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


@lesson("watermark")
def watermark_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """ImageNet-W: a faint Chinese-text watermark pushes ImageNet models towards 'carton'."""
    image = image or sample("chelsea.jpg")
    crop = zoo.preprocess.crop_image(image)
    marked = add_watermark(crop, crop.size[0])
    x_clean, x_marked = zoo.preprocess.normalise(crop), zoo.preprocess.normalise(marked)
    before = class_probability(zoo, x_clean, CARTON)
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
        + ("The shortcut shows here." if holds else "The shortcut does not show clearly for this model and image.")
    )
    crop_array, marked_array = np.asarray(crop), np.asarray(marked)
    return Lesson(
        key="watermark",
        title="A real shortcut in a real model: the 'carton' watermark",
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
