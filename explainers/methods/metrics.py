"""Faithfulness scores of explanation maps, region checks and rank correlation, in torch.

- Average Drop % and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, arXiv 1710.11063,
  section 6.1.1): with Y the softmax score of class c on the image and O its score on
  image ⊙ map, Average Drop = mean over images of max(0, Y - O) / Y · 100, and Increase in
  Confidence = share (%) of images with O > Y.
- Deletion and insertion (Petsiuk et al., RISE, arXiv 1806.07421): rank the pixels by the map;
  deletion replaces them, most salient first, with a baseline; insertion starts from a blurred
  image and puts them back. The curve is the class's softmax probability against the fraction
  of pixels changed; its area (trapezoid rule) is the score. Lower deletion and higher
  insertion AUC are better.

All image-space operations happen in the model's normalised input space, so the multiplicative
mask and the deletion baseline 0 mean "the training mean colour" rather than black. This is
what the `grad-cam` package does (its ``multiply_tensor_with_cam`` multiplies the normalised
input tensor). The Grad-CAM++ paper multiplied the image in pixel space, where a masked pixel
turns black: our Average Drop is therefore not the paper's number, and not comparable with its
Table 1 (46.56 % for Grad-CAM on VGG-16) except in trend.

Guided maps are raw input gradients of scattered pixels: they get no faithfulness scores, with
a note that says why (`GUIDED_NOTE`).

Under a counterfactual map (what lowers the class) every score reads the other way: a map that
works keeps what lowers the class, so image ⊙ map loses confidence (high Average Drop), and
deleting its pixels first raises the class (high deletion AUC, low insertion AUC). The scores
are computed the same way; `explainers.services.service.FaithfulnessScore` says which way they read.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from torch import nn
from torchvision.transforms import functional as TF

from explainers.errors import Cancelled, ExplainerInputError
from explainers.methods.capture import model_device

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive


class Curves(TypedDict):
    """What `deletion_insertion` returns; tensors are 1-D, float32, on the CPU."""

    fractions: torch.Tensor  # (steps + 1,) fraction of pixels deleted / inserted, 0 to 1
    deletion: torch.Tensor  # (steps + 1,) class probability while deleting
    insertion: torch.Tensor  # (steps + 1,) class probability while inserting
    deletion_auc: float
    insertion_auc: float


def make_curves(fractions: torch.Tensor, deletion: torch.Tensor, insertion: torch.Tensor) -> Curves:
    """`Curves` with their areas (trapezoid rule)."""
    return Curves(
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=auc(fractions, deletion),
        insertion_auc=auc(fractions, insertion),
    )


@dataclass(frozen=True)
class Faithfulness:
    """All faithfulness scores of one map on one image.

    Attributes:
        original: Y, the class's softmax score on the image.
        masked: O, its score on image ⊙ map.
        drop: max(0, Y - O) / Y · 100, this image's term of Average Drop %.
        increase: O > Y, this image's term of Increase in Confidence.
        curves: the deletion and insertion curves and their AUCs; None when not computed
            (then both AUCs read NaN).
        note: why a score was left out (a guided map's curves), or None.
    """

    original: float
    masked: float
    drop: float
    increase: bool
    curves: Curves | None
    note: str | None = None

    @property
    def deletion_auc(self) -> float:
        return self.curves["deletion_auc"] if self.curves is not None else math.nan

    @property
    def insertion_auc(self) -> float:
        return self.curves["insertion_auc"] if self.curves is not None else math.nan


def saliency(heatmap: torch.Tensor) -> torch.Tensor:
    """A map as (H, W) non-negative saliency in [0, 1].

    CAM maps (H, W) pass through, clamped to [0, 1]. Guided maps, raw input gradients (H, W, 3),
    become the absolute value summed over colour channels, divided by its maximum (all zeros
    when the gradient is zero everywhere).
    """
    heatmap = heatmap.detach().float()
    if heatmap.ndim == 3 and heatmap.shape[-1] == 3:
        magnitude = heatmap.abs().sum(-1)
        peak = magnitude.max()
        return magnitude / peak if peak > 0 else magnitude
    if heatmap.ndim != 2:
        raise ExplainerInputError(f"Expected a map of shape (H, W) or (H, W, 3), got {tuple(heatmap.shape)}.")
    return heatmap.clamp(0, 1)


# Guided maps are scaled by this percentile of their magnitude before they are used as a mask:
# a few pixels carry gradients tens of times the typical one, so a division by the maximum
# leaves a mask of mean 0.01-0.06 (a nearly black image) whatever the map shows.
GUIDED_PERCENTILE = 99.0


def scaled_saliency(heatmap: torch.Tensor, percentile: float = GUIDED_PERCENTILE) -> torch.Tensor:
    """A map as (H, W) in [0, 1] on a scale fair to guided maps: what masks and similarity use.

    CAM maps (H, W) pass through, clamped to [0, 1] (their peak is 1 by construction). Guided
    maps (H, W, 3) become the absolute value summed over colour channels, divided by its
    ``percentile``-th percentile and clipped to 1, as saliency maps are shown in Adebayo et al.
    2018 and Smilkov et al. 2017 (SmoothGrad); all zeros when that percentile is 0.
    """
    heatmap = heatmap.detach().float()
    if heatmap.ndim == 3 and heatmap.shape[-1] == 3:
        magnitude = heatmap.abs().sum(-1)
        scale = torch.quantile(magnitude.flatten().cpu(), percentile / 100).to(magnitude.device)
        if scale <= 0:
            return torch.zeros_like(magnitude)
        return (magnitude / scale).clamp(max=1)
    return saliency(heatmap)


def signed_map(heatmap: torch.Tensor) -> torch.Tensor:
    """A map as (H, W) with its sign: a guided map summed over colour channels, a CAM as it is."""
    heatmap = heatmap.detach().float()
    if heatmap.ndim == 3 and heatmap.shape[-1] == 3:
        return heatmap.sum(-1)
    return saliency(heatmap)


def is_blank(heatmap: torch.Tensor) -> bool:
    """Whether a map ranks nothing: its saliency is the same everywhere (all zeros, typically)."""
    values = saliency(heatmap)
    return bool(values.max() - values.min() <= 1e-6)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Structural similarity of two (H, W) maps in [0, 1] (Wang et al. 2004), as Adebayo et al. use it.

    scikit-image's ``structural_similarity`` with its defaults (7 × 7 uniform window, sample
    covariances, K1 = 0.01, K2 = 0.03) and ``data_range=1``: 1 for equal maps, about 0 for
    unrelated ones.
    """
    from skimage.metrics import structural_similarity

    if a.shape != b.shape:
        raise ValueError(f"Maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}.")
    first, second = (np.asarray(m.detach().double().cpu()) for m in (a, b))
    side = min(first.shape)
    if side < 3:
        raise ValueError(f"SSIM needs maps of at least 3 × 3 pixels, got {tuple(a.shape)}.")
    window = min(7, side if side % 2 else side - 1)  # the default 7, or what a small map allows
    return float(structural_similarity(first, second, data_range=1.0, win_size=window))


# HOG of Adebayo et al.'s comparison: 9 orientations over cells of 16 x 16 pixels (a 224 x 224
# map has 14 x 14 cells), blocks of 2 x 2 cells; maps under 64 pixels get cells of a quarter
# of their side, so that they still have 4 x 4 cells.
HOG_CELL = 16


def hog_features(heatmap: torch.Tensor) -> np.ndarray:
    """Histogram-of-oriented-gradients features of an (H, W) map (scikit-image's ``hog``)."""
    from skimage.feature import hog

    cell = max(1, min(HOG_CELL, min(heatmap.shape) // 4))
    return hog(
        np.asarray(heatmap.detach().double().cpu()),
        orientations=9,
        pixels_per_cell=(cell, cell),
        cells_per_block=(2, 2),
        feature_vector=True,
    )


def hog_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the HOG features of two (H, W) maps (Adebayo et al. 2018).

    1 for maps with the same edges in the same places; 0 when either map has no edges at all
    (its features are constant, so the correlation is undefined).
    """
    if a.shape != b.shape:
        raise ValueError(f"Maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}.")
    fa, fb = hog_features(a), hog_features(b)
    fa, fb = fa - fa.mean(), fb - fb.mean()
    denominator = float(np.linalg.norm(fa) * np.linalg.norm(fb))
    return float(fa @ fb / denominator) if denominator > 0 else 0.0


def energy_in_box(heatmap: torch.Tensor, box: Box) -> float:
    """The share of a map's total inside a box: does the model look at the stethoscope or the face?

    Args:
        heatmap: (H, W) non-negative, or a guided (H, W, 3) map (see `saliency`).
        box: (x0, y0, x1, y1) in the map's pixels (the model's input crop), x1 and y1
            exclusive; clipped to the map.

    Returns:
        sum(map inside box) / sum(map), in [0, 1]; 0.0 for a map with no energy at all.

    Raises:
        ExplainerInputError: the box is empty or lies outside the map.
    """
    values = saliency(heatmap)
    height, width = values.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = max(0, x0), min(width, x1)
    y0, y1 = max(0, y0), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        raise ExplainerInputError(
            f"The box {tuple(box)} is empty or outside the {width}×{height} image; "
            "give (x0, y0, x1, y1) with x0 < x1 and y0 < y1."
        )
    total = values.sum()
    if total <= 0:
        return 0.0
    return float(values[y0:y1, x0:x1].sum() / total)


def box_shares(maps: Mapping[str, torch.Tensor], box: Box) -> dict[str, float]:
    """`energy_in_box` for every map of an explanation: method -> share inside the box."""
    return {name: energy_in_box(heatmap, box) for name, heatmap in maps.items()}


def scale_box(box: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """Map a box drawn on an image of size (W, H) ``from_size`` to one of size ``to_size``.

    The app draws the crop larger than the model input; this maps the user's box back to the
    map's pixels (rounding outwards).
    """
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x0, y0, x1, y1 = box
    return (math.floor(x0 * sx), math.floor(y0 * sy), math.ceil(x1 * sx), math.ceil(y1 * sy))


def parse_box(text: str) -> Box:
    """Read "x0,y0,x1,y1" (integers, x1 > x0, y1 > y0), as typed on the command line.

    Raises:
        ExplainerInputError: not four integers, or an empty box.
    """
    try:
        x0, y0, x1, y1 = (int(part) for part in text.replace(" ", "").split(","))
    except ValueError as error:
        raise ExplainerInputError(f"A box is four integers x0,y0,x1,y1; got {text!r}.") from error
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ExplainerInputError(
            f"The box {text!r} is empty or negative: need 0 <= x0 < x1 and 0 <= y0 < y1."
        )
    return (x0, y0, x1, y1)


def rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (as scipy.stats.rankdata)."""
    sorted_values, order = values.sort(stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    # A run of c equal values occupying positions s+1..s+c gets the average rank s + (c + 1) / 2.
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(average[inverse])
    ranks[order] = average[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape, flattened; ties get average ranks.

    rho = Pearson correlation of the ranks. A constant map has no ranking: the correlation with
    it is defined as 0 here (scipy would return NaN).
    """
    if a.shape != b.shape:
        raise ValueError(f"Maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}.")
    ra = rank(a.detach().flatten().double().cpu())
    rb = rank(b.detach().flatten().double().cpu())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = ra.norm() * rb.norm()
    if denominator == 0:
        return 0.0
    return float((ra * rb).sum() / denominator)


def class_scores(model: nn.Module, images: torch.Tensor, target: int, batch_size: int = 32) -> torch.Tensor:
    """Softmax probability of class ``target`` for a batch (N, 3, H, W), in chunks; (N,) on the CPU."""
    return torch.cat([chunk for chunk in _scores(model, iter(images.split(batch_size)), target)])


def _scores(model: nn.Module, chunks: Iterator[torch.Tensor], target: int) -> Iterator[torch.Tensor]:
    device = model_device(model)
    with torch.inference_mode():
        for chunk in chunks:
            chunk = chunk.to(device)
            if device.type == "cpu":  # oneDNN's channels-last convolutions: faster on a CPU (Score-CAM's too)
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            yield model(chunk).float().softmax(-1)[:, target].cpu()


def confidence(
    model: nn.Module, x: torch.Tensor, heatmaps: torch.Tensor, target: int
) -> tuple[float, torch.Tensor]:
    """Y and O of the Grad-CAM++ paper for one image and one or more maps, in one batch.

    Args:
        model: the classifier, in eval mode.
        x: the preprocessed image, (1, 3, H, W).
        heatmaps: (H, W) or (k, H, W) maps in [0, 1] (guided maps: pass `saliency(map)`).
        target: the class.

    Returns:
        (Y, O): the class's softmax score on x, and on x ⊙ map for each map, (k,).
    """
    heatmaps = heatmaps.detach().float().reshape(-1, *x.shape[-2:]).to(x.device)
    images = torch.cat([x, x * heatmaps[:, None]])  # (1 + k, 3, H, W)
    scores = class_scores(model, images, target)
    return float(scores[0]), scores[1:]


def average_drop(original: float | torch.Tensor, masked: float | torch.Tensor) -> float:
    """Average Drop %: mean of max(0, Y - O) / Y · 100 over images (one image: its drop).

    Y and O are read in the model's normalised input space (see the module docstring: as the
    `grad-cam` package, not the Grad-CAM++ paper's pixel space). Y = 0 gives NaN: no drop can
    be measured from a class the model gives no probability.

    Args:
        original: Y per image, a float or a 1-D tensor / sequence.
        masked: O per image, the same shape.
    """
    y, o = torch.as_tensor(original, dtype=torch.float64), torch.as_tensor(masked, dtype=torch.float64)
    return float(((y - o).clamp(min=0) / y).mean() * 100)


def increase_in_confidence(original: float | torch.Tensor, masked: float | torch.Tensor) -> float:
    """Increase in Confidence %: the share of images with O > Y (one image: 100 or 0)."""
    y, o = torch.as_tensor(original, dtype=torch.float64), torch.as_tensor(masked, dtype=torch.float64)
    return float((o > y).double().mean() * 100)


def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, 3, H, W), kernel side 2·ceil(3σ)+1 (odd); the insertion start image."""
    if sigma <= 0:
        return x.clone()
    side = 2 * math.ceil(3 * sigma) + 1
    side = min(side, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding needs side < image
    return TF.gaussian_blur(x, [side, side], [sigma, sigma])


def pixel_order(heatmap: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each pixel's rank (0 = most salient), (H, W); ties (large zero areas) in a seeded random order.

    A stable sort alone would break ties in raster order, deleting the top rows of a map's
    empty part first, which favours or penalises a map for where its zeros are.
    """
    flat = saliency(heatmap).flatten().cpu()
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(flat.numel(), generator=generator)
    order = shuffle[flat[shuffle].argsort(descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks.view(heatmap.shape[:2])


def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: torch.Tensor,
    target: int,
    steps: int = 32,
    baseline: float | torch.Tensor = 0.0,
    blur: float = 5.0,
    batch_size: int = 33,
    seed: int = 0,
) -> Curves:
    """Deletion and insertion curves of one map (RISE, Petsiuk et al. 2018, arXiv 1806.07421).

    Pixels are ranked by the map. At fraction f of the pixels, deletion shows the image with the
    top-f pixels replaced by ``baseline``; insertion shows the blurred image with the top-f pixels
    restored. The score is the class's softmax probability; AUC = ∫ score df by the trapezoid
    rule over f = 0, 1/steps, ..., 1. All 2·(steps + 1) images go through the model in batches
    under `torch.inference_mode`; they are built one batch at a time to bound memory.

    Args:
        model: the classifier, in eval mode (never modified).
        x: the preprocessed image, (1, 3, H, W).
        heatmap: (H, W) map, or a guided (H, W, 3) map (see `saliency`).
        target: the class.
        steps: number of intervals of the curve (RISE uses one step per 224 pixels, i.e. 224).
        baseline: value of deleted pixels in normalised space (0: the training mean colour), or
            a (1, 3, H, W) image.
        blur: σ in pixels of the Gaussian blur of the insertion start image (0: no blur).
        batch_size: images per forward pass.
        seed: order of pixels with equal saliency.

    Returns:
        `Curves`: fractions, deletion and insertion scores and their AUCs.
    """
    device = model_device(model)
    x = x.detach().float().to(device)
    height, width = x.shape[-2:]
    if saliency(heatmap).shape != (height, width):
        raise ExplainerInputError(f"Map {tuple(heatmap.shape)} and image {(height, width)} differ in size.")
    if steps < 1:
        raise ValueError("steps must be at least 1.")
    ranks = pixel_order(heatmap, seed).to(device)  # (H, W)
    fractions = torch.linspace(0, 1, steps + 1)
    counts = (fractions * height * width).round().to(device)  # pixels changed at each step
    start = blurred(x, blur)
    fill = torch.as_tensor(baseline, dtype=x.dtype, device=device).expand_as(x)

    def images(source: torch.Tensor, replacement: torch.Tensor) -> Iterator[torch.Tensor]:
        for chunk in counts.split(batch_size):
            changed = ranks[None, None] < chunk[:, None, None, None]  # (c, 1, H, W)
            yield torch.where(changed, replacement, source)

    deletion = torch.cat(list(_scores(model, images(x, fill), target)))
    insertion = torch.cat(list(_scores(model, images(start, x), target)))
    return make_curves(fractions, deletion, insertion)


def auc(fractions: torch.Tensor, scores: torch.Tensor) -> float:
    """Area under a curve by the trapezoid rule."""
    return float(torch.trapezoid(scores.double(), fractions.double()))


# Why a guided map gets no faithfulness scores (`Faithfulness.note`). Measured on Lite0 (Chelsea,
# rocket, espresso): image ⊙ guided backprop loses 98-100 % of the class probability with the map
# divided by its maximum (mask mean 0.02-0.06) and still 99-100 % scaled by its 99th percentile
# (mask mean 0.13-0.18), against 0-91 % for Grad-CAM (mask mean 0.15-0.22).
GUIDED_NOTE = (
    "a guided map marks single scattered pixels; masking or deleting those breaks the image in ways "
    "no smooth map does (image ⊙ map loses about 99 % of the class probability whatever the map shows), "
    "so Average Drop and deletion/insertion would score the scattering, not the map"
)

# Why a blank map gets no scores at all.
BLANK_NOTE = "the map is blank (the same everywhere), so there is nothing to score"

Progress = Callable[[int, int], "bool | None"]

# Images per forward pass of `faithfulness_batch` when none is given. On a CPU the best size
# depends on the model and the machine's caches: on two loaded cores, EfficientNet-Lite0 at
# 224 x 224 takes 34 / 36 / 42 / 59 / 93 CPU-ms per image at 4 / 8 / 16 / 32 / 64 (its
# memory-bound BatchNorm, padding and ReLU6 passes leave the caches), while ResNets gain from
# larger batches (Score-CAM's measurements: ResNet-50 208 / 161 / 159 ms at 16 / 32 / 64). So
# the first batches try each of these sizes twice, on the real work, and the rest use the
# fastest per image; the results do not depend on it.
CPU_SCORE_BATCH_SIZES = (4, 8, 16, 32)
GPU_SCORE_BATCH_SIZE = 256

# With ``workers`` > 1 on a CPU, each pass runs on one Torch thread and several run at once. A
# pass of EfficientNet-Lite0 does not split well over threads (its depthwise convolutions are
# small): on two cores, one pass on two threads took 35-44 ms per image at batch 4-32, and two
# one-thread passes at once 14-20 ms per image at batch 2-8 (ResNet-18 and -50 gain as well).
# Small batches suit them best: each pass's activations stay in its core's cache.
CPU_PARALLEL_SCORE_BATCH_SIZES = (2, 4, 8)


class _BatchSizer:
    """Images per forward pass: a fixed number, or on a CPU the fastest of `CPU_SCORE_BATCH_SIZES`,
    timed on the first batches (each size twice, the faster run counting: the first run of a
    shape also sets up its kernels)."""

    def __init__(self, fixed: int | None, device: torch.device, parallel: bool = False) -> None:
        self.trials: list[int] = []
        self.per_image: dict[int, float] = {}  # size -> best seconds per image
        if fixed is not None:
            self.size = fixed
        elif device.type == "cuda":
            self.size = GPU_SCORE_BATCH_SIZE
        else:
            self.trials = list(CPU_PARALLEL_SCORE_BATCH_SIZES if parallel else CPU_SCORE_BATCH_SIZES) * 2
            self.size = self.trials[0]
        self.pending: collections.deque[int] = collections.deque()  # sizes handed out, not yet timed

    def next_size(self) -> int:
        """The size of the next batch: on trial, the sizes in turn, counting the batches handed
        out but not timed yet (`hand_out`); then the fastest."""
        return self.trials[len(self.pending)] if len(self.pending) < len(self.trials) else self.size

    def hand_out(self, size: int) -> None:
        """A batch of ``size`` was handed out; its time comes later, in order (`record`)."""
        if self.trials:
            self.pending.append(size)

    def record(self, images: int, seconds: float) -> None:
        """Note how long the oldest batch handed out (``images`` of them: fewer at the end) took."""
        if not self.trials:
            return
        size = self.pending.popleft() if self.pending else self.trials[0]
        self.trials.pop(0)
        if images == size:
            self.per_image[size] = min(self.per_image.get(size, math.inf), seconds / images)
        if self.trials:
            self.size = self.trials[0]
        elif self.per_image:
            self.size = min(self.per_image, key=self.per_image.__getitem__)


class _ImageScoring:
    """The images that score one image's maps (`faithfulness`) and how their scores become results.

    What each image is (its spec): ("x",), ("masked", name), ("baseline",), ("blurred",), or
    ("deletion" | "insertion", name, step) for the inner steps 1 .. steps-1. The curves' shared
    ends are scored once: x (deletion at 0, insertion at 1), the all-baseline image (deletion at
    1) and the blurred image (insertion at 0).
    """

    def __init__(
        self,
        x: torch.Tensor,
        maps: Mapping[str, torch.Tensor],
        target: int,
        steps: int,
        blur: float,
        seed: int,
    ) -> None:
        device = x.device
        height, width = x.shape[-2:]
        self.names = list(maps)
        for name in self.names:
            if saliency(maps[name]).shape != (height, width):
                raise ExplainerInputError(
                    f"Map {tuple(maps[name].shape)} and image {(height, width)} differ in size."
                )
        self.target = int(target)
        self.steps = steps
        self.notes = {
            name: GUIDED_NOTE if maps[name].ndim == 3 else BLANK_NOTE
            for name in self.names
            if maps[name].ndim == 3 or is_blank(maps[name])
        }
        scored = [name for name in self.names if name not in self.notes]
        self.masks = {name: saliency(maps[name]).to(device) for name in scored}
        curved = scored if steps else []
        self.ranks = {name: pixel_order(maps[name], seed).to(device) for name in curved}
        self.fractions = torch.linspace(0, 1, steps + 1) if curved else torch.zeros(0)
        self.counts = (self.fractions * height * width).round().to(device)
        self.x = x[0]
        self.start = blurred(x, blur)[0] if curved else self.x
        self.fill = torch.zeros_like(self.x)
        self.specs: list[tuple] = [("x",)] + [("masked", name) for name in scored]
        if curved:
            self.specs += [("baseline",), ("blurred",)]
            self.specs += [
                (kind, name, i)
                for name in curved
                for kind in ("deletion", "insertion")
                for i in range(1, steps)
            ]

    def image(self, spec: tuple) -> torch.Tensor:
        """The (C, H, W) image of one spec."""
        kind = spec[0]
        if kind == "x":
            return self.x
        if kind == "masked":
            return self.x * self.masks[spec[1]]
        if kind == "baseline":
            return self.fill
        if kind == "blurred":
            return self.start
        changed = self.ranks[spec[1]] < self.counts[spec[2]]  # (H, W): the top pixels of that step
        if kind == "deletion":
            return torch.where(changed, self.fill, self.x)
        return torch.where(changed, self.x, self.start)

    def results(self, scores: torch.Tensor) -> dict[str, Faithfulness]:
        """method -> `Faithfulness`, from the class's probability on each spec's image, (len(specs),)."""
        index = {spec: i for i, spec in enumerate(self.specs)}
        original = float(scores[0])
        steps = self.steps

        def curves_of(name: str) -> Curves:
            inner = {
                kind: scores[[index[(kind, name, i)] for i in range(1, steps)]]
                for kind in ("deletion", "insertion")
            }
            deletion = torch.cat([scores[:1], inner["deletion"], scores[index[("baseline",)]][None]])
            insertion = torch.cat([scores[index[("blurred",)]][None], inner["insertion"], scores[:1]])
            return make_curves(self.fractions, deletion, insertion)

        results = {}
        for name in self.names:
            if name in self.notes:
                results[name] = Faithfulness(original, math.nan, math.nan, False, None, self.notes[name])
                continue
            masked = float(scores[index[("masked", name)]])
            results[name] = Faithfulness(
                original=original,
                masked=masked,
                drop=average_drop(original, masked),
                increase=masked > original,
                curves=curves_of(name) if name in self.ranks else None,
            )
        return results


def faithfulness(
    model: nn.Module,
    x: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    target: int,
    steps: int = 32,
    blur: float = 5.0,
    seed: int = 0,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict[str, Faithfulness]:
    """Every faithfulness score of several maps of one image, in one set of batched forward passes.

    The images of all maps go through the model together: x, the image masked by each map
    (Average Drop), and each map's deletion and insertion images (`deletion_insertion`, whose
    curves these equal). The curves' shared ends are scored once: x (deletion at 0, insertion
    at 1), the all-baseline image (deletion at 1) and the blurred image (insertion at 0). So k
    maps cost 3 + k + 2k(steps - 1) images instead of k(2 steps + 3) + 1, in batches of
    ``batch_size``. For many images, `faithfulness_batch` shares the batches between them.

    Guided maps (H, W, 3) get no scores (NaN, with `GUIDED_NOTE`): divided by its maximum a guided
    map averages 0.01-0.06 and blanks the image, and even scaled by its 99th percentile its
    scattered pixels do (see `GUIDED_NOTE`); deletion favours them for the same reason. A blank
    map gets no score either (`BLANK_NOTE`): masking with it scores the blank image, not the map.

    Args:
        model: the classifier, in eval mode.
        x: the preprocessed image, (1, 3, H, W).
        maps: method -> map, as in `Explanation.maps` (CAM (H, W) or guided (H, W, 3)).
        target: the explained class (`Explanation.target`).
        steps, blur, seed: see `deletion_insertion`; steps=0 skips the curves (Average Drop and
            Increase in Confidence only: one forward pass for all maps).
        batch_size: images per forward pass.
        progress: called as progress(done, total) with the number of images scored, before the
            first batch and after each; returning False stops the work (`Cancelled`).

    Returns:
        method -> `Faithfulness`.

    Raises:
        Cancelled: ``progress`` returned False.
    """
    device = model_device(model)
    plan = _ImageScoring(x.detach().float().to(device), maps, target, steps, blur, seed)

    def batches() -> Iterator[torch.Tensor]:
        for first in range(0, len(plan.specs), batch_size):
            yield torch.stack([plan.image(spec) for spec in plan.specs[first : first + batch_size]])

    scores = torch.empty(len(plan.specs))
    done = 0
    _report(progress, done, len(plan.specs))
    for chunk in _scores(model, batches(), plan.target):
        scores[done : done + chunk.numel()] = chunk
        done += chunk.numel()
        _report(progress, done, len(plan.specs))
    return plan.results(scores)


def faithfulness_batch(
    model: nn.Module,
    x: torch.Tensor,
    maps: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[int],
    steps: int = 16,
    blur: float = 5.0,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> list[dict[str, Faithfulness]]:
    """`faithfulness` of N images × M maps, their images sharing batched forward passes.

    Each image's scored images are those of `faithfulness`; here the images of consecutive
    input images fill the same batches (no partly filled batch per image), and the all-baseline
    image, the same for every input, is scored once for all. Inputs are prepared a batch at a
    time, so memory does not grow with N. Each result equals ``faithfulness(model, x[i:i+1],
    maps[i], targets[i], steps, blur, seed)`` up to the rounding of batched kernels.

    Args:
        model: the classifier, in eval mode (never modified).
        x: the preprocessed images, (N, C, H, W).
        maps: per image, method -> map (as `Explanation.maps`).
        targets: per image, the explained class (`Explanation.target`).
        steps, blur, seed: as for `faithfulness` (default steps: 16, the audit's).
        batch_size: images per forward pass; None: on a CPU the fastest of
            `CPU_SCORE_BATCH_SIZES`, timed on the first batches; on a GPU `GPU_SCORE_BATCH_SIZE`.
        progress: called as progress(done, total) with the number of images scored over all
            inputs, before the first batch and after each; returning False stops (`Cancelled`).
        workers: on a CPU, forward passes run at once, each on one Torch thread (see
            `CPU_PARALLEL_SCORE_BATCH_SIZES`): give the cores this process may use. Meanwhile
            Torch's thread count is 1 for the whole process. 1 (default): one pass at a time on
            Torch's threads. Ignored on a GPU.

    Returns:
        Per image, method -> `Faithfulness`.

    Raises:
        ExplainerInputError: a count or size that does not match.
        Cancelled: ``progress`` returned False.
    """
    if x.ndim != 4:
        raise ExplainerInputError(f"Expected images of shape (N, C, H, W), got {tuple(x.shape)}.")
    count = x.shape[0]
    if len(maps) != count or len(targets) != count:
        raise ExplainerInputError(
            f"{count} images need as many maps and targets: got {len(maps)} and {len(targets)}."
        )
    if steps < 0:
        raise ValueError("steps must be 0 or more.")
    device = model_device(model)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ExplainerInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ExplainerInputError(f"workers must be a positive integer, got {workers!r}.")
    parallel = workers > 1 and device.type == "cpu"
    workers = workers if parallel else 1
    sizer = _BatchSizer(batch_size, device, parallel)
    if count == 0:
        return []
    x = x.detach().float()
    share_baseline = steps > 0

    # Every image's spec count is known from its maps alone: the total, for progress.
    def spec_count(image_maps: Mapping[str, torch.Tensor]) -> int:
        scored = sum(not (m.ndim == 3 or is_blank(m)) for m in image_maps.values())
        return 1 + scored + (2 * scored * (steps - 1) + 1 if scored and steps else 0)

    total = int(share_baseline) + sum(spec_count(m) for m in maps)
    # Rows are (image index, position in its specs, spec); image -1 is the all-baseline image,
    # the same for every input, scored once: its probabilities of every class are kept.
    plans: dict[int, _ImageScoring] = {}  # the images whose rows are being scored
    scores: dict[int, torch.Tensor] = {}
    remaining: dict[int, int] = {}  # rows of an image not scored yet
    baseline: torch.Tensor | None = None  # (num_classes,)
    results: list[dict[str, Faithfulness]] = []

    def rows() -> Iterator[tuple[int, int, tuple]]:
        if share_baseline:
            yield -1, -1, ("baseline",)
        for i in range(count):
            current = plans[i] = _ImageScoring(
                x[i : i + 1].to(device), maps[i], targets[i], steps, blur, seed
            )
            scores[i] = torch.empty(len(current.specs))
            remaining[i] = sum(spec != ("baseline",) for spec in current.specs)
            for position, spec in enumerate(current.specs):
                if spec != ("baseline",):
                    yield i, position, spec

    def finish(i: int) -> None:
        current, values = plans.pop(i), scores.pop(i)
        del remaining[i]
        if ("baseline",) in current.specs:
            values[current.specs.index(("baseline",))] = baseline[current.target]
        results.append(current.results(values))

    def timed(batch: list[tuple[int, int, tuple]]) -> tuple[torch.Tensor, float]:
        # Built by the worker that scores it: with several, the masking runs side by side too.
        start = time.perf_counter()
        images = torch.stack([plans[i].image(spec) if i >= 0 else blank for i, _, spec in batch])
        return _probabilities(model, images), time.perf_counter() - start

    done = 0
    _report(progress, done, total)
    stream = rows()
    blank = torch.zeros_like(x[0], device=device)
    in_flight: collections.deque[tuple[list, Future]] = collections.deque()
    exhausted = False
    with _scoring_pool(workers) as submit:
        while True:
            if not exhausted:
                size = sizer.next_size()
                batch = list(itertools.islice(stream, size))
                exhausted = not batch
                if batch:
                    sizer.hand_out(size)
                    in_flight.append((batch, submit(timed, batch)))
                    if len(in_flight) < workers:  # keep every worker busy
                        continue
            if not in_flight:
                break
            batch, future = in_flight.popleft()
            probabilities, seconds = future.result()  # (b, num_classes), on the CPU
            sizer.record(len(batch), seconds)
            for row, (i, position, _) in enumerate(batch):
                if i < 0:
                    baseline = probabilities[row]
                    continue
                scores[i][position] = probabilities[row, plans[i].target]
                remaining[i] -= 1
            for i in [i for i, left in remaining.items() if left == 0]:  # images in order
                finish(i)
            done += len(batch)
            _report(progress, done, total)
    return results


@contextmanager
def _scoring_pool(workers: int) -> Iterator[Callable[..., Future]]:
    """``submit(fn, *args) -> Future``: with one worker, ``fn`` runs at once on this thread; with
    more, on a pool of that many threads while Torch uses one thread per operation (restored after)."""
    if workers <= 1:

        def run_now(fn: Callable, *args: object) -> Future:
            future: Future = Future()
            future.set_result(fn(*args))
            return future

        yield run_now
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="score") as pool:
            try:
                yield pool.submit
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        torch.set_num_threads(threads)


def _probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax class probabilities of a batch, (b, num_classes), on the CPU."""
    if images.device.type == "cpu":  # oneDNN's channels-last convolutions (as `_scores`)
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return model(images).float().softmax(-1).cpu()


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None and progress(done, total) is False:
        raise Cancelled(f"Faithfulness scoring was stopped after {done} of {total} forward passes.")


def summarise(scores: Sequence[Faithfulness]) -> dict[str, float]:
    """Aggregate per-image scores of one method over images (the papers' tables).

    Images whose map was left out (a blank map; a guided map throughout) are not averaged; with
    none left, every value is NaN.

    Returns:
        average_drop (%), increase_in_confidence (%), deletion_auc and insertion_auc (means).
    """
    if not scores:
        raise ValueError("No scores to summarise.")
    scores = [s for s in scores if not math.isnan(s.drop)]  # left out (guided, blank): not averaged
    if not scores:
        return dict.fromkeys(
            ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"), math.nan
        )
    y = torch.tensor([s.original for s in scores])
    o = torch.tensor([s.masked for s in scores])
    return {
        "average_drop": average_drop(y, o),
        "increase_in_confidence": increase_in_confidence(y, o),
        "deletion_auc": sum(s.deletion_auc for s in scores) / len(scores),
        "insertion_auc": sum(s.insertion_auc for s in scores) / len(scores),
    }
