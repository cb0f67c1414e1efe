"""Many maps from one set of passes: several classes, several layers, and LayerCAM's layer fusion.

- `explain_classes`: maps for k classes from one forward pass and one backward pass batched
  over the classes (``torch.autograd.grad(..., is_grads_batched=True)``).
- `sweep`: maps at several layers from one forward pass and one backward pass that stops at
  the shallowest of them: deep layers give coarse maps, shallow ones fine.
- `fuse_layers`: LayerCAM's multi-layer fusion (Jiang et al. 2021).
- `stage_ends`: the layers that end each resolution stage of a network, for the sweep.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from explainers.errors import ExplainerInputError, LayerError
from explainers.methods.core import (
    Evidence,
    Explanation,
    check_methods,
    collect,
    elapsed,
    normalise,
    request_options,
    upsample,
)
from models_zoo.targets import probe


def explain_classes(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    methods: Sequence[str],
    targets: Sequence[int] | int = 5,
    counterfactual: bool = False,
    *,
    eigen_smooth: bool = False,
    options: Mapping[str, object] | None = None,
) -> list[Explanation]:
    """Explain several classes at once: one forward pass and one batched backward pass.

    Score-CAM scores every class from the same masked passes, so k classes cost what one does.

    Args:
        model, x, layer, methods, counterfactual, eigen_smooth, options: as for `explain`.
        targets: class indices, or k to explain the k highest-scoring classes (best first).

    Returns:
        One `Explanation` per class, in the order of ``targets``; each equals what `explain`
        gives for that class alone, and each carries the wall time of the whole call.
    """
    start = time.perf_counter()
    names = check_methods(methods)
    options = request_options(options, eigen_smooth)
    if isinstance(targets, int):
        evidence = Evidence(model, x, [layer], None, counterfactual, top_k=targets, options=options)
    else:
        evidence = Evidence(model, x, [layer], targets, counterfactual, options=options)
    for name in names:  # compute every map for all classes before timing the call
        evidence.result(name, layer)
    seconds = elapsed(start, evidence.device)
    return [collect(evidence, names, layer, i, seconds) for i in range(evidence.targets.numel())]


def sweep(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    methods: str | Sequence[str],
    target: int | None = None,
    counterfactual: bool = False,
    *,
    eigen_smooth: bool = False,
    options: Mapping[str, object] | None = None,
) -> dict[str, Explanation]:
    """Explain one class at several layers: one forward pass, one backward pass.

    The backward pass stops at the shallowest layer and yields every deeper layer's gradient
    on the way, so a sweep costs about as much as one call at its shallowest layer.

    Args:
        model, x, target, counterfactual, eigen_smooth, options: as for `explain`.
        layers: module names, e.g. from `stage_ends`.
        methods: a method name or several.

    Returns:
        layer -> `Explanation`, ordered from shallow to deep (the order the forward pass
        reaches them), each carrying the wall time of the whole call.
    """
    start = time.perf_counter()
    names = check_methods([methods] if isinstance(methods, str) else methods)
    if not layers:
        raise LayerError("Choose at least one layer.")
    options = request_options(options, eigen_smooth)
    evidence = Evidence(
        model, x, layers, None if target is None else [target], counterfactual, options=options
    )
    ordered = evidence.executed_layers
    for layer in ordered:
        for name in names:
            evidence.result(name, layer)
    seconds = elapsed(start, evidence.device)
    return {layer: collect(evidence, names, layer, 0, seconds) for layer in ordered}


def fuse_layers(
    maps: Sequence[torch.Tensor] | Mapping[str, Explanation],
    method: str = "layercam",
    size: tuple[int, int] | None = None,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Fuse raw CAMs of several layers as LayerCAM does (Jiang et al. 2021, IEEE TIP, eq. 9).

    Shallow layers' maps have small values next to deep ones', so each map but the deepest
    is first rescaled with M' = tanh(gamma * M / max(M)), gamma = 2; the deepest is divided
    by its maximum. All are upsampled bilinearly to the same size and combined by the
    element-wise maximum, then min-max normalised. (torchcam applies the tanh to every map;
    the paper motivates it by the shallow maps' small values, so the deepest stays linear here.)

    Args:
        maps: raw, non-negative maps (h_i, w_i) ordered from shallow to deep, or a `sweep`
            result, whose raw ``method`` maps are used.
        method: which map of a `sweep` result to fuse.
        size: the output size; default: the input size of a `sweep` result, else the
            largest map's size.
        gamma: the tanh scale.

    Returns:
        The fused map, (H, W) in [0, 1]; all zeros when no layer has positive evidence.
    """
    if isinstance(maps, Mapping):
        explanations = list(maps.values())
        if not explanations or any(method not in e.raw for e in explanations):
            raise ExplainerInputError(f"Every layer of the sweep needs a {method!r} map to fuse.")
        raws = [e.raw[method] for e in explanations]
        size = size or tuple(explanations[0].maps[method].shape[-2:])
    else:
        raws = list(maps)
        if not raws:
            raise ExplainerInputError("Nothing to fuse: no maps given.")
        size = size or (max(m.shape[-2] for m in raws), max(m.shape[-1] for m in raws))
    scaled = []
    for i, raw in enumerate(raws):
        peak = raw.amax()
        ratio = raw.relu() / peak if peak > 0 else torch.zeros_like(raw)
        scaled.append(ratio if i == len(raws) - 1 else torch.tanh(gamma * ratio))
    stack = torch.stack([upsample(m[None].float(), size)[0] for m in scaled])  # (L, H, W)
    fused = stack.amax(0)[None]
    return normalise(fused, fused.flatten(1).amax(1))[0]


def stage_ends(model: nn.Module, input_size: tuple[int, int] = (224, 224), channels: int = 3) -> list[str]:
    """The targets that end each resolution stage, shallow to deep: candidates for `sweep`.

    Found by one probe pass (`models_zoo.targets.probe`): where the network shrinks a resolution,
    the tensor it shrinks, rectified where the network has a rectified map there; the deepest is
    the final feature map (the tensor the head pools).

    Returns:
        Target names, e.g. ``["relu", "layer1", "layer2", "layer3", "final"]`` for a torchvision
        ResNet at 224 x 224.
    """
    return [layer.name for layer in probe(model, (channels, *input_size)).stages]
