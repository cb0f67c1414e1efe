"""How a class activation map was made: its steps, read from the passes that made it.

Every CAM of `explainers.methods.cam` (and Score-CAM) is L = ReLU(S), S = Σ_k W^k ⊙ A^k, upsampled and
min–max normalised, where W^k is a channel weight w_k (Grad-CAM, Grad-CAM++, XGrad-CAM, CAM,
Score-CAM) or an element-wise weight map (LayerCAM, HiResCAM). `map_steps` takes the `Evidence`
of a request *after* its maps were computed and returns what each step holds: the weights, each
channel's contribution to S, S itself before the ReLU, and the layer's activations and gradients
(bounded in size, `KEEP_VALUES`). It runs no forward or backward pass: only the method's own
arithmetic on the tensors the passes left (Score-CAM's scores come from its memo, CAM's weights
from the linear layer). `MapSteps.shown` redoes the last steps (ReLU, upsampling, normalisation)
from the displayed sum, and equals the method's map (tests/test_steps.py).

`OWN_STEPS` gives each method's own per-channel picture: the gradient (Grad-CAM), the
coefficients α^k_ij (Grad-CAM++), the position weights times the gradient (XGrad-CAM), ReLU(g)·A
(LayerCAM), g·A (HiResCAM), the mask of the input (Score-CAM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from explainers.errors import MethodError
from explainers.methods.cam import GradCAMPlusPlus, WeightedActivationCAM
from explainers.methods.core import Evidence, cam_from_sum, get_method

# Activations (and as many gradients) kept per request, in values: (C, h, w) whole up to this
# (2 MB each in float32; the app caches 64 explanations). EfficientNet-Lite0's and ResNet-18's
# every stage fits; beyond it (ResNet-50's first stage, 256×56×56; VGG's first layers) only the
# channels that contribute most to some map are kept, so the thumbnails and chosen channels
# stay available and the sum shown is still the full one.
KEEP_VALUES = 2**19
TOP_CHANNELS = 8  # the channels shown as thumbnails


@dataclass(frozen=True)
class LayerRecord:
    """The target layer's activations and gradients for one explained class, on the CPU.

    Attributes:
        channels: (m,) the layer's indices of the kept channels, ascending (all C when they fit).
        activations: (m, h, w) A^k of the kept channels.
        gradients: (m, h, w) g^k = ∂y^c/∂A^k (negated when counterfactual), or None where the
            request ran no backward pass (CAM and exact Score-CAM need none).
        layer_channels: C, the layer's number of channels.
    """

    channels: np.ndarray
    activations: np.ndarray
    gradients: np.ndarray | None
    layer_channels: int

    def position(self, channel: int) -> int | None:
        """Where a layer channel is in the record, or None when it was not kept."""
        found = np.searchsorted(self.channels, channel)
        return int(found) if found < len(self.channels) and self.channels[found] == channel else None


@dataclass(frozen=True)
class MapSteps:
    """One method's map, step by step (CPU numpy; several methods share one `LayerRecord`).

    Attributes:
        method: the method's name.
        record: the layer's activations and gradients.
        weights: (C,) the channel weights w_k; None for an element-wise method.
        contributions: (C,) each channel's net push Σ_ij W^k_ij A^k_ij on the sum.
        magnitudes: (C,) Σ_ij |W^k_ij A^k_ij|: how much each channel moves the sum either way.
        weighted_sum: (h, w) S = Σ_k W^k ⊙ A^k, before the ReLU.
        input_size: (H, W), the size the map is upsampled to.
    """

    method: str
    record: LayerRecord
    weights: np.ndarray | None
    contributions: np.ndarray
    magnitudes: np.ndarray
    weighted_sum: np.ndarray
    input_size: tuple[int, int]

    @property
    def rectified(self) -> np.ndarray:
        """ReLU(S), (h, w): the map at the layer's resolution."""
        return np.maximum(self.weighted_sum, 0)

    def top_channels(self, k: int = TOP_CHANNELS) -> np.ndarray:
        """The k channels with the largest Σ_ij |W^k A^k|, largest first (layer indices)."""
        order = np.argsort(-self.magnitudes, kind="stable")
        return order[: min(k, len(order))]

    def top_share(self, k: int = TOP_CHANNELS) -> float:
        """The share of Σ_k Σ_ij |W^k A^k| that the top k channels carry (0 when nothing does)."""
        total = float(self.magnitudes.sum())
        return float(self.magnitudes[self.top_channels(k)].sum()) / total if total > 0 else 0.0

    def negative_share(self) -> float:
        """The share of Σ_ij |S_ij| that is negative: the evidence the ReLU removes."""
        total = float(np.abs(self.weighted_sum).sum())
        return float(-self.weighted_sum[self.weighted_sum < 0].sum()) / total if total > 0 else 0.0

    def negative_positions(self) -> int:
        """How many of the h·w positions have S < 0."""
        return int((self.weighted_sum < 0).sum())

    def upsampled(self) -> np.ndarray:
        """ReLU(S) bilinearly upsampled to the input size, (H, W), before normalisation."""
        rectified = torch.from_numpy(self.rectified)[None, None]
        return F.interpolate(rectified, size=self.input_size, mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()

    def shown(self) -> np.ndarray:
        """The map as shown, (H, W) in [0, 1]: S rectified, upsampled and normalised (all zeros
        without positive evidence), by the code every CAM uses."""
        return cam_from_sum(torch.from_numpy(self.weighted_sum)[None], self.input_size)[1][0].numpy()

    def channel_map(self, channel: int) -> np.ndarray | None:
        """A^k of a layer channel, (h, w), or None when it was not kept."""
        position = self.record.position(channel)
        return None if position is None else self.record.activations[position]

    def gradient_map(self, channel: int) -> np.ndarray | None:
        """g^k of a layer channel, (h, w), or None (not kept, or no gradient in this request)."""
        position = self.record.position(channel)
        if position is None or self.record.gradients is None:
            return None
        return self.record.gradients[position]

    def own_step(self, channel: int) -> np.ndarray | None:
        """The method's own per-channel picture (`OWN_STEPS`), (h, w), or None where it has none
        here (CAM has none; a gradient is needed and was not computed; the channel was not kept)."""
        step = OWN_STEPS.get(self.method)
        activation = self.channel_map(channel)
        if step is None or activation is None:
            return None
        gradient = self.gradient_map(channel)
        if step.needs_gradient and gradient is None:
            return None
        a = torch.from_numpy(activation)[None, None]
        g = None if gradient is None else torch.from_numpy(gradient)[None, None]
        return step.compute(a, g)[0, 0].numpy()

    def contribution_map(self, channel: int) -> np.ndarray | None:
        """W^k ⊙ A^k of a layer channel, (h, w): its term in S; None when not computable here."""
        activation = self.channel_map(channel)
        if activation is None:
            return None
        if self.weights is not None:
            return self.weights[channel] * activation
        gradient = self.gradient_map(channel)
        if gradient is None:
            return None
        method = get_method(self.method)
        a, g = (torch.from_numpy(v)[None, None] for v in (activation, gradient))
        return (method.weights(a, g) * a)[0, 0].numpy()


@dataclass(frozen=True)
class OwnStep:
    """A method's own per-channel step: what it computes from A^k (and g^k) on the way to W^k.

    Attributes:
        name: what the picture shows, in words.
        needs_gradient: whether it reads g^k.
        compute: (a, g) -> picture, each (1, 1, h, w) (g is None when not needed).
    """

    name: str
    needs_gradient: bool
    compute: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def _score_mask(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    # Score-CAM's mask before upsampling: A^k min–max normalised (upsampled, it masks the input).
    low, high = a.amin(), a.amax()
    return (a - low) / (high - low) if high > low else torch.zeros_like(a)


def _xgrad_positions(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    total = a.sum()
    return a / (total if total != 0 else 1) * g


OWN_STEPS: dict[str, OwnStep] = {
    "gradcam": OwnStep("gradient ∂y/∂A of the channel (α is its mean)", True, lambda a, g: g),
    "gradcam++": OwnStep("α of each position (Grad-CAM++)", True, GradCAMPlusPlus.alpha),
    "xgradcam": OwnStep("A / ΣA × gradient (sums to α)", True, _xgrad_positions),
    "layercam": OwnStep("ReLU(gradient) × A (its term in the sum)", True, lambda a, g: g.relu() * a),
    "hirescam": OwnStep("gradient × A (its term in the sum)", True, lambda a, g: g * a),
    "scorecam": OwnStep("the channel as a mask (min–max of A)", False, _score_mask),
}


def map_steps(
    evidence: Evidence,
    methods: Sequence[str],
    layer: str,
    index: int = 0,
    budget: int = KEEP_VALUES,
) -> dict[str, MapSteps]:
    """The steps of each CAM of a request, for its ``index``-th class, from its passes alone.

    Call it after the maps were computed (`Evidence.result`): it reads the activations, the
    gradients when the request computed them, and each method's weights (arithmetic only; a
    method whose map failed is left out). Methods that are not channel-weighted CAMs (guided
    maps, occlusion) and requests with ``eigen_smooth`` (a projection, not a channel sum) have
    no steps here.

    Args:
        evidence: the request's evidence, its maps already computed.
        methods: the methods whose steps to return.
        layer: the target layer.
        index: which of the request's classes.
        budget: keep activations and gradients whole up to this many values each.
    """
    if evidence.options.get("eigen_smooth"):
        return {}
    activations = evidence.activations(layer)  # (1, C, h, w)
    parts: dict[str, tuple] = {}
    for name in methods:
        method = get_method(name)
        if not isinstance(method, WeightedActivationCAM):
            continue
        try:
            weights = method.layer_weights(evidence, layer)
        except MethodError:
            continue
        # Exactly the arithmetic of WeightedActivationCAM.compute, so S is the sum the map came from.
        full = weights if weights.ndim == 4 else weights[:, :, None, None]
        weighted = full * activations  # (k, C, h, w)
        weighted_sum = weighted.sum(1)[index]  # (h, w)
        term = weighted[index].flatten(1)  # (C, h·w)
        channel_weights = None if weights.ndim == 4 else weights[index]
        parts[name] = (channel_weights, term.sum(1), term.abs().sum(1), weighted_sum)
    if not parts:
        return {}
    record = _record(evidence, layer, index, [part[2] for part in parts.values()], budget)
    return {
        name: MapSteps(
            method=name,
            record=record,
            weights=None if w is None else _numpy(w),
            contributions=_numpy(signed),
            magnitudes=_numpy(magnitude),
            weighted_sum=_numpy(weighted_sum),
            input_size=tuple(evidence.input_size),
        )
        for name, (w, signed, magnitude, weighted_sum) in parts.items()
    }


def _record(
    evidence: Evidence, layer: str, index: int, magnitudes: list[torch.Tensor], budget: int
) -> LayerRecord:
    activations = evidence.activations(layer)[0]  # (C, h, w)
    count, height, width = activations.shape
    # The gradients only where the request's backward pass ran: never one of our own.
    gradients = evidence.gradients(layer)[index] if "_gradients" in vars(evidence) else None
    if count * height * width <= budget:
        channels = torch.arange(count, device=activations.device)
    else:  # each method's largest contributors, then those with the largest share of some map
        keep = min(count, max(TOP_CHANNELS * len(magnitudes), budget // (height * width)))
        shares = torch.stack([m / m.sum().clamp_min(1e-30) for m in magnitudes])  # (methods, C)
        chosen = shares.topk(keep // len(magnitudes), dim=1).indices.flatten().unique()
        rest = shares.amax(0)
        rest[chosen] = -1.0
        extra = rest.topk(keep - chosen.numel()).indices
        channels = torch.cat([chosen, extra]).sort().values
    return LayerRecord(
        channels=channels.cpu().numpy().astype(np.int64),
        activations=_numpy(activations[channels]),
        gradients=None if gradients is None else _numpy(gradients[channels]),
        layer_channels=count,
    )


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def score_masks(steps: MapSteps, channels: Sequence[int]) -> np.ndarray:
    """Score-CAM's masks H^k = minmax(upsample(A^k)) of kept channels, (n, H, W) in [0, 1]: the
    input times a mask is the image a channel's score was measured on (`explainers.methods.score`)."""
    positions = [steps.record.position(int(c)) for c in channels]
    if any(p is None for p in positions):
        raise ValueError("Some channels were not kept.")
    a = torch.from_numpy(steps.record.activations[positions])[:, None]  # (n, 1, h, w)
    masks = F.interpolate(a, steps.input_size, mode="bilinear", align_corners=False)
    low = masks.amin((2, 3), keepdim=True)
    high = masks.amax((2, 3), keepdim=True)
    return ((masks - low) / torch.where(high > low, high - low, torch.ones_like(high)))[:, 0].numpy()
