"""Lessons from the CAM literature, each a claim checked live on a model and an image.

A lesson function computes its evidence now (no canned numbers) and returns a `Lesson`: the
claim, the panels that show it, the numbers measured, and a verdict derived from those numbers.
Each lesson first checks what its test needs (a trained model, maps that are not blank, an image
that fits, two classes that name different things) and otherwise says why it cannot judge; its
test compares an effect with a baseline (chance, a control), so it can fail; and the verdict
compares the numbers as they are shown (`explainers.services.formats.shown`), so it follows from them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
from PIL import Image

from explainers.methods.core import explain
from explainers.methods.metrics import class_scores, saliency, spearman
from explainers.methods.multi import explain_classes, fuse_layers, sweep
from explainers.services.formats import CORRELATION, PERCENT, RATIO, number, shown
from explainers.services.images import load_image
from explainers.services.render import overlay, to_numpy
from explainers.services.samples import SAMPLES_DIR
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
        holds: True if the measurements support the claim, False if they contradict it, None
            if the lesson cannot judge here (the verdict then says why).
        verdict: one or two sentences built from the measurements.
        units: measurement name -> its unit (`explainers.services.formats`: "%", "×", "ρ"), so that the
            page shows each number as the verdict writes it.
        series: optional curves to plot: name -> values over `series_x`.
        series_x: labels of the curves' x axis.
        axis_titles: (x, y) axis titles of the curves.
        series_unit: the unit of the curves' values ("%": shares, drawn in %).
    """

    key: str = ""
    title: str = ""
    claim: str
    source: str
    panels: list[Panel]
    measurements: dict[str, float]
    holds: bool | None
    verdict: str
    units: dict[str, str] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    series_x: list[str] = field(default_factory=list)
    axis_titles: tuple[str, str] = ("", "")
    series_unit: str = ""

    @property
    def status(self) -> str:
        """ "holds", "fails" or "cannot judge"."""
        return "cannot judge" if self.holds is None else "holds" if self.holds else "fails"

    def display(self, name: str) -> str:
        """A measurement as the page and the verdict write it."""
        return number(self.measurements[name], self.units.get(name, ""))


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


# ----------------------------------------------------------------------------- preconditions
# Each returns None when the lesson can judge, else the reason it cannot, as a sentence.

UNTRAINED = (
    "The model is untrained (random weights): its outputs and maps carry no learned evidence, so a "
    "claim about what trained models do cannot be tested on it. Switch off “Random weights”."
)


def untrained(zoo: ZooModel) -> str | None:
    return None if zoo.trained else UNTRAINED


def flat(crop: np.ndarray) -> str | None:
    """The reason "the image is one flat colour" (nothing in it to explain), or None."""
    if float(np.asarray(crop, np.float32).std()) >= FLAT_STD:
        return None
    return "The image is one flat colour: there is no object in it for the lesson to look at."


FLAT_STD = 2.0  # grey levels: below this standard deviation the crop holds nothing but noise


def is_blank(heatmap: torch.Tensor) -> bool:
    """A map with no evidence at all: `explain` returns such maps as zeros."""
    return not bool(heatmap.detach().abs().amax() > 0)


def blank_maps(maps: dict[str, torch.Tensor]) -> str | None:
    """The reason "a map is blank", naming the blank maps (caption -> map), or None."""
    blank = [name for name, heatmap in maps.items() if is_blank(heatmap)]
    if not blank:
        return None
    text = (
        f"{' and '.join(blank)} {'is' if len(blank) == 1 else 'are'} blank (no positive evidence "
        "anywhere): a blank map gives no number to compare."
    )
    return text[0].upper() + text[1:]


def first_reason(*checks: Callable[[], str | None]) -> str | None:
    """The first failed precondition, checked in order (later checks may need earlier ones)."""
    for check in checks:
        reason = check()
        if reason:
            return reason
    return None


def judged(reason: str | None, holds: bool, measured: str, yes: str, no: str) -> tuple[bool | None, str]:
    """(holds, verdict): "cannot judge" with its reason, or the measured sentence and its reading."""
    if reason:
        return None, reason
    return holds, f"{measured} {yes if holds else no}"


def density(heatmap: torch.Tensor, region: torch.Tensor) -> float:
    """Mean of a map inside a region over its mean on the whole image: 1.0 is what a map blind to
    the region (uniform, or random) gets, so it is the chance baseline; a map inside the region
    only gets 1 / (the region's share of the image)."""
    values = saliency(heatmap).cpu()
    total = float(values.mean())
    return float(values[region].mean()) / total if total > 0 and bool(region.any()) else float("nan")


def box_in_crop(zoo: ZooModel, size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Where a box on an image of ``size`` (W, H) lands in the model's crop (resize the short
    side, centre crop)."""
    scale = zoo.preprocess.resize / min(size)
    dx, dy = ((side * scale - zoo.preprocess.crop) / 2 for side in size)
    x0, y0, x1, y1 = box
    return (round(x0 * scale - dx), round(y0 * scale - dy), round(x1 * scale - dx), round(y1 * scale - dy))


def box_mask(box: tuple[int, ...], shape: tuple[int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = box
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


# A rise that counts: one percentage point of the class's probability, more than the rounding
# of the numbers shown and more than removing the same area elsewhere (the control) gives.
MIN_RISE = 0.01
SURE = 0.99  # above this the probability has no room to rise


@lesson("counterfactual", "Counterfactual: what would make the model less sure")
def counterfactual_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Grad-CAM paper section 5.2: negated gradients show what argues against the class.

    Test: remove (blend towards the model's zero input) what the counterfactual map marks; the
    class's probability must rise by at least `MIN_RISE` over the original and over a control
    that removes the same map turned by 180° (same area and shape, another place).
    """
    image, x, crop = inputs(zoo, image, "cat_and_coffee.jpg")
    factual = explain(zoo.model, x, zoo.default_layer, ["gradcam"])
    target = factual.target
    counter = explain(zoo.model, x, zoo.default_layer, ["gradcam"], target=target, counterfactual=True)
    name = label(zoo, target)
    base = float(factual.probabilities[target])
    counter_map, factual_map = counter.maps["gradcam"].cpu(), factual.maps["gradcam"].cpu()
    control_map = counter_map.flip(0, 1)
    removed = torch.cat([x * (1 - m) for m in (counter_map, control_map, factual_map)])
    without_counter, without_control, without_factual = class_scores(zoo.model, removed, target).tolist()
    p = {"base": base, "counter": without_counter, "control": without_control, "factual": without_factual}
    s = {k: shown(v, PERCENT) for k, v in p.items()}
    reason = first_reason(
        lambda: untrained(zoo),
        lambda: flat(crop),
        lambda: blank_maps(
            {f"Grad-CAM for {name}": factual_map, f"the counterfactual map for {name}": counter_map}
        ),
        lambda: (
            f"The model is already sure of {name} (P = {number(base, PERCENT)}), so "
            "removing anything cannot raise it measurably."
            if base >= SURE
            else None
        ),
    )
    holds = s["counter"] >= s["base"] + MIN_RISE and s["counter"] >= s["control"] + MIN_RISE
    measured = (
        f"Removing what the counterfactual map marks moves P({name}) from {number(base, PERCENT)} to "
        f"{number(without_counter, PERCENT)}; removing the same map turned by 180° (the control) gives "
        f"{number(without_control, PERCENT)}, and removing what Grad-CAM marks "
        f"{number(without_factual, PERCENT)}."
    )
    rise_note = "(by at least one percentage point over both the original and the control)"
    verdict_holds, verdict = judged(
        reason,
        holds,
        measured,
        f"The probability rises {rise_note}: the claim holds here.",
        f"The probability does not rise {rise_note}: the claim does not hold for this model and image.",
    )
    names = (f"P({name})", "P after removing the counterfactual region", "P after removing the control region",
             "P after removing the Grad-CAM region")  # fmt: skip
    return Lesson(
        claim="Negating the gradient highlights the regions that argue against the class; "
        "removing them makes the model more confident.",
        source="Selvaraju et al., Grad-CAM (arXiv 1610.02391), section 5.2",
        panels=[
            Panel("input", crop),
            Panel(f"Grad-CAM: evidence for {name}", overlay(crop, to_numpy(factual_map))),
            Panel(f"counterfactual: evidence against {name}", overlay(crop, to_numpy(counter_map))),
            Panel("control: the counterfactual map turned by 180°", overlay(crop, to_numpy(control_map))),
        ],
        measurements=dict(zip(names, (base, without_counter, without_control, without_factual), strict=True)),
        units=dict.fromkeys(names, PERCENT),
        holds=verdict_holds,
        verdict=verdict,
    )


def add_watermark(image: Image.Image, size: int) -> Image.Image:
    """ImageNet-W's exact watermark (Li et al., CVPR 2023) on a square RGB image of side `size`."""
    from imagenet_w import AddWatermark

    return AddWatermark(image_size=size)(image)


def blurred_overlay(clean: Image.Image, marked: Image.Image, sigma: float = 8.0) -> Image.Image:
    """The control for the watermark: the same change to the pixels, blurred until no stroke of
    text is left. It adds (about) the same ink at the same place, so a model that reacts to the
    text itself, not to a brighter band, rises more on the watermark than on this."""
    clean_array = np.asarray(clean, np.float32)
    change = np.asarray(marked, np.float32) - clean_array
    smooth = cv2.GaussianBlur(change, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return Image.fromarray(np.clip(clean_array + smooth, 0, 255).round().astype(np.uint8))


WATERMARK_RISE = 1.5  # the watermark must raise P(carton) by half, over the clean image and the control
BAND_DENSITY = 1.2  # and Grad-CAM for carton must be denser on the band than elsewhere


@lesson("watermark", "A real shortcut in a real model: the 'carton' watermark")
def watermark_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """ImageNet-W: a faint Chinese-text watermark pushes ImageNet models towards 'carton'.

    Test: P(carton) with the watermark over P(carton) without it and over P(carton) with a
    control overlay (the same change blurred: no text), both at least `WATERMARK_RISE`; and
    Grad-CAM for carton at least `BAND_DENSITY` times as dense on the watermark's rows as
    elsewhere (1.0 is chance).
    """
    image = image or sample("chelsea.jpg")
    crop = zoo.preprocess.crop_image(image)
    crop_array = np.asarray(crop)
    has_carton = len(zoo.labels) > CARTON and zoo.labels[CARTON] == "carton"
    if not has_carton:
        return Lesson(
            claim="ImageNet classifiers associate a faint Chinese-text watermark with the class 'carton'.",
            source="Li et al., A Whac-A-Mole Dilemma / ImageNet-W (CVPR 2023)",
            panels=[Panel("input", crop_array)],
            measurements={},
            holds=None,
            verdict=f"{zoo.name} has no ImageNet class 'carton', the class this shortcut "
            "pushes towards. Choose an ImageNet classifier.",
        )
    marked = add_watermark(crop, crop.size[0])
    control = blurred_overlay(crop, marked)
    x = torch.cat([zoo.preprocess.normalise(c) for c in (crop, control)])
    before, with_control = class_scores(zoo.model, x, CARTON).tolist()
    result = explain(
        zoo.model, zoo.preprocess.normalise(marked), zoo.default_layer, ["gradcam"], target=CARTON
    )
    after = float(result.probabilities[CARTON])
    heatmap = result.maps["gradcam"].cpu()
    changed = np.abs(np.asarray(marked, np.int16) - np.asarray(crop, np.int16)).sum(-1) > 0
    rows = np.nonzero(changed.any(1))[0]
    band = torch.zeros(heatmap.shape, dtype=torch.bool)
    if rows.size:
        band[rows.min() : rows.max() + 1] = True
    band_density = density(heatmap, band) if bool(band.any()) and not bool(band.all()) else float("nan")
    rise = after / before if before > 0 else float("inf")
    over_control = after / with_control if with_control > 0 else float("inf")
    reason = first_reason(
        lambda: untrained(zoo),
        lambda: blank_maps({"Grad-CAM for carton on the watermarked image": heatmap}),
        lambda: (
            f"The image already reads as carton (P = {number(before, PERCENT)} without "
            "the watermark), so the watermark has nothing to add."
            if before >= 0.5
            else None
        ),
    )
    holds = (
        shown(rise, RATIO) >= WATERMARK_RISE
        and shown(over_control, RATIO) >= WATERMARK_RISE
        and shown(band_density, RATIO) >= BAND_DENSITY
    )
    measured = (
        f"P(carton) is {number(before, PERCENT)} without the watermark, {number(after, PERCENT)} with it "
        f"({number(rise, RATIO)}) and {number(with_control, PERCENT)} with the control, the same overlay "
        f"blurred so that no text is left (the watermark gives {number(over_control, RATIO)} that). Grad-CAM "
        f"for carton is {number(band_density, RATIO)} as dense on the watermark's rows as on average "
        "(1.0× is chance)."
    )
    needs = (
        f"(needs at least {number(WATERMARK_RISE, RATIO)} over the clean image and the control, and "
        f"{number(BAND_DENSITY, RATIO)} on the band)"
    )
    verdict_holds, verdict = judged(
        reason,
        holds,
        measured,
        f"The text itself is the shortcut {needs}: the claim holds here.",
        f"The shortcut does not show {needs} for this model and image.",
    )
    marked_array, control_array = np.asarray(marked), np.asarray(control)
    names = ("P(carton) without watermark", "P(carton) with watermark", "P(carton) with the control overlay")
    ratios = ("rise with the watermark", "watermark over the control", "Grad-CAM density on the band")
    return Lesson(
        claim="ImageNet classifiers associate a faint Chinese-text watermark with the class 'carton'.",
        source="Li et al., A Whac-A-Mole Dilemma / ImageNet-W (CVPR 2023)",
        panels=[
            Panel(f"without watermark: P(carton) = {number(before, PERCENT)}", crop_array),
            Panel(f"with watermark: P(carton) = {number(after, PERCENT)}", marked_array),
            Panel(
                f"control, the overlay blurred: P(carton) = {number(with_control, PERCENT)}", control_array
            ),
            Panel("Grad-CAM for carton, watermarked", overlay(marked_array, to_numpy(heatmap))),
        ],
        measurements=dict(
            zip(names + ratios, (before, after, with_control, rise, over_control, band_density), strict=True)
        ),
        units={**dict.fromkeys(names, PERCENT), **dict.fromkeys(ratios, RATIO)},
        holds=verdict_holds,
        verdict=verdict,
    )


# ImageNet classes that name one object twice, or one kind of object at a grain a photo cannot
# split: a photo of one rocket is "missile" and "projectile" at once, one cat is "tabby" and
# "tiger cat", one espresso is also a "cup". Two such classes are no test of class
# discrimination: their maps should coincide. The synonym pairs are those ImageNet's relabelling
# studies list as duplicates (Beyer et al. 2020, "Are we done with ImageNet?"; Shankar et al.
# 2020); the families are WordNet subtrees whose members are breeds or makes of one thing.
SAME_OBJECT: tuple[frozenset[str], ...] = tuple(
    frozenset(group)
    for group in (
        {"missile", "projectile"},
        {"notebook", "laptop"},
        {"monitor", "screen", "desktop computer", "television"},
        {"sunglass", "sunglasses"},
        {"bathtub", "tub"},
        {"cassette player", "tape player"},
        {"espresso", "cup", "coffee mug"},
        {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"},
        {"space shuttle", "missile", "projectile"},
    )
)
DOGS = range(151, 269)  # ImageNet-1k's dog breeds (WordNet "dog" subtree), by index
MIN_PROBABILITY = 0.01  # a class the model gives less than 1 % is not seen in the image


def same_object(zoo: ZooModel, first: int, second: int) -> bool:
    """Whether two classes name the same object (see `SAME_OBJECT`)."""
    names = {zoo.labels[first], zoo.labels[second]}
    if any(names <= group for group in SAME_OBJECT):
        return True
    return len(zoo.labels) == 1000 and first in DOGS and second in DOGS


def two_classes(zoo: ZooModel, x: torch.Tensor, image_given: bool) -> tuple[int, int, list[float]]:
    """The bundled collage's cat and espresso; for a user's image its top two classes; and the
    probabilities of the two."""
    with torch.inference_mode():
        probabilities = zoo.model(x.to(zoo.device)).softmax(-1)[0].cpu()
    if not image_given and len(zoo.labels) == 1000:
        first, second = max(range(281, 286), key=lambda i: float(probabilities[i])), 967  # a cat, espresso
    else:
        first, second = probabilities.topk(2).indices.tolist()
    return first, second, [float(probabilities[first]), float(probabilities[second])]


DISCRIMINATION_GAP = 0.3  # Grad-CAM's correlation must lie this far below guided backprop's


@lesson("discrimination", "Where the class lives")
def discrimination_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Grad-CAM is class-discriminative; guided backprop alone barely is; Guided Grad-CAM is.

    Test: Spearman correlation between the two classes' maps, per method. Grad-CAM's must lie
    `DISCRIMINATION_GAP` below guided backprop's and Guided Grad-CAM's below guided backprop's
    (0 is what two unrelated maps give). Needs two classes the model sees (P ≥ 1 %) that name
    different objects.
    """
    from explainers.methods.guided import guided_to_image

    given = image is not None
    image, x, crop = inputs(zoo, image, "cat_and_coffee.jpg")
    methods = ["gradcam", "guided_backprop", "guided_gradcam"]
    first, second, probabilities = two_classes(zoo, x, given)
    a, b = explain_classes(zoo.model, x, zoo.default_layer, methods, [first, second])
    rho = {m: spearman(saliency(a.maps[m]), saliency(b.maps[m])) for m in methods}
    r = {m: shown(value, CORRELATION) for m, value in rho.items()}
    name_a, name_b = label(zoo, first), label(zoo, second)
    titles = {
        "gradcam": "Grad-CAM",
        "guided_backprop": "guided backprop",
        "guided_gradcam": "Guided Grad-CAM",
    }
    unseen = [(n, p) for n, p in zip((name_a, name_b), probabilities, strict=True) if p < MIN_PROBABILITY]
    reason = first_reason(
        lambda: untrained(zoo),
        lambda: flat(crop),
        lambda: (
            f"“{name_a}” and “{name_b}” name the same object, so their maps should "
            "coincide; the lesson needs two different objects in one image."
            if same_object(zoo, first, second)
            else None
        ),
        lambda: (
            "The model hardly sees "
            + " or ".join(f"{n} (P = {number(p, PERCENT)})" for n, p in unseen)
            + " in this image; the lesson needs two objects the model recognises."
            if unseen
            else None
        ),
        lambda: blank_maps(
            {f"{titles[m]} for {n}": r_.maps[m] for m in methods for n, r_ in ((name_a, a), (name_b, b))}
        ),
    )
    holds = (
        r["gradcam"] <= r["guided_backprop"] - DISCRIMINATION_GAP
        and r["guided_gradcam"] < r["guided_backprop"]
    )
    measured = (
        f"Rank correlation between the maps for {name_a} (P = {number(probabilities[0], PERCENT)}) and "
        f"{name_b} (P = {number(probabilities[1], PERCENT)}): Grad-CAM {number(rho['gradcam'], CORRELATION)}, "
        f"guided backprop {number(rho['guided_backprop'], CORRELATION)}, Guided Grad-CAM "
        f"{number(rho['guided_gradcam'], CORRELATION)} (0 is unrelated maps)."
    )
    verdict_holds, verdict = judged(
        reason,
        holds,
        measured,
        f"Grad-CAM's two maps agree at least {DISCRIMINATION_GAP} less than guided backprop's, and Guided "
        "Grad-CAM's less too: Grad-CAM separates the classes and guided backprop barely does, as claimed.",
        f"Grad-CAM's two maps do not agree at least {DISCRIMINATION_GAP} less than guided backprop's (or "
        "Guided Grad-CAM's agree as much): the claim does not hold for this model and image.",
    )
    panels = [Panel("input", crop)]
    for result, name in [(a, name_a), (b, name_b)]:
        panels += [
            Panel(f"Grad-CAM: {name}", overlay(crop, to_numpy(result.maps["gradcam"]))),
            Panel(f"guided backprop: {name}", guided_to_image(result.maps["guided_backprop"])),
            Panel(f"Guided Grad-CAM: {name}", guided_to_image(result.maps["guided_gradcam"])),
        ]
    names = [f"Spearman, {titles[m]}" for m in methods]
    return Lesson(
        claim="Grad-CAM's maps for two classes in one image differ; guided backprop's are nearly the "
        "same (it is barely class-discriminative); Guided Grad-CAM combines the two.",
        source="Selvaraju et al., Grad-CAM (arXiv 1610.02391), section 3",
        panels=panels,
        measurements={
            f"P({name_a})": probabilities[0],
            f"P({name_b})": probabilities[1],
            **dict(zip(names, rho.values(), strict=True)),
        },
        units={f"P({name_a})": PERCENT, f"P({name_b})": PERCENT, **dict.fromkeys(names, CORRELATION)},
        holds=verdict_holds,
        verdict=verdict,
    )


# The two cats of the bundled two_cats.jpg, (x0, y0, x1, y1) on its 448×448 canvas: each photo
# as assets/samples/README.md composes it (scaled to fit a 192×392 box, centred).
TWO_CATS = "two_cats.jpg"
TWO_CATS_BOXES = ((28, 121, 220, 327), (228, 160, 420, 288))
MIN_REGION = 0.02  # an evidence region smaller than 2 % of the image is no object
INSTANCE_GAIN = 0.2  # Grad-CAM++ must cover the weaker instance this much (in ×) better


def evidence_regions(heatmaps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Separate regions of high class evidence: connected parts of the image where either map is
    above half its peak, largest first, each at least `MIN_REGION` of the image.

    Both methods' maps count alike, so the regions favour neither; they stand in for the
    objects on an image whose objects nobody has marked.
    """
    union = torch.stack([saliency(h).cpu() for h in heatmaps]).amax(0) > 0.5
    count, labels, stats, _ = cv2.connectedComponentsWithStats(union.numpy().astype(np.uint8), connectivity=8)
    area = union.numel()
    parts = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    return [torch.from_numpy(labels == i) for i in parts if stats[i, cv2.CC_STAT_AREA] >= MIN_REGION * area]


@lesson("instances", "Several instances of one class")
def instances_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Grad-CAM++ claims to cover several instances of a class better than Grad-CAM.

    Test: each map's density inside each object's region relative to its mean over the image
    (1.0× is chance: what a uniform or random map gets); the weaker object's density must be
    above chance for Grad-CAM++ and `INSTANCE_GAIN` higher than Grad-CAM's. The objects are the
    two cats of the bundled sample, or, on another image, the two largest separate regions of
    high evidence of the class (`evidence_regions`); an image with fewer cannot be judged.
    """
    given = image is not None
    image, x, crop = inputs(zoo, image, TWO_CATS)
    methods = ["gradcam", "gradcam++"]
    result = explain(zoo.model, x, zoo.default_layer, methods)
    maps = {m: result.maps[m].cpu() for m in methods}
    name = label(zoo, result.target)
    shape = tuple(maps["gradcam"].shape)
    if given:
        regions, where = evidence_regions(list(maps.values()))[:2], "the regions of high evidence"
    else:
        regions = [box_mask(box_in_crop(zoo, image.size, box), shape) for box in TWO_CATS_BOXES]
        where = "the two cats"
    blank = blank_maps({f"Grad-CAM for {name}": maps["gradcam"], f"Grad-CAM++ for {name}": maps["gradcam++"]})
    measurable = blank is None and len(regions) == 2
    densities = {
        m: [density(maps[m], region) for region in regions] if measurable else [float("nan")] * 2
        for m in methods
    }
    weaker = {m: min(values) for m, values in densities.items()}
    reason = first_reason(
        lambda: untrained(zoo),
        lambda: flat(crop),
        lambda: blank,
        lambda: (
            f"This image shows {len(regions)} separate region{'' if len(regions) == 1 else 's'} "
            f"of high evidence for {name}; the lesson needs two objects of one class, apart."
            if len(regions) < 2
            else None
        ),
    )
    gc, pp = shown(weaker["gradcam"], RATIO), shown(weaker["gradcam++"], RATIO)
    holds = pp > 1.0 and pp >= gc + INSTANCE_GAIN
    measured = (
        f"Density of each map on {where} relative to its average over the image (1.0× is chance): "
        f"Grad-CAM {number(densities['gradcam'][0], RATIO)} / {number(densities['gradcam'][1], RATIO)}, "
        f"Grad-CAM++ {number(densities['gradcam++'][0], RATIO)} / {number(densities['gradcam++'][1], RATIO)}; "
        f"on the weaker one {number(weaker['gradcam'], RATIO)} against {number(weaker['gradcam++'], RATIO)}."
    )
    verdict_holds, verdict = judged(
        reason,
        holds,
        measured,
        f"Grad-CAM++ covers the weaker instance above chance and at least {INSTANCE_GAIN:.1f}× more densely "
        "than Grad-CAM, as claimed.",
        f"Grad-CAM++ does not cover the weaker instance above chance and at least {INSTANCE_GAIN:.1f}× more "
        "densely than Grad-CAM here: the claim does not hold for this model and image.",
    )
    outlined = crop.copy()
    for region in regions:  # the objects' outlines on the input
        edge = region.numpy().astype(np.uint8)
        outline = cv2.morphologyEx(edge, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
        outlined[outline] = (255, 0, 255)
    names = [f"{t} density, {side}" for t in ("Grad-CAM", "Grad-CAM++") for side in ("object 1", "object 2")]
    values = [*densities["gradcam"], *densities["gradcam++"]]
    return Lesson(
        claim="Grad-CAM++ highlights every instance of a class; Grad-CAM tends to favour one.",
        source="Chattopadhyay et al., Grad-CAM++ (arXiv 1710.11063)",
        panels=[
            Panel(f"input, {where} outlined", outlined),
            Panel(f"Grad-CAM: {name}", overlay(crop, to_numpy(maps["gradcam"]))),
            Panel(f"Grad-CAM++: {name}", overlay(crop, to_numpy(maps["gradcam++"]))),
        ],
        measurements=dict(zip(names, values, strict=True)),
        units=dict.fromkeys(names, RATIO),
        holds=verdict_holds,
        verdict=verdict,
    )


# The sanity lesson re-initialises this many units from the top, once per seed of
# `explainers.methods.sanity.DEFAULT_SEEDS`: the top units tell Adebayo et al.'s story, and 4 x 3 steps
# keep the lesson to seconds on a CPU.
SANITY_STEPS = 4


@lesson("sanity", "Sanity check: randomise the model")
def sanity_lesson(zoo: ZooModel, image: Image.Image | None = None) -> Lesson:
    """Adebayo et al. 2018: a faithful map must change when the model's weights are randomised.

    Measured with the paper's four similarity measures over the cascade and three seeds; not
    measurable on an untrained model or when an original map is blank (`explainers.methods.sanity.judge`).
    """
    from explainers.methods.guided import guided_to_image
    from explainers.methods.sanity import (
        DEFAULT_SEEDS,
        JUDGED,
        MEASURES,
        judge,
        judge_untrained,
        sanity_check,
    )

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
            holds=None,  # cannot judge
            verdict=judge_untrained(),
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
        None
        if unmeasurable
        else (verdicts["gradcam"].status == "changes" and verdicts["guided_backprop"].status == "stays")
    )
    steps = f"the top {len(result.steps)} units ({', '.join(result.step_names)})"
    if unmeasurable:
        verdict = " ".join(unmeasurable)
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
    """Deep layers: coarse, class-level maps; shallow layers: fine detail (LayerCAM keeps them usable).

    Test: the deep LayerCAM map's area above half its peak at least `COARSER` times the shallow
    one's; and the shallow LayerCAM map's density on the object (where the deep Grad-CAM map is
    above half its peak) at least `ON_OBJECT` times chance (1.0×: a map blind to the object).
    Shallow Grad-CAM's density is shown beside it, for comparison.
    """
    image, x, crop = inputs(zoo, image, "chelsea.jpg")
    titles = {layer.name: layer.title for layer in zoo.stages()}  # found when the model was loaded
    layers = list(titles)
    results = sweep(zoo.model, x, layers, ["gradcam", "layercam"])  # one forward, one backward
    ordered = list(results)
    deep, shallow = ordered[-1], ordered[0]
    shown_as = {layer: titles[layer] for layer in ordered}  # "stage 1", ..., "final feature map"
    # Coarseness: the share of the image where the map is above half its peak.
    area = {layer: float((results[layer].maps["layercam"] > 0.5).float().mean()) for layer in ordered}
    # Where the class is, by the deep map; how densely each shallow map covers it (1.0× is chance).
    focus = (results[deep].maps["gradcam"] > 0.5).cpu()
    region = float(focus.float().mean())
    lift = {m: density(results[shallow].maps[m], focus) for m in ["gradcam", "layercam"]}
    fused = fuse_layers(results, "layercam")
    coarser = area[deep] / area[shallow] if area[shallow] > 0 else float("inf")
    name = label(zoo, results[deep].target)
    reason = first_reason(
        lambda: untrained(zoo),
        lambda: flat(crop),
        lambda: (
            "The model has one resolution stage, so there is no shallow map to compare."
            if len(ordered) < 2
            else None
        ),
        lambda: blank_maps(
            {
                f"Grad-CAM at {shown_as[deep]}": results[deep].maps["gradcam"],
                f"LayerCAM at {shown_as[deep]}": results[deep].maps["layercam"],
                f"LayerCAM at {shown_as[shallow]}": results[shallow].maps["layercam"],
                f"Grad-CAM at {shown_as[shallow]}": results[shallow].maps["gradcam"],
            }
        ),
        lambda: (
            f"The deep map marks {number(region, PERCENT)} of the image, so it gives no "
            "object region to stay on (it needs at least 1% and less than 50%)."
            if not MIN_OBJECT <= shown(region, PERCENT) < MAX_OBJECT
            else None
        ),
    )
    lifts = {m: shown(v, RATIO) for m, v in lift.items()}
    holds = shown(coarser, RATIO) >= COARSER and lifts["layercam"] >= ON_OBJECT
    shapes = {layer: tuple(results[layer].raw["layercam"].shape) for layer in ordered}
    measured = (
        f"LayerCAM covers {number(area[deep], PERCENT)} of the image above half its peak at {shown_as[deep]} "
        f"({shapes[deep][0]}×{shapes[deep][1]}) against {number(area[shallow], PERCENT)} at {shown_as[shallow]} "
        f"({shapes[shallow][0]}×{shapes[shallow][1]}): {number(coarser, RATIO)}. The deep map marks "
        f"{number(region, PERCENT)} of the image as the object; at {shown_as[shallow]}, LayerCAM is "
        f"{number(lift['layercam'], RATIO)} as dense there as on average, Grad-CAM {number(lift['gradcam'], RATIO)} "
        "(1.0× is chance)."
    )
    needs = (
        f"(needs a deep map {number(COARSER, RATIO)} coarser, and shallow LayerCAM at least "
        f"{number(ON_OBJECT, RATIO)} as dense on the object as on average)"
    )
    missing = [
        text
        for ok, text in (
            (shown(coarser, RATIO) >= COARSER, f"the deep map is not {number(COARSER, RATIO)} coarser"),
            (lifts["layercam"] >= ON_OBJECT, f"shallow LayerCAM is not {number(ON_OBJECT, RATIO)} as dense on "
             "the object as on average"),
        )
        if not ok
    ]  # fmt: skip
    verdict_holds, verdict = judged(
        reason,
        holds,
        measured,
        f"Coarse deep maps, and fine shallow ones that LayerCAM keeps on the object {needs}: as claimed.",
        f"The claim does not hold for this model and image: {' and '.join(missing)}.",
    )
    panels = [Panel("input", crop)]
    panels += [
        Panel(
            f"LayerCAM at {shown_as[layer]} ({shapes[layer][0]}×{shapes[layer][1]})",
            overlay(crop, to_numpy(results[layer].maps["layercam"])),
        )
        for layer in ordered
    ]
    panels += [
        Panel(f"Grad-CAM at {shown_as[shallow]}", overlay(crop, to_numpy(results[shallow].maps["gradcam"]))),
        Panel(f"LayerCAM fused over all stages: {name}", overlay(crop, to_numpy(fused))),
    ]
    rows = [  # (name, value, unit); with one stage, deep and shallow rows coincide
        (f"area above half peak, {shown_as[deep]}", area[deep], PERCENT),
        (f"area above half peak, {shown_as[shallow]}", area[shallow], PERCENT),
        ("deep map over shallow map", coarser, RATIO),
        ("object region (deep Grad-CAM)", region, PERCENT),
        (f"LayerCAM density on the object, {shown_as[shallow]}", lift["layercam"], RATIO),
        (f"Grad-CAM density on the object, {shown_as[shallow]}", lift["gradcam"], RATIO),
    ]
    return Lesson(
        claim="Deep layers give coarse, class-level maps; shallow layers give fine detail, which "
        "LayerCAM's element-wise weights are meant to keep on the object.",
        source="Selvaraju et al. 2017 (section 7.1); Jiang et al., LayerCAM (IEEE TIP 2021)",
        panels=panels,
        measurements={name: value for name, value, _ in rows},
        units={name: unit for name, _, unit in rows},
        holds=verdict_holds,
        verdict=verdict,
        series={"LayerCAM area above half peak": [area[layer] for layer in ordered]},
        series_x=[shown_as[layer] for layer in ordered],
        axis_titles=("layer, shallow to deep", "share of the image above half the peak"),
        series_unit=PERCENT,
    )


COARSER = 2.0  # the deep map's area above half peak over the shallow one's
ON_OBJECT = 1.5  # shallow LayerCAM's density on the object, over chance (1.0×)
MIN_OBJECT, MAX_OBJECT = 0.01, 0.5  # an object region outside this share of the image is none


def teaching_order() -> list[str]:
    """Lesson keys in teaching order (any lesson missing from ORDER comes last)."""
    return [key for key in ORDER if key in LESSONS] + [key for key in LESSONS if key not in ORDER]
