"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
arXiv 1810.03292): does a map change when the model it explains is destroyed?

Cascading randomisation re-initialises the model's layers from the output back, one group at a
time, keeping earlier groups random, and recomputes every map after each step. A map that
depends on what the model learned (Grad-CAM) decorrelates at once; one that mostly reflects the
image and the ReLU pattern (guided backprop) stays close to the original: Spearman rank
correlation, rho = Pearson(rank(a), rank(b)), near 1 all the way down.

All work happens on a deep copy of the model: the shared model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from explainers.capture import model_device, resolve_layer
from explainers.core import explain
from explainers.metrics import saliency, spearman

# Containers whose children are randomised one by one rather than all at once.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class SanityResult:
    """What `sanity_check` returns.

    Attributes:
        steps: the randomisation steps, top (output) first: each a tuple of module names
            re-initialised at that step (on top of all earlier steps).
        correlations: method -> Spearman correlation with the original map after each step,
            one value per step.
        maps: method -> [original map, map after step 1, ...] as shown ((H, W) for CAMs,
            (H, W, 3) for guided maps), on the CPU; kept only when asked for.
        target: the explained class (the original model's choice when none was given).
    """

    steps: tuple[tuple[str, ...], ...]
    correlations: dict[str, list[float]]
    target: int
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def step_names(self) -> list[str]:
        """One short label per step, e.g. "_fc" or "_blocks.15 + _blocks.14"."""
        return [" + ".join(step) for step in self.steps]


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
) -> SanityResult:
    """Cascading randomisation: Spearman correlation of each method's map with the original.

    Args:
        model: the trained classifier, in eval mode; only a deep copy is randomised.
        x: the preprocessed image, (1, 3, H, W).
        layer: the target layer of the CAMs (it is also randomised when its turn comes).
        methods: names from `METHODS`.
        target: the class to explain; None: the original model's top-1, kept for every step.
        steps: groups of module names, top first; None uses `randomisation_steps(model)`.
        max_steps: stop after this many steps (the top layers tell the story).
        seed: seeds the re-initialisation; the global random state is left as it was.
        keep_maps: also return the maps after each step, for display.

    Returns:
        A `SanityResult`. Guided maps (H, W, 3) are compared as `saliency` (absolute value summed
        over colour channels); a map that goes constant (no positive evidence) has
        correlation 0.

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

    reference = {name: saliency(original.maps[name]).cpu() for name in methods}
    correlations: dict[str, list[float]] = {name: [] for name in methods}
    maps: dict[str, list[torch.Tensor]] = {name: [original.maps[name].cpu()] for name in methods}

    randomised = copy.deepcopy(model).eval()
    device = model_device(model)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for step in cascade:
            for name in step:
                reinitialise(resolve_layer(randomised, name))
            result = explain(randomised, x, layer, methods, target=target)
            for name in methods:
                correlations[name].append(spearman(reference[name], saliency(result.maps[name]).cpu()))
                if keep_maps:
                    maps[name].append(result.maps[name].cpu())
    return SanityResult(
        steps=tuple(cascade),
        correlations=correlations,
        target=target,
        maps=maps if keep_maps else {},
    )
