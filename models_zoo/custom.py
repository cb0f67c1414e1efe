"""Custom models: a user's fine-tuned classifier from a weights file and class names.

The architecture is a torchvision name, a timm name ("timm/convnext_tiny"; timm builds it with
``pretrained=False``, so no download), or none for an exported program (``.pt2`` from
`torch.export.save`, which carries its own architecture). The weights are a safetensors file or
a torch state_dict read with `torch.load(weights_only=True)`; the format is told by the file's
first bytes, never by its name, and no Python object other than tensors is ever unpickled.
The head is read off the weights (see `models_zoo.heads`) and loaded strictly. Every way a file
can be wrong ends in one `CustomModelError` line.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import threading
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import cache
from typing import Any

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.transforms import InterpolationMode

from models_zoo.errors import ExplainerInputError, did_you_mean
from models_zoo.heads import HeadError, fit_head, install_head
from models_zoo.zoo import REGISTRY, Preprocessing, ZooModel, wrap_model

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


TIMM = "timm/"  # the prefix that names a timm architecture, e.g. "timm/convnext_tiny"
EXPORT_SNIPPET = (
    "ep = torch.export.export(model.eval(), (torch.randn(2, 3, 224, 224),), "
    'dynamic_shapes=({0: torch.export.Dim("batch")},)); torch.export.save(ep, "model.pt2")'
)
_ZOO_ARCHITECTURES = ("efficientnet_lite0",)  # the offline default's architecture (the bias demo's trunk)


def architectures(include_timm: bool = False) -> list[str]:
    """Accepted architecture names: torchvision's classifiers (transformers included), EfficientNet-Lite0
    and, with ``include_timm``, every timm model as "timm/<name>" (when timm is installed)."""
    names = list(list_models(module=torchvision.models))
    names += list(_ZOO_ARCHITECTURES)
    if include_timm and timm_available():
        import timm

        names += [TIMM + n for n in timm.list_models()]
    return names


def timm_available() -> bool:
    """Whether the optional timm package is installed (``pip install timm``)."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


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
    elif is_exported_program(data):
        raise CorruptWeightsError(
            "This is an exported program (.pt2), not a state_dict: load it without an architecture."
        )
    elif data.startswith(b"PK\x03\x04") or data[:1] == b"\x80":
        state = _torch_load(data)
    else:
        raise CorruptWeightsError(
            "The weights file is neither a safetensors file nor a PyTorch state_dict (.pt/.pth)."
        )
    return _unwrap(state)


def load_custom_model(
    architecture: str | None,
    weights: Source,
    labels: Source | Sequence[str],
    *,
    name: str | None = None,
    default_layer: str | None = None,
    device: str | torch.device | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
) -> ZooModel:
    """Build a fine-tuned classifier from its weights file and class names.

    Args:
        architecture: a torchvision model name ("resnet18"), "efficientnet_lite0", or a timm
            name as "timm/<name>" (see `architectures()`); None or "" for an exported program,
            and ignored when the weights file is one.
        weights: the weights file (path or bytes): .safetensors, a state_dict saved with
            `torch.save(model.state_dict(), ...)`, or a `torch.export.save` program (.pt2).
        labels: the class names in output order: a list, or a file (path or bytes) with one
            name per line or a JSON list.
        name: display name; default "<architecture> (custom)".
        default_layer: recommended target layer; None lets `wrap_model` choose.
        device: where to put the model; None picks CUDA when available.
        preprocessing: the model's input transform, or a mapping of changes to the
            architecture's own (see `preprocessing_from`); None takes the architecture's own
            (torchvision's transforms, timm's pretrained_cfg; ImageNet's for a .pt2, at the
            program's input size).

    Returns:
        A `ZooModel` ready to explain.

    Raises:
        CustomModelError: unknown architecture; `UnsafeWeightsError`, `CorruptWeightsError`,
            `ArchitectureMismatchError`, `ClassCountError` as their names say.
    """
    names = read_labels(labels)
    data = _read(weights, "weights")
    overrides = preprocessing if isinstance(preprocessing, Mapping) else None
    if overrides is not None:
        preprocessing = None
    if is_exported_program(data):
        model, preprocessing = _load_exported(data, len(names), preprocessing, overrides)
        label = "exported program"
    else:
        library, arch = resolve_architecture(architecture)
        state = read_state_dict(data)
        if preprocessing is not None:
            channels = preprocessing.channels
        elif overrides and overrides.get("channels") is not None:
            channels = _channels(overrides["channels"])
        else:
            channels = _input_channels(state, library, arch)
        model = _build(library, arch, len(names), channels)
        _fit(model, state, architecture or arch, len(names), channels, _stem_key(library, arch))
        if preprocessing is None:
            preprocessing = preprocessing_from(
                default_preprocessing(library, arch, model, channels), overrides
            )
        label = architecture or arch
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return wrap_model(name or f"{label} (custom)", model, preprocessing, names, default_layer, device)
    except RuntimeError as error:  # a user's file can fail in ways the checks above did not foresee
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CustomModelError(
            f"The model does not run on a {preprocessing.describe()} input: {first_line}"
        ) from error


def resolve_architecture(architecture: str | None) -> tuple[str, str]:
    """("torchvision" | "timm" | "zoo", name) of an architecture name.

    A plain name is torchvision's (or EfficientNet-Lite0); "timm/<name>" is timm's.

    Raises:
        CustomModelError: no architecture, an unknown name (close matches named), or a timm
            name while timm is not installed.
    """
    if not architecture:
        raise CustomModelError(
            "No architecture given: name the torchvision or timm architecture the weights were trained "
            "with (an exported .pt2 program needs none)."
        )
    if architecture.startswith(TIMM):
        if not timm_available():
            raise CustomModelError(f"{architecture} needs timm, which is not installed: pip install timm")
        import timm

        arch = architecture.removeprefix(TIMM)
        known = timm.list_models()
        if arch not in known:
            hint = did_you_mean(arch, known)
            raise CustomModelError(f"Unknown timm architecture {arch!r}.{hint}")
        return "timm", arch
    if architecture in _ZOO_ARCHITECTURES:
        return "zoo", architecture
    known = architectures()
    if architecture not in known:
        hint = did_you_mean(architecture, known)
        timm_hint = ""
        if timm_available():
            import timm

            if architecture in timm.list_models():
                timm_hint = f" For timm's {architecture}, write {TIMM}{architecture}."
        raise CustomModelError(
            f"Unknown architecture {architecture!r}.{hint} Use a torchvision model name, or "
            f"{TIMM}<name> for timm.{timm_hint}"
        )
    return "torchvision", architecture


def _build(library: str, arch: str, num_classes: int, channels: int) -> nn.Module:
    """A randomly initialised model with `num_classes` outputs and `channels` input channels."""
    with warnings.catch_warnings():  # GoogLeNet/Inception warn about their init scheme
        warnings.simplefilter("ignore", FutureWarning)
        if library == "timm":
            import timm

            return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=channels)
        if library == "zoo":
            model = REGISTRY[arch].build(None)
            model._fc = nn.Linear(model._fc.in_features, num_classes)
        else:
            model = get_model(arch, weights=None, num_classes=num_classes)
    if channels != 3:
        _set_input_channels(model, channels)
    return model


def _first_conv(modules: Iterator[tuple[str, nn.Module]]) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in modules if isinstance(m, nn.Conv2d)), None)


def _set_input_channels(model: nn.Module, channels: int) -> None:
    # torchvision models take 3 channels; a grayscale fine-tune replaces the first convolution.
    found = _first_conv(model.named_modules())
    if found is None:
        raise CustomModelError("The architecture has no convolution to take grayscale input.")
    path, conv = found
    replacement = nn.Conv2d(
        channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, conv.padding_mode,
    )  # fmt: skip
    parent_name, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def _input_channels(state: dict[str, torch.Tensor], library: str = "", arch: str = "") -> int:
    """The input channels of the file's stem convolution (1 for grayscale, else 3).

    The stem is the architecture's first convolution (file order is no guide: safetensors
    sorts its keys, and depthwise convolutions also have one input channel per group).
    """
    key = _stem_key(library, arch) if arch else None
    weight = state.get(key) if key else next((v for v in state.values() if v.ndim == 4), None)
    return 1 if weight is not None and weight.ndim == 4 and weight.shape[1] == 1 else 3


@cache
def _stem_key(library: str, arch: str) -> str | None:
    # Built on the meta device: module names only, no memory, no initialisation.
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = _build(library, arch, 2, 3)
    except Exception:  # an architecture that cannot be built on meta: fall back to file order
        return None
    found = _first_conv(model.named_modules())
    return f"{found[0]}.weight" if found else None


def _fit(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    architecture: str,
    num_classes: int,
    channels: int,
    stem: str | None = None,
) -> None:
    """Fit the head to the file, check names and shapes, and load the weights strictly."""
    weight = state.get(stem) if stem else None
    file_channels = int(weight.shape[1]) if weight is not None and weight.ndim == 4 else channels
    if file_channels != channels:
        raise ArchitectureMismatchError(
            f"The weights take {file_channels}-channel input but the preprocessing gives {channels} "
            f"channel(s): set channels to {file_channels}{' (grayscale)' if file_channels == 1 else ''}."
        )
    try:
        head = fit_head(model, state)
    except HeadError as error:
        looks_like = _guess_architecture(state)
        if looks_like and looks_like != architecture:
            raise ArchitectureMismatchError(
                f"These weights are not a {architecture}: they look like a {looks_like}. "
                "Choose the architecture they were trained with."
            ) from error
        raise ArchitectureMismatchError(f"These weights do not fit {architecture}: {error}") from error
    if head is not None:
        if head.outputs != num_classes:
            raise ClassCountError(
                f"The weights' head ({head.slot}: {head.description}) has {head.outputs} outputs, "
                f"but the class-names file lists {num_classes} names."
            )
        install_head(model, head)
    _check_fits(model, state, architecture, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CustomModelError(f"The weights do not load into {architecture}: {first_line}") from error


def default_preprocessing(library: str, arch: str, model: nn.Module, channels: int = 3) -> Preprocessing:
    """The architecture's own preprocessing: torchvision's transforms, timm's pretrained_cfg."""
    if library == "timm":
        from timm.data import resolve_data_config

        config = resolve_data_config({}, model=model)
        size = config["input_size"][-1]
        interpolation = {"bicubic": "BICUBIC", "nearest": "NEAREST"}.get(config["interpolation"], "BILINEAR")
        base = Preprocessing(
            resize=math.floor(size / config["crop_pct"]),
            crop=size,
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=getattr(InterpolationMode, interpolation),
            policy="squash" if config.get("crop_mode") == "squash" else "crop",
        )
    elif library == "zoo":
        base = REGISTRY[arch].preprocessing
    else:
        base = Preprocessing.from_torchvision(get_model_weights(arch).DEFAULT.transforms())
    if channels == 1 and len(base.mean) != 1:  # one luminance channel: the mean of the RGB statistics
        base = replace(base, channels=1, mean=(sum(base.mean) / 3,), std=(sum(base.std) / 3,))
    return base


PREPROCESSING_KEYS = ("size", "resize", "mean", "std", "channels", "policy", "interpolation")
_INTERPOLATIONS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "LANCZOS"}


def _channels(value: Any) -> int:
    if value not in (1, 3) or isinstance(value, bool):
        raise CustomModelError(f"Preprocessing: channels must be 1 (grayscale) or 3 (RGB), not {value!r}.")
    return int(value)


def preprocessing_from(base: Preprocessing, overrides: Mapping[str, Any] | None) -> Preprocessing:
    """`base` with the given settings changed; the others keep the architecture's values.

    Keys: size (the side the model sees), resize (the short side before the centre crop; by
    default in the base's proportion to size), mean and std (one number, or one per channel),
    channels (1 or 3), policy ("crop": resize the short side and centre-crop; "squash": resize
    to size×size), interpolation (bilinear, bicubic, nearest, lanczos).

    Raises:
        CustomModelError: an unknown key or a value out of range, in one line.
    """
    if not overrides:
        return base
    unknown = sorted(set(overrides) - set(PREPROCESSING_KEYS))
    if unknown:
        hints = "".join(did_you_mean(key, PREPROCESSING_KEYS) for key in unknown)
        raise CustomModelError(
            f"Preprocessing: unknown key(s) {', '.join(map(repr, unknown))}.{hints} "
            f"Known: {', '.join(PREPROCESSING_KEYS)}."
        )
    channels = _channels(overrides["channels"]) if overrides.get("channels") is not None else base.channels
    size = overrides.get("size", base.crop)
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        raise CustomModelError(
            f"Preprocessing: size must be a whole number of pixels from 16 to 4096, not {size!r}."
        )
    resize = overrides.get("resize", round(size * base.resize / base.crop))
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < size:
        raise CustomModelError(
            f"Preprocessing: resize must be a whole number of pixels ≥ size ({size}), not {resize!r}."
        )
    stats = {}
    for key in ("mean", "std"):
        value = overrides.get(key, getattr(base, key))
        values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if (
            not isinstance(values, (list, tuple))
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            or len(values) not in (1, channels)
        ):
            raise CustomModelError(
                f"Preprocessing: {key} must be one number or {channels} (one per channel), not {value!r}."
            )
        if len(values) == 1:
            values = list(values) * channels
        elif channels == 1 and len(values) == 3:  # RGB statistics for a grayscale input: their mean
            values = [sum(values) / 3]
        stats[key] = tuple(float(v) for v in values)
        if len(stats[key]) != channels:
            stats[key] = (sum(stats[key]) / len(stats[key]),) * channels
    if any(v <= 0 for v in stats["std"]):
        raise CustomModelError(f"Preprocessing: std must be positive, not {overrides.get('std')!r}.")
    policy = overrides.get("policy", base.policy)
    if policy not in ("crop", "squash"):
        raise CustomModelError(f"Preprocessing: policy must be 'crop' or 'squash', not {policy!r}.")
    interpolation = base.interpolation
    if "interpolation" in overrides:
        key = str(overrides["interpolation"]).lower()
        if key not in _INTERPOLATIONS:
            raise CustomModelError(
                f"Preprocessing: interpolation must be one of {', '.join(_INTERPOLATIONS)}, "
                f"not {overrides['interpolation']!r}."
            )
        interpolation = getattr(InterpolationMode, _INTERPOLATIONS[key])
    return Preprocessing(
        resize=size if policy == "squash" else resize,
        crop=size,
        mean=stats["mean"],
        std=stats["std"],
        interpolation=interpolation,
        channels=channels,
        policy=policy,
    )


# ----------------------------------------------------------------------------- exported programs (.pt2)


def is_exported_program(data: bytes) -> bool:
    """Whether the bytes are a `torch.export.save` archive (a zip with an archive_format record)."""
    if not data.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(n.rsplit("/", 1)[-1] == "archive_format" for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


_export_lock = threading.Lock()


@contextmanager
def _no_code_unpickled() -> Iterator[None]:
    """While a .pt2 loads: torch.load reads tensors only, and no plain pickle is read at all.

    An archive may carry pickled payloads (legacy weights, custom objects) that torch.export
    would unpickle with ``weights_only=False``; this turns each into an error instead. Patched
    under a lock and restored at once: other loads in this process see torch.load unchanged.
    """
    from torch.export.pt2_archive import _package

    original_load, original_pickle = torch.load, _package.pickle

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    class _Refuse:
        @staticmethod
        def loads(*args, **kwargs):
            raise pickle.UnpicklingError("the archive holds a pickled Python object")

    with _export_lock:
        torch.load, _package.pickle = weights_only_load, _Refuse
        try:
            yield
        finally:
            torch.load, _package.pickle = original_load, original_pickle


def _restore_linears(model: nn.Module) -> None:
    """Put an `nn.Linear` (sharing the parameters) where an unflattened module is one linear op.

    Unflattening gives back the module hierarchy as graph modules; methods that read a layer's
    type (CAM needs the classifier as an `nn.Linear`) then find the classifier again. Same math,
    same parameters; nothing else is replaced (ReLUs stay ops: see guided backprop's refusal).
    """
    for name, module in list(model.named_modules()):
        graph = getattr(module, "graph", None)
        if not name or graph is None:
            continue
        calls = [n for n in graph.nodes if n.op not in ("placeholder", "get_attr", "output")]
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        weight = getattr(module, "weight", None)
        if not (
            len(calls) == 1
            and len(placeholders) == 1
            and calls[0].target is torch.ops.aten.linear.default
            and isinstance(weight, nn.Parameter)
            and weight.ndim == 2
        ):
            continue
        bias = getattr(module, "bias", None)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        linear.weight = weight
        if bias is not None:
            linear.bias = bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)


def _load_exported(
    data: bytes,
    num_classes: int,
    preprocessing: Preprocessing | None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Preprocessing]:
    """An exported program, unflattened so its modules (and hooks on them) exist again."""
    try:
        with _no_code_unpickled(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(data))
    except pickle.UnpicklingError as error:
        raise UnsafeWeightsError(
            f"The exported program holds pickled Python objects; refusing to load it ({error})."
        ) from error
    except Exception as error:  # torch.export raises many types on a corrupt or foreign archive
        first_line = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise CorruptWeightsError(f"The exported program (.pt2) cannot be read: {first_line}") from error
    inputs = [
        n
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in program.graph_signature.user_inputs
    ]
    shape = tuple(inputs[0].meta["val"].shape) if len(inputs) == 1 and "val" in inputs[0].meta else ()
    if len(shape) != 4:
        raise CustomModelError(
            f"The exported program takes {len(inputs)} input(s) of shape {shape}; an image classifier takes "
            "one (N, C, H, W) batch."
        )
    if isinstance(shape[0], int):
        raise CustomModelError(
            f"The exported program has a fixed batch size of {shape[0]}; explanations run batches. "
            f"Export it with a dynamic batch: {EXPORT_SNIPPET}"
        )
    channels = shape[1] if isinstance(shape[1], int) else 3
    fixed = [d for d in shape[2:] if isinstance(d, int)]
    if preprocessing is None:
        size = fixed[0] if fixed else 224
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        if channels == 1:
            mean, std = (0.449,), (0.226,)
        preprocessing = Preprocessing(
            resize=math.floor(size / 0.875), crop=size, mean=mean, std=std, channels=channels
        )
        preprocessing = preprocessing_from(preprocessing, overrides)
    if preprocessing.channels != channels:
        raise CustomModelError(
            f"The exported program takes {channels}-channel input but the preprocessing gives "
            f"{preprocessing.channels}: set channels to {channels}."
        )
    if fixed and any(d != preprocessing.crop for d in fixed):
        raise CustomModelError(
            f"The exported program takes {shape[2]}×{shape[3]} inputs but the preprocessing gives "
            f"{preprocessing.crop}×{preprocessing.crop}: set the size to {fixed[0]}."
        )
    model = torch.export.unflatten(program)
    _restore_linears(model)
    with torch.no_grad():
        try:
            output = model(torch.zeros(2, channels, preprocessing.crop, preprocessing.crop))
        except Exception as error:
            first_line = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise CustomModelError(
                f"The exported program does not run on a batch of images: {first_line}"
            ) from error
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise CustomModelError("The exported program does not return one (N, classes) tensor of scores.")
    if output.shape[1] != num_classes:
        raise ClassCountError(
            f"The exported program has {output.shape[1]} outputs, but the class-names file lists "
            f"{num_classes} names."
        )
    return model, preprocessing


def _read(source: Source, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as file:
                data = file.read()
        except OSError as error:
            reason = (error.strerror or str(error)).lower()
            raise CustomModelError(
                f"Cannot read the {what} file {os.fspath(source)!r}: {reason}. "
                f"Check the path (a relative path starts from {os.getcwd()!r})."
            ) from error
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
            "The file contains Python objects other than tensors; refusing to unpickle it (a whole model "
            "is code). Save the weights with torch.save(model.state_dict(), path) or as safetensors, "
            f"or export the whole model: {EXPORT_SNIPPET}"
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
