"""Many maps from one set of passes: several classes, several layers, and LayerCAM's layer fusion.

- `explain_classes`: maps for k classes from one forward pass and one backward pass batched
  over the classes (``torch.autograd.grad(..., is_grads_batched=True)``).
- `sweep`: maps at several layers from one forward pass and one backward pass that stops at
  the shallowest of them: deep layers give coarse maps, shallow ones fine.
- `fuse_layers`: LayerCAM's multi-layer fusion (Jiang et al. 2021).
- `stage_ends`: the layers that end each resolution stage of a network, for the sweep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from explainers.capture import model_device
from explainers.core import (
    Evidence,
    Explanation,
    check_methods,
    collect,
    normalise,
    request_options,
    upsample,
)
from explainers.errors import ExplainerInputError, LayerError


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
    seconds = time.perf_counter() - start
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
    seconds = time.perf_counter() - start
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


def stage_ends(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> list[str]:
    """The layers that end each resolution stage, shallow to deep: candidates for `sweep`.

    One probe forward on a zero image records, for every module that runs once, its input
    and output. Where a module changes the spatial size, the module that produced its input
    (the outermost one, e.g. ``layer1`` rather than ``layer1.1``) ends a stage; of several
    at one resolution, the first to finish. The network's last feature map larger than 1 x 1
    ends the last stage. Adaptive pooling modules are skipped (they belong to the classifier head).

    Returns:
        Module names for `sweep`, e.g. ``["relu", "layer1", "layer2", "layer3", "layer4"]``
        for a torchvision ResNet at 224 x 224.
    """
    owner = threading.get_ident()
    calls: dict[str, int] = {}
    records: list[tuple[str, object, torch.Tensor]] = []  # (name, first input, output), in run order

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            if threading.get_ident() != owner:
                return
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                records.append((name, inputs[0] if inputs else None, output))

        return hook

    skip = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    handles = []
    try:
        for name, module in model.named_modules():
            # Pass-through modules (packages define their own Identity) return their input
            # object and would be taken for the module that produced it.
            passes_through = isinstance(module, nn.Identity) or type(module).__name__ == "Identity"
            if name and not isinstance(module, skip) and not passes_through:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.inference_mode():
            model(torch.zeros(1, 3, *input_size, device=model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    records = [r for r in records if calls[r[0]] == 1]
    producer: dict[int, str] = {}  # output tensor -> the last (outermost) module returning it
    for name, _, output in records:
        producer[id(output)] = name
    order = {name: i for i, (name, _, _) in enumerate(records)}
    # Per resolution, the first module (in finishing order) whose output feeds a module that
    # changes the spatial size: ``layer1``, not ``layer2.0.bn1`` that a strided ``conv2`` reads.
    ends: dict[tuple[int, int], str] = {}
    for _, source, output in records:
        # Both sides shrink: a downsampling (a permute to channels-last changes one only).
        if isinstance(source, torch.Tensor) and source.ndim == 4 and _shrinks(source, output):
            name = producer.get(id(source))
            size = tuple(source.shape[-2:])
            if name is not None and (size not in ends or order[name] < order[ends[size]]):
                ends[size] = name
    deepest = [output for _, _, output in records if output.shape[-2] * output.shape[-1] > 1]
    if deepest:  # the last feature map ends the last stage
        ends[tuple(deepest[-1].shape[-2:])] = producer[id(deepest[-1])]
    return sorted(set(ends.values()), key=lambda name: order[name])


def _shrinks(source: torch.Tensor, output: torch.Tensor) -> bool:
    return output.shape[-2] < source.shape[-2] and output.shape[-1] < source.shape[-1]
