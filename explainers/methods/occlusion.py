"""Occlusion sensitivity: how much the class score drops when a patch of the input is covered.

Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks" (arXiv 1311.2901),
section 4.2: a grey square slides over the image and the probability of the correct class is
recorded at each position. Here, for a window of w×w input pixels moved by a stride s:

    d_p   = p_c(X) - p_c(X with window p replaced by the baseline)     one forward pass per p
    M_ij  = mean of d_p over the windows p that cover pixel (i, j)
    map   = minmax(ReLU(M))                                            (counterfactual: -M)

The positions follow Captum's `Occlusion`: ceil((D - w) / s) + 1 per side, the last one cut at
the border, so every pixel is covered, and M is what Captum returns with the same window and
stride (tests/test_occlusion.py). The map is positive where covering the pixels lowers the class
score, row 0 at the top, like every CAM. It needs no layer and no gradient: only forward passes,
batched under `torch.inference_mode`, with a progress callback as Score-CAM's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as TF

from explainers.errors import ExplainerInputError
from explainers.methods.core import Evidence, Method, normalise, register
from explainers.methods.score import Progress, default_batch_size, report_progress

# Baselines a window is filled with. "zero" is the model input's zero: under ImageNet
# normalisation, the training set's mean colour (Captum's default baseline); "blur" is the input
# blurred, so only detail is removed, not colour.
BASELINES = ("zero", "blur")
SCORES = ("probability", "logit")
# Default window: this fraction of the input's short side (32 px at 224); stride half a window.
WINDOW_FRACTION = 1 / 7


@dataclass(frozen=True)
class OcclusionOptions:
    """Occlusion's options, read from `Evidence.options` (keys ``occlusion_*``, plus the shared
    ``batch_size`` and ``progress``).

    Attributes:
        window: side of the square patch in input pixels; None: a seventh of the short side.
        stride: step between positions in pixels, at most the window; None: half the window.
        baseline: a name from `BASELINES`, or a number (an input value, e.g. the normalised grey)
            or a tensor broadcastable to the input, (1, channels, 1, 1) for a colour.
        score: "probability" (the paper's: softmax of the class) or "logit".
        batch_size: occluded images per forward pass; None picks one from the device.
        progress: called as progress(done, total) with the occluded images scored; returning
            False stops the work (`Cancelled`).
    """

    window: int | None = None
    stride: int | None = None
    baseline: str | float | torch.Tensor = "zero"
    score: str = "probability"
    batch_size: int | None = None
    progress: Progress | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> OcclusionOptions:
        """Read and check the options; other keys belong to other methods and are ignored."""
        for key in ("occlusion_window", "occlusion_stride", "batch_size"):
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                name = key.removeprefix("occlusion_")
                raise ExplainerInputError(f"Occlusion's {name} must be a positive integer, got {value!r}.")
        baseline = options.get("occlusion_baseline", "zero")
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise ExplainerInputError(
                f"Unknown occlusion baseline {baseline!r}; choose one of {', '.join(BASELINES)}, "
                "a number or a tensor."
            )
        score = options.get("occlusion_score", "probability")
        if score not in SCORES:
            raise ExplainerInputError(
                f"Unknown occlusion score {score!r}; choose one of {', '.join(SCORES)}."
            )
        progress = options.get("progress")
        if progress is not None and not callable(progress):
            raise ExplainerInputError("Occlusion's progress must be callable as progress(done, total).")
        return cls(
            options.get("occlusion_window"),
            options.get("occlusion_stride"),
            baseline,
            score,
            options.get("batch_size"),
            progress,
        )


def default_window(size: tuple[int, int]) -> tuple[int, int]:
    """The default (window, stride) for an input of (H, W): a seventh of the short side, half of it."""
    window = max(1, round(min(size) * WINDOW_FRACTION))
    return window, max(1, window // 2)


def positions(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one side, as Captum's `Occlusion`: ceil((D - w) / s) + 1, from 0."""
    return [i * stride for i in range(math.ceil((length - window) / stride) + 1)]


@dataclass(frozen=True)
class OcclusionRun:
    """What an occlusion computation did, in `Explanation.extras["occlusion"]`.

    Attributes:
        window, stride: in input pixels.
        rows, cols: window starts (y and x), so position (r, c) covers
            [rows[r], rows[r] + window) × [cols[c], cols[c] + window), cut at the border.
        baseline: what filled the window, as said to the user.
        baseline_kind: "zero", "blur", "value" (a number) or "tensor".
        score: "probability" or "logit".
        base: (k,) the score of each class on the unchanged input.
        drops: (k, len(rows), len(cols)) score on the input minus score with the window covered
            (negated when counterfactual), on the CPU.
        attribution: (k, H, W) the mean drop over the windows covering each pixel (before ReLU).
        passes: occluded images scored; batch_size: per forward pass.
    """

    window: int
    stride: int
    rows: list[int]
    cols: list[int]
    baseline: str
    baseline_kind: str
    score: str
    base: torch.Tensor
    drops: torch.Tensor
    attribution: torch.Tensor
    passes: int
    batch_size: int


def _baseline(x: torch.Tensor, options: OcclusionOptions, window: int) -> tuple[torch.Tensor, str]:
    """The tensor a covered window takes its values from, broadcastable to x, and its name."""
    baseline = options.baseline
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x), "a given tensor"
    if baseline == "zero":
        return torch.zeros_like(x), "zero input (the training mean colour)"
    if baseline == "blur":
        kernel = 2 * max(1, window // 2) + 1
        return TF.gaussian_blur(x, [kernel, kernel], [window / 4, window / 4]), "the input blurred"
    return torch.full_like(x, float(baseline)), f"the input value {float(baseline):g}"


def occlude(evidence: Evidence) -> OcclusionRun:
    """Run the occluded passes of a request once (kept in ``evidence.memo``), for all its classes."""
    return evidence.memo("occlusion", lambda: _occlude(evidence))


def _occlude(evidence: Evidence) -> OcclusionRun:
    options = OcclusionOptions.from_mapping(evidence.options)
    x, targets, model = evidence.x, evidence.targets, evidence.model
    height, width = evidence.input_size
    window = options.window or default_window((height, width))[0]
    stride = options.stride or max(1, window // 2)
    if window > min(height, width):
        raise ExplainerInputError(
            f"The occlusion window ({window} px) is larger than the input ({width}×{height}); choose a "
            f"window of at most {min(height, width)} px."
        )
    if stride > window:
        raise ExplainerInputError(
            f"The occlusion stride ({stride} px) is larger than the window ({window} px): some pixels "
            "would never be covered. Choose a stride of at most the window."
        )
    rows, cols = positions(height, window, stride), positions(width, window, stride)
    baseline, said = _baseline(x, options, window)
    logits = evidence.logits.detach().float()
    base = _score(logits[None], targets, options.score)[0]  # (k,) from the forward pass already made
    total = len(rows) * len(cols)
    batch_size = options.batch_size or default_batch_size(x)
    scores = torch.empty(total, targets.numel(), device=x.device)
    spots = [(r, c) for r in rows for c in cols]
    done = 0
    report_progress(options.progress, 0, total, method="Occlusion")
    with torch.inference_mode():
        while done < total:
            batch = spots[done : done + batch_size]
            inputs = x.repeat(len(batch), 1, 1, 1)
            for i, (r, c) in enumerate(batch):
                inputs[i, :, r : r + window, c : c + window] = baseline[0, :, r : r + window, c : c + window]
            if inputs.device.type == "cpu":  # oneDNN's channels-last convolutions: faster on a CPU
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            scores[done : done + len(batch)] = _score(model(inputs).float(), targets, options.score)
            done += len(batch)
            report_progress(options.progress, done, total, x.device, method="Occlusion")
    scores = scores.clone()  # a normal tensor, usable outside inference mode
    sign = -1.0 if evidence.counterfactual else 1.0
    drops = sign * (base[None] - scores)  # (n, k)
    k = targets.numel()
    total_drop = torch.zeros(k, height, width, device=x.device)
    counts = torch.zeros(height, width, device=x.device)
    for i, (r, c) in enumerate(spots):
        total_drop[:, r : r + window, c : c + window] += drops[i][:, None, None]
        counts[r : r + window, c : c + window] += 1
    attribution = total_drop / counts
    grid = drops.T.reshape(k, len(rows), len(cols))
    kind = "tensor" if isinstance(options.baseline, torch.Tensor) else options.baseline
    kind = kind if kind in ("zero", "blur", "tensor") else "value"
    return OcclusionRun(
        window,
        stride,
        rows,
        cols,
        said,
        kind,
        options.score,
        base.cpu(),
        grid.cpu(),
        attribution,
        total,
        batch_size,
    )


def _score(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """(b, num_classes) logits -> (b, k) the score of each target."""
    values = logits.softmax(-1) if score == "probability" else logits
    return values[:, targets]


@register
class Occlusion(Method):
    """Occlusion sensitivity, Zeiler & Fergus 2014 (arXiv 1311.2901), section 4.2.

    The map is the mean drop of the class probability over the windows covering each pixel,
    rectified and normalised like a CAM. It ignores the target layer; ``raw`` is the grid of drops,
    one per window position. Options (``explain(..., options=...)``): ``occlusion_window``,
    ``occlusion_stride``, ``occlusion_baseline``, ``occlusion_score``, ``batch_size``,
    ``progress`` (see `OcclusionOptions`); what it did is in ``extras["occlusion"]``.
    """

    name = "occlusion"
    title = "Occlusion"
    kind = "cam"

    def compute(self, evidence: Evidence, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        run = occlude(evidence)
        evidence.extras["occlusion"] = run
        attribution = run.attribution  # (k, H, W)
        magnitude = attribution.abs().flatten(1).amax(1)
        return run.drops.to(attribution.device), normalise(attribution.relu(), magnitude)


def occlusion_passes(size: tuple[int, int], window: int | None = None, stride: int | None = None) -> int:
    """How many occluded images (forward passes of one image) a request on an input of (H, W) scores."""
    window = window or default_window(size)[0]
    stride = stride or max(1, window // 2)
    return len(positions(size[0], window, stride)) * len(positions(size[1], window, stride))
