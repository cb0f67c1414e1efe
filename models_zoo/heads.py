"""Classifier heads read off a state_dict: the heads people put on a backbone when fine-tuning.

A fine-tune usually replaces the backbone's last Linear (or the small Sequential holding it) by
one of: ``Linear``; ``Sequential(Dropout, Linear)``; ``Sequential(Linear, ReLU, [Dropout], Linear)``,
optionally behind a leading Dropout. Only the Linear layers carry weights, so the file's keys
under the head's name (``fc.1.weight``, ``fc.0.weight`` + ``fc.3.weight``) and their shapes say
which one it is. Dropout and ReLU carry no weights: their places are read from the gaps between
the Linear layers' indices. timm models name their head ``head.fc`` or ``classifier`` and are
handled the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn


class HeadError(ValueError):
    """The file's head keys fit none of the supported heads (the message names them)."""


@dataclass(frozen=True)
class Head:
    """A head fitted to a file: where it goes, what it is, and its output count."""

    slot: str  # the module path replaced, e.g. "fc" or "classifier"
    module: nn.Module  # Linear, or a Sequential of Dropout/Linear/ReLU
    outputs: int
    description: str  # e.g. "Dropout → Linear(512, 2)"


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's last nn.Linear in registration order: the classifier a fine-tune replaces.

    Raises:
        HeadError: the model has no Linear layer.
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise HeadError("The architecture has no Linear classifier to fit a head to.")
    return linears[-1]


def _slots(model: nn.Module, path: str) -> list[str]:
    """The final Linear's path and those of its containers that hold no other parameters."""
    slots = [path]
    parts = path.split(".")
    own = {id(p) for p in model.get_submodule(path).parameters()}
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        if {id(p) for p in model.get_submodule(parent).parameters()} != own:
            break
        slots.append(parent)
    return slots


_INDEXED = re.compile(r"^(\d+)\.(weight|bias)$")


def _build(keys: dict[str, torch.Tensor], in_features: int) -> tuple[nn.Module, int, str]:
    """A head from its keys relative to the slot ({"weight", "bias"} or {"0.weight", ...})."""
    if set(keys) <= {"weight", "bias"} and "weight" in keys:
        weight = keys["weight"]
        if weight.ndim != 2:
            raise HeadError(f"weight has shape {tuple(weight.shape)}, not that of a Linear layer")
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in keys)
        return linear, weight.shape[0], f"Linear({weight.shape[1]}, {weight.shape[0]})"
    indices: dict[int, set[str]] = {}
    for key in keys:
        match = _INDEXED.match(key)
        if match is None:
            raise HeadError(f"{key} is not a Linear layer's weight or bias")
        indices.setdefault(int(match.group(1)), set()).add(match.group(2))
    order = sorted(indices)
    if any("weight" not in indices[i] or keys[f"{i}.weight"].ndim != 2 for i in order):
        raise HeadError("not every layer is a Linear layer (weight of 2 dimensions)")
    gaps = [b - a for a, b in zip(order, order[1:], strict=False)]
    if order[0] not in (0, 1) or len(order) > 2 or any(gap not in (2, 3) for gap in gaps):
        raise HeadError(f"Linear layers at positions {order}")
    layers: list[nn.Module] = [nn.Dropout()] if order[0] == 1 else []
    words = ["Dropout"] if order[0] == 1 else []
    for position, index in enumerate(order):
        weight = keys[f"{index}.weight"]
        if position:
            layers.append(nn.ReLU())
            words.append("ReLU")
            if gaps[position - 1] == 3:
                layers.append(nn.Dropout())
                words.append("Dropout")
        layers.append(nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in indices[index]))
        words.append(f"Linear({weight.shape[1]}, {weight.shape[0]})")
    first = keys[f"{order[0]}.weight"]
    if first.shape[1] != in_features:
        raise HeadError(
            f"its first Linear takes {first.shape[1]} features but the backbone gives {in_features}"
        )
    for a, b in zip(order, order[1:], strict=False):
        if keys[f"{b}.weight"].shape[1] != keys[f"{a}.weight"].shape[0]:
            raise HeadError(f"layer {b} does not take layer {a}'s {keys[f'{a}.weight'].shape[0]} outputs")
    return nn.Sequential(*layers), keys[f"{order[-1]}.weight"].shape[0], " → ".join(words)


def fit_head(model: nn.Module, state: dict[str, torch.Tensor]) -> Head | None:
    """Fit a head to the file where its keys differ from the model's only under the classifier.

    Returns None when the file's keys are the model's own (a plain Linear in place: the caller
    compares shapes). Installs nothing: see `install_head`.

    Raises:
        HeadError: the keys differ under the classifier but make no supported head, or they
            differ elsewhere too (the message names the keys that did not fit).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if not missing and not unexpected:
        return None
    path, linear = final_linear(model)
    for slot in _slots(model, path):
        prefix = slot + "."
        if all(k.startswith(prefix) for k in missing + unexpected):
            head_keys = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            try:
                module, outputs, description = _build(head_keys, linear.in_features)
            except HeadError as error:
                shown = sorted(prefix + key for key in head_keys)
                raise HeadError(
                    f"the head under {slot!r} is none of Linear, Dropout+Linear or "
                    f"Linear-ReLU-(Dropout)-Linear ({error}); its keys: {', '.join(shown)}."
                ) from error
            return Head(slot, module, outputs, description)
    shown = ", ".join((unexpected or missing)[:4])
    more = len(unexpected or missing) - 4
    raise HeadError(
        f"{len(missing)} parameters missing and {len(unexpected)} unexpected outside the classifier "
        f"({path!r}): {'unexpected' if unexpected else 'missing'} {shown}{f' and {more} more' if more > 0 else ''}."
    )


def install_head(model: nn.Module, head: Head) -> None:
    """Put the fitted head in its slot (on a freshly built model, before it is shared)."""
    parent_name, _, child = head.slot.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, head.module)
