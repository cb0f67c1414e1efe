"""Score-CAM: channel weights from the class score of the input masked by each channel.

Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks" (arXiv 1910.01279). For each channel k of the layer's activation A (1, C, h, w):

    H^k = minmax(upsample(A^k))          the mask, (H, W) in [0, 1]
    s_k = p_c(X * H^k)                   softmax probability of class c on the masked input
    L^c = ReLU(sum_k w_k A^k)            with w_k from s_k, see `SCORINGS`

The masked forwards are plain forward passes (no hooks, the model untouched) batched under
`torch.inference_mode`; one batch of passes serves every target class of a request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explainers.errors import Cancelled, ExplainerInputError, MethodError
from explainers.methods.cam import WeightedActivationCAM
from explainers.methods.core import Evidence, register
from explainers.methods.smooth import AUGMENTATIONS, augment

Progress = Callable[[int, int], "bool | None"]

SCORINGS: dict[str, str] = {
    # The official code (haofanwang/Score-CAM): the weight is the softmax probability itself, no
    # softmax over channels. Our default: it keeps the map class-discriminative.
    "official": "w_k = p_c(X * H^k)",
    # The paper: a softmax over channels of the probabilities (each minus the baseline
    # image's, a constant that the softmax cancels). Probabilities lie in [0, 1], so the
    # weights differ by at most a factor e and the map leans towards the plain channel sum.
    "paper": "w = softmax_k(p_c(X * H^k))",
    # The `grad-cam` package's ScoreCAM with its default target (ClassifierOutputTarget):
    # softmax over channels of the logits y_c(X * H^k).
    "logits": "w = softmax_k(y_c(X * H^k))",
}

# Masked images per forward pass on the CPU. On two cores at 224 x 224, per image: ResNet-18
# 70 / 53 / 44 ms and ResNet-50 208 / 161 / 159 ms at 16 / 32 / 64; 32 gets most of the gain
# for half the memory of 64 (a VGG-16 batch of 64 would hold gigabytes).
CPU_BATCH_SIZE = 32
# On a GPU the batch fills half the free memory, assuming a forward pass in inference mode
# holds at most this many bytes per input value (VGG-16: about 25); capped at MAX_GPU_BATCH.
GPU_BYTES_PER_INPUT_VALUE = 4 * 64
MAX_GPU_BATCH = 256


@dataclass(frozen=True)
class ScoreOptions:
    """Score-CAM's options, read from `Evidence.options` (`explain(..., options={...})`).

    Attributes:
        scoring: a key of `SCORINGS`.
        max_channels: score only the channels with the largest Grad-CAM weights, per class;
            an approximation (labelled so in the result's extras). None scores them all.
        batch_size: masked images per forward pass; None picks one from the device.
        progress: called as progress(done, total) with the number of masked images scored,
            once before the first batch and after each; returning False stops the work,
            which raises `Cancelled`.
        align_corners: how the masks are upsampled (bilinear); True reproduces the `grad-cam`
            package's masks (``UpsamplingBilinear2d``), False (ours, the official code's)
            matches the upsampling of every displayed CAM.
    """

    scoring: str = "official"
    max_channels: int | None = None
    batch_size: int | None = None
    progress: Progress | None = None
    align_corners: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> ScoreOptions:
        """Read and check the options; unknown keys belong to other methods and are ignored."""
        scoring = options.get("scoring", "official")
        if scoring not in SCORINGS:
            raise ExplainerInputError(
                f"Unknown Score-CAM scoring {scoring!r}; choose one of {', '.join(SCORINGS)}."
            )
        for key in ("max_channels", "batch_size"):
            value = options.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ExplainerInputError(f"Score-CAM's {key} must be a positive integer, got {value!r}.")
        progress = options.get("progress")
        if progress is not None and not callable(progress):
            raise ExplainerInputError("Score-CAM's progress must be callable as progress(done, total).")
        align_corners = bool(options.get("align_corners", False))
        return cls(scoring, options.get("max_channels"), options.get("batch_size"), progress, align_corners)


@dataclass(frozen=True)
class ScoreRun:
    """What a Score-CAM computation did, in `Explanation.extras["scorecam"][layer]`.

    Attributes:
        passes: masked images scored (forward passes of one image each).
        batch_size: masked images per batched forward pass.
        channels: channels that carry a weight, per class.
        layer_channels: channels of the layer.
        scoring: the `SCORINGS` key used.
        approximation: None for the exact method, else what was left out.
    """

    passes: int
    batch_size: int
    channels: int
    layer_channels: int
    scoring: str
    approximation: str | None


@dataclass(frozen=True)
class _Plan:
    selection: torch.Tensor  # (k, m) the channels each target class weighs
    varying: torch.Tensor  # (n,) selected channels whose mask varies: one pass each
    constant: bool  # some selected channel is constant: its mask is zero

    def passes(self, scoring: str) -> int:
        # A zero mask blanks the input: one shared pass, or none where the official code
        # skips such channels.
        return self.varying.numel() + int(self.constant and scoring != "official")


def _plan(evidence: Evidence, layer: str, max_channels: int | None) -> _Plan:
    def compute() -> _Plan:
        activations = evidence.activations(layer)[0]  # (C, h, w)
        count = activations.shape[0]
        k = evidence.targets.numel()
        if max_channels is None or max_channels >= count:
            selection = torch.arange(count, device=activations.device).expand(k, count)
        else:  # the channels with the largest Grad-CAM weights, per class
            selection = evidence.gradients(layer).mean((2, 3)).topk(max_channels, dim=1).indices
        channels = selection.unique()
        flat = activations[channels].flatten(1)
        constant = flat.amax(1) == flat.amin(1)
        return _Plan(selection, channels[~constant], bool(constant.any()))

    return evidence.memo(f"scorecam-plan:{layer}", compute)


def default_batch_size(x: torch.Tensor) -> int:
    """Masked images per forward pass for inputs like ``x`` (1, 3, H, W) on its device."""
    if x.device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(x.device)
    return max(1, min(MAX_GPU_BATCH, int(free // 2 // (GPU_BYTES_PER_INPUT_VALUE * x[0].numel()))))


def _masked_scores(
    evidence: Evidence, layer: str, plan: _Plan, options: ScoreOptions
) -> tuple[torch.Tensor, int]:
    """Score every planned channel's masked input, in batches.

    Returns:
        (C, k, 2): per channel and target class, the logit and the log softmax probability
        on the masked input (NaN for channels not scored); and the batch size used.
    """
    model, x, targets = evidence.model, evidence.x, evidence.targets
    activations = evidence.activations(layer)[0]  # (C, h, w)
    table = torch.full((activations.shape[0], targets.numel(), 2), math.nan, device=x.device)
    batch_size = options.batch_size or default_batch_size(x)
    total, done = plan.passes(options.scoring), 0
    report_progress(options.progress, done, total)

    def score(inputs: torch.Tensor) -> torch.Tensor:  # (b, 3, H, W) -> (b, k, 2)
        if inputs.device.type == "cpu":  # oneDNN's convolutions: about 20% faster, same result
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        logits = model(inputs).float()
        chosen = logits[:, targets]
        return torch.stack([chosen, chosen - logits.logsumexp(1, keepdim=True)], -1)

    with torch.inference_mode():
        channels = plan.varying
        while done < channels.numel():
            batch = channels[done : done + batch_size]
            masks = F.interpolate(
                activations[batch, None],
                evidence.input_size,
                mode="bilinear",
                align_corners=options.align_corners,
            )  # (b, 1, H, W)
            low = masks.amin((2, 3), keepdim=True)
            high = masks.amax((2, 3), keepdim=True)
            masks = (masks - low) / torch.where(high > low, high - low, torch.ones_like(high))
            try:
                table[batch] = score(x * masks)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2  # the memory estimate was too optimistic: retry with half
                continue
            done += batch.numel()
            report_progress(options.progress, done, total, x.device)
        if done < total:  # the constant channels: one pass on the blank input they all give
            constant = torch.ones(activations.shape[0], dtype=torch.bool, device=x.device)
            constant[plan.varying] = False
            table[constant] = score(torch.zeros_like(x))
            report_progress(options.progress, total, total)
    return table.clone(), batch_size  # a normal tensor, usable outside inference mode


def report_progress(
    progress: Progress | None,
    done: int,
    total: int,
    device: torch.device | None = None,
    method: str = "Score-CAM",
) -> None:
    """Tell ``progress`` how many of ``total`` forward passes are done; raise `Cancelled` naming
    ``method`` when it returns False (Score-CAM's and occlusion's passes report the same way)."""
    if progress is None:
        return
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)  # report finished work, not work merely queued
    if progress(done, total) is False:
        raise Cancelled(f"{method} was stopped after {done} of {total} forward passes.")


@register
class ScoreCAM(WeightedActivationCAM):
    """Score-CAM, Wang et al. 2020 (arXiv 1910.01279): w_k from p_c(X * minmax(upsample(A^k))).

    We follow the official code by default: w_k is the raw softmax probability of the class
    on the masked input (``scoring="official"``), and channels with a constant activation
    (an all-zero mask) are skipped. ``scoring="paper"`` applies the paper's softmax over
    channels to the probabilities; ``scoring="logits"`` applies it to the logits.

    The `grad-cam` package's ``ScoreCAM`` (1.5.7) always takes a softmax over channels of its
    target's value on each masked input, so with ``align_corners=True`` for the masks it gives
    our maps as follows: ``scoring="logits"`` with ``ClassifierOutputTarget`` (its default, the
    logit); ``scoring="paper"`` with ``ClassifierOutputSoftmaxTarget`` (the probability); and
    ``scoring="official"`` with a log-softmax target, since softmax_k(log p_k) = p_k / sum p is
    the official raw probability up to a positive factor that the map's normalisation removes
    (tests/test_score.py::test_scorecam_matches_package). Options come from ``explain(..., options=...)``,
    see `ScoreOptions`; ``max_channels`` makes the map an approximation, said so in
    ``extras["scorecam"][layer].approximation``.
    Score-CAM uses no gradients, so there is no counterfactual variant.
    """

    name = "scorecam"
    title = "Score-CAM"
    reads_gradient = False  # masked forward passes (its max_channels choice aside)

    def layer_weights(self, evidence: Evidence, layer: str) -> torch.Tensor:
        if evidence.counterfactual:
            raise MethodError("Score-CAM has no counterfactual variant (it uses no gradients).")
        options = ScoreOptions.from_mapping(evidence.options)
        plan = _plan(evidence, layer, options.max_channels)
        table, batch_size = evidence.memo(
            f"scorecam-scores:{layer}", lambda: _masked_scores(evidence, layer, plan, options)
        )
        k = evidence.targets.numel()
        picked = table[plan.selection, torch.arange(k, device=table.device)[:, None]]  # (k, m, 2)
        logit, log_prob = picked.unbind(-1)
        if options.scoring == "official":  # unscored (constant) channels weigh nothing
            chosen = torch.nan_to_num(log_prob.exp(), nan=0.0)
        elif options.scoring == "paper":
            chosen = log_prob.exp().softmax(1)
        else:
            chosen = logit.softmax(1)
        count = evidence.activations(layer).shape[1]
        weights = torch.zeros(k, count, device=table.device).scatter(1, plan.selection, chosen)
        approximation = None
        if plan.selection.shape[1] < count:
            approximation = (
                f"approximation: only the {plan.selection.shape[1]} of {count} channels with the "
                "largest Grad-CAM weights were scored"
            )
        run = ScoreRun(
            plan.passes(options.scoring),
            batch_size,
            plan.selection.shape[1],
            count,
            options.scoring,
            approximation,
        )
        evidence.extras.setdefault("scorecam", {})[layer] = run
        return weights.to(evidence.activations(layer).dtype)


def scorecam_passes(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    targets: int | Sequence[int] | None = None,
    *,
    options: Mapping[str, object] | None = None,
    top_k: int = 1,
    aug_smooth: bool = False,
) -> int:
    """How many masked images (forward passes of one image) a Score-CAM request will score.

    Costs one forward pass to read the layer's channels (and one backward pass to the layer
    with ``max_channels``); call it before `explain` to tell the user what the wait will be.
    The images run in batches of `ScoreOptions.batch_size`.

    Args:
        model, x, layer: as for `explain`.
        targets: the class or classes to explain; None: the top ``top_k``.
        options: as for `explain`; ``max_channels`` and ``scoring`` change the count.
        top_k: see ``targets``.
        aug_smooth: count the passes of all six augmented inputs.
    """
    settings = ScoreOptions.from_mapping(options or {})
    scoring, max_channels = settings.scoring, settings.max_channels
    targets = [targets] if isinstance(targets, int) else targets
    evidence = Evidence(model, x, [layer], targets, top_k=top_k)
    passes = _plan(evidence, layer, max_channels).passes(scoring)
    if aug_smooth:
        fixed = evidence.targets.tolist()
        for flip, factor in AUGMENTATIONS:
            if (flip, factor) != (False, 1.0):
                augmented = Evidence(model, augment(x, flip, factor), [layer], fixed)
                passes += _plan(augmented, layer, max_channels).passes(scoring)
    return passes
