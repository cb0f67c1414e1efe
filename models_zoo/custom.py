"""Custom models: a user's fine-tuned torchvision classifier from a weights file and class names.

The weights are a safetensors file or a torch state_dict read with `torch.load(weights_only=True)`;
the format is told by the file's first bytes, never by its name, and no Python object other than
tensors is ever unpickled. Every way a file can be wrong ends in one `CustomModelError` line.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import warnings
from collections.abc import Sequence
from functools import cache

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from models_zoo.errors import ExplainerInputError, did_you_mean
from models_zoo.zoo import Preprocessing, ZooModel, wrap_model

Source = bytes | bytearray | memoryview | str | os.PathLike

# Architectures compared with a file's keys to say what it looks like when they do not fit.
_COMMON = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "wide_resnet50_2", "vgg11", "vgg11_bn", "vgg13", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "densenet121", "densenet161", "densenet169", "densenet201", "alexnet", "googlenet",
    "inception_v3", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_v2_s", "convnext_tiny", "convnext_small", "regnet_y_400mf", "squeezenet1_0",
    "squeezenet1_1", "shufflenet_v2_x1_0", "mnasnet1_0",
)  # fmt: skip


class CustomModelError(ExplainerInputError):
    """A custom model cannot be built: bad architecture, weights file or class names."""


class UnsafeWeightsError(CustomModelError):
    """The weights file holds pickled Python objects other than tensors (possibly code)."""


class CorruptWeightsError(CustomModelError):
    """The weights file is truncated, corrupt or not a weights file at all."""


class ArchitectureMismatchError(CustomModelError):
    """The weights belong to another architecture (missing or unexpected parameters)."""


class ClassCountError(CustomModelError):
    """The weights' classifier and the class names disagree on the number of classes."""


def architectures() -> list[str]:
    """torchvision classifier names accepted as architectures (convolutional ones only)."""
    return list(list_models(module=torchvision.models))


def read_labels(source: Source | Sequence[str]) -> tuple[str, ...]:
    """Class names from a list, or from a file: one name per line (.txt) or a JSON list of strings.

    Raises:
        CustomModelError: unreadable, not UTF-8, a JSON value other than a list of strings, or
            fewer than two names.
    """
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes, bytearray, memoryview)):
        names = [str(name).strip() for name in source]
    else:
        try:
            text = _read(source, "class-names").decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise CustomModelError("The class-names file is not UTF-8 text.") from error
        if text.lstrip().startswith("["):
            try:
                names = json.loads(text)
            except json.JSONDecodeError as error:
                raise CustomModelError(f"The class-names file is not valid JSON: {error}.") from error
            if not all(isinstance(name, str) for name in names):
                raise CustomModelError("The class-names JSON must be a list of strings.")
            names = [name.strip() for name in names]
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) < 2:
        raise CustomModelError(
            f"The class-names file lists {len(names)} class(es); a classifier needs at least 2."
        )
    if any(not name for name in names):
        raise CustomModelError("The class-names list contains an empty name.")
    return tuple(names)


def read_state_dict(source: Source) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a torch state_dict, without unpickling code.

    The format comes from the first bytes: a safetensors header (8-byte length + JSON), a zip
    archive (torch.save since 1.6) or a pickle stream (legacy torch.save). A checkpoint that
    wraps the state_dict ({"state_dict": ...} or {"model": ...}) is unwrapped, and the
    "module." prefix of DataParallel is removed.

    Raises:
        UnsafeWeightsError: the pickle holds objects other than tensors (a whole model, code).
        CorruptWeightsError: truncated, corrupt, or not a weights file.
    """
    data = _read(source, "weights")
    if _looks_like_safetensors(data):
        try:
            state = load_safetensors(data)
        except SafetensorError as error:
            raise CorruptWeightsError(f"The safetensors file is truncated or corrupt ({error}).") from error
    elif data.startswith(b"PK\x03\x04") or data[:1] == b"\x80":
        state = _torch_load(data)
    else:
        raise CorruptWeightsError(
            "The weights file is neither a safetensors file nor a PyTorch state_dict (.pt/.pth)."
        )
    return _unwrap(state)


def load_custom_model(
    architecture: str,
    weights: Source,
    labels: Source | Sequence[str],
    *,
    name: str | None = None,
    default_layer: str | None = None,
    device: str | torch.device | None = None,
) -> ZooModel:
    """Build a fine-tuned torchvision classifier from its weights file and class names.

    Args:
        architecture: a torchvision model name, e.g. "resnet18" (see `architectures()`).
        weights: the weights file (path or bytes): .safetensors, or a state_dict saved with
            `torch.save(model.state_dict(), ...)`.
        labels: the class names in output order: a list, or a file (path or bytes) with one
            name per line or a JSON list.
        name: display name; default "<architecture> (custom)".
        default_layer: recommended target layer; None picks the deepest feature map.
        device: where to put the model; None picks CUDA when available.

    Returns:
        A `ZooModel` with the architecture's ImageNet preprocessing (torchvision's transforms).

    Raises:
        CustomModelError: unknown architecture; `UnsafeWeightsError`, `CorruptWeightsError`,
            `ArchitectureMismatchError`, `ClassCountError` as their names say.
    """
    known = architectures()
    if architecture not in known:
        hint = did_you_mean(architecture, known)
        raise CustomModelError(f"Unknown architecture {architecture!r}.{hint} Use a torchvision model name.")
    names = read_labels(labels)
    state = read_state_dict(weights)
    with warnings.catch_warnings():  # GoogLeNet/Inception warn about their init scheme
        warnings.simplefilter("ignore", FutureWarning)
        model = get_model(architecture, weights=None, num_classes=len(names))
    _check_fits(model, state, architecture, len(names))
    preprocessing = Preprocessing.from_torchvision(get_model_weights(architecture).DEFAULT.transforms())
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model.load_state_dict(state, strict=True)
        return wrap_model(
            name or f"{architecture} (custom)", model, preprocessing, names, default_layer, device
        )
    except RuntimeError as error:  # a user's file can fail in ways the checks above did not foresee
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CustomModelError(f"The weights do not load into {architecture}: {first_line}") from error


def _read(source: Source, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as file:
                data = file.read()
        except OSError as error:
            raise CustomModelError(f"Cannot read the {what} file: {error.strerror or error}.") from error
    if not data:
        raise (CorruptWeightsError if what == "weights" else CustomModelError)(f"The {what} file is empty.")
    return data


def _looks_like_safetensors(data: bytes) -> bool:
    # An 8-byte little-endian header length, then a JSON object.
    return len(data) >= 9 and data[8:9] == b"{" and struct.unpack("<Q", data[:8])[0] < len(data) + 2**20


def _torch_load(data: bytes) -> object:
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": a plain pickle, refused anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeWeightsError(
            "The file contains Python objects other than tensors; refusing to unpickle it. "
            "Save the weights with torch.save(model.state_dict(), path) or as safetensors."
        ) from error
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, struct.error) as error:
        raise CorruptWeightsError(
            f"The PyTorch weights file is truncated or corrupt ({str(error).splitlines()[0][:120]})."
        ) from error


def _unwrap(state: object) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CorruptWeightsError("The file holds no state_dict (a mapping of parameter names to tensors).")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _check_fits(
    model: nn.Module, state: dict[str, torch.Tensor], architecture: str, num_classes: int
) -> None:
    """Compare the file's keys and shapes with the model's, naming the likely mistake."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        looks_like = _guess_architecture(state)
        if looks_like:
            hint = f"they look like a {looks_like}"
        else:
            shown = ", ".join((unexpected or missing)[:3])
            hint = f"{len(missing)} parameters missing, {len(unexpected)} unexpected (e.g. {shown})"
        raise ArchitectureMismatchError(
            f"These weights are not a {architecture}: {hint}. Choose the architecture they were trained with."
        )
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    classifier = [k for k in wrong if expected[k].ndim and expected[k].shape[0] == num_classes]
    if classifier and len(classifier) == len(wrong):
        outputs = state[classifier[0]].shape[0]
        raise ClassCountError(
            f"The weights' classifier ({classifier[0].rsplit('.', 1)[0]}) has {outputs} outputs, "
            f"but the class-names file lists {num_classes} names."
        )
    if wrong:
        key = wrong[0]
        raise ArchitectureMismatchError(
            f"These weights do not fit {architecture}: {key} is {tuple(state[key].shape)} in the file "
            f"but {tuple(expected[key].shape)} in the model ({len(wrong)} such tensors). "
            "Choose the architecture (and width) they were trained with."
        )


def _guess_architecture(state: dict[str, torch.Tensor]) -> str | None:
    """The first common architecture whose parameter names and shapes are the file's.

    The classifier's shapes (first dimension 1000 in the template) are not compared: a fine-tuned
    model has its own class count. Only runs on the error path; popular architectures first.
    """
    for name in _COMMON:
        template = _shapes_of(name)
        if template.keys() == state.keys() and all(
            shape[:1] == (1000,) or shape == tuple(state[key].shape) for key, shape in template.items()
        ):
            return name
    return None


@cache
def _shapes_of(architecture: str) -> dict[str, tuple[int, ...]]:
    # Built on the meta device: names and shapes only, no memory, no initialisation.
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = get_model(architecture, weights=None)
        return {key: tuple(value.shape) for key, value in model.state_dict().items()}
    except Exception:  # an architecture that cannot be built on meta is never a match
        return {}
