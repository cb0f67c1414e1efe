"""Capture feature maps from named layers during one forward pass, leaving the model untouched.

The forward pass runs without autograd up to the first captured layer; there the activation
becomes a fresh leaf and autograd switches on, so a later backward pass stops at that layer
(no parameter gradients, no gradient with respect to the input).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from explainers.errors import LayerError, did_you_mean


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name``.

    Raises:
        LayerError: no such module; the message names close matches.
    """
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    hint = did_you_mean(name, [n for n in modules if n])
    raise LayerError(f"The model has no layer named {name!r}.{hint}")


@contextmanager
def capture_layers(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers during forward passes run inside the block.

    Run the forward pass under ``torch.no_grad()``: the first captured layer's output is turned
    into a leaf that requires grad and autograd is switched on from there, so only the part of
    the network after the shallowest captured layer is recorded for backward.

    The hooks act only on forward passes of the thread that opened the block, so concurrent
    callers sharing one model never see each other's captures, and they are removed on exit,
    also when an exception is raised. Each hook hands the rest of the network a clone of the
    stored tensor, so a later in-place operation (DenseNet's ``relu_``, ``ReLU(inplace=True)``)
    cannot overwrite what was captured.

    Yields:
        A dict filled during the forward pass: layer name -> activation (N, C, h, w).

    Raises:
        LayerError: a layer is unknown, does not output a 4-D feature map, or runs twice.
    """
    owner = threading.get_ident()
    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor | None:
            if threading.get_ident() != owner:
                return None
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise LayerError(
                    f"Layer {name!r} outputs {shape}, not a feature map (N, C, h, w); "
                    "choose a convolutional layer."
                )
            if name in captured:
                raise LayerError(
                    f"Layer {name!r} runs more than once in a forward pass (a shared module), "
                    "so its output is ambiguous; choose a layer that runs once."
                )
            if not torch.is_grad_enabled():
                output = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            captured[name] = output
            return output.clone()

        return hook

    modules = [resolve_layer(model, name) for name in names]
    handles = []
    try:
        for name, module in zip(names, modules):
            handles.append(module.register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
