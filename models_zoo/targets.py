"""Where to explain in a network: target names, their capture during a forward pass, and the
probe that finds a model's final feature map, its stage ends and every other candidate.

A target names one tensor of the forward pass:

    final        the final feature map: the tensor the classifier head pools (or flattens),
                 wherever that happens: a pooling module, or F.adaptive_avg_pool2d,
                 torch.flatten or .mean((2, 3)) called in ``forward``
    layer4       a module's output
    fc:input     a module's first input
    _bn1:relu    the rectified output of a module: what the ReLU (ReLU6) applied right after it
                 returns. It reaches the rectified maps of models that reuse one activation
                 module (EfficientNet-Lite's ``_swish``) or call ``F.relu`` in ``forward``
                 (DenseNet's last ReLU), which no module outputs.

The CAM formulas are derived for the rectified map the head pools (ReLU -> global average
pooling -> linear); a map taken before the last activation is signed and breaks them, which is
why ``final`` is every model's default target.

Token and channels-last tensors are viewed as (N, C, h, w) feature maps: ViT's (N, 1 + s*s, C)
loses its class token and becomes s x s; Swin's (N, H, W, C) is permuted. Square inputs are
assumed, as the zoo's centre crops are: (N, a, a, C) with C > a is channels-last, and the probe
lists square maps only (MaxViT's window partitions are 4-D but not maps).
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from models_zoo.errors import LayerError, did_you_mean

FINAL = "final"
_PARTS = ("output", "input", "relu")


@dataclass(frozen=True)
class Target:
    """A parsed target name: which module, and which of its tensors ("final" has no module)."""

    name: str
    module: str
    part: str  # "output", "input", "relu" or "final"


STAGE_NAME = re.compile(r"stage\s*(\d+)", re.IGNORECASE)


def parse_target(name: str) -> Target:
    """``"final"``, ``"layer4"``, ``"fc:input"``, ``"_bn1:relu"`` (``"x:output"`` = ``"x"``).

    Raises:
        LayerError: a suffix on ``"final"``, which is a tensor, not a module.
    """
    if name == FINAL:
        return Target(name, "", FINAL)
    module, colon, part = name.rpartition(":")
    if colon and module and part in _PARTS:
        if module == FINAL:
            raise LayerError(f"{name!r}: 'final' is the final feature map itself and takes no ':{part}'.")
        return Target(name, module, part)
    return Target(name, name, "output")


def resolve_stage(model: nn.Module, name: str, input_shape: Sequence[int] | None) -> str:
    """``"stage 2"`` (or ``"stage2"``) -> that stage's target name; other names as they are.

    Raises:
        LayerError: no such stage (the message names the stages there are).
    """
    if (
        input_shape is None
        or STAGE_NAME.fullmatch(name.strip()) is None
        or name in dict(model.named_modules())
    ):
        return name
    return pick_stage(name, anatomy(model, input_shape).stages)


def pick_stage(name: str, stages: Sequence[LayerInfo]) -> str:
    """The target of ``"stage N"`` among ``stages`` (shallow to deep).

    Raises:
        LayerError: no such stage; the message names the stages there are.
    """
    index = int(STAGE_NAME.fullmatch(name.strip()).group(1))
    if not 1 <= index <= len(stages):
        raise LayerError(
            f"There is no {name!r}: this model has stages 1 to {len(stages)} (shallow to deep, the "
            f"last is {stages[-1].name!r}); or use 'final', or a module name."
        )
    return stages[index - 1].name


# ---------------------------------------------------------------------------- calls the modes see
# Each ReLU-like torch function -> a parser of its arguments into (input, upper clip, in place),
# or None where the call is not a ReLU (a hardtanh with a lower bound other than 0).
ReluCall = tuple[torch.Tensor, float | None, bool]


def _relu(input: torch.Tensor, inplace: bool = False) -> ReluCall:
    return input, None, inplace


def _relu_(input: torch.Tensor) -> ReluCall:
    return input, None, True


def _relu6(input: torch.Tensor, inplace: bool = False) -> ReluCall:
    return input, 6.0, inplace


def _hardtanh(
    input: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> ReluCall | None:
    # nn.ReLU6 is Hardtanh(0, 6) and calls F.hardtanh.
    return (input, float(max_val), inplace) if min_val == 0 else None


def _hardtanh_(input: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0) -> ReluCall | None:
    return _hardtanh(input, min_val, max_val, inplace=True)


RELU_CALLS: dict[Callable, Callable[..., ReluCall | None]] = {
    F.relu: _relu,
    torch.relu: _relu,
    torch.Tensor.relu: _relu,
    torch.relu_: _relu_,  # also F.relu_
    torch.Tensor.relu_: _relu_,
    F.relu6: _relu6,
    F.hardtanh: _hardtanh,
    F.hardtanh_: _hardtanh_,
}
# Exported programs (torch.export, unflattened) call ATen operators directly.
_ATEN = torch.ops.aten
RELU_CALLS.update({
    _ATEN.relu.default: _relu,
    _ATEN.relu_.default: _relu_,
    _ATEN.hardtanh.default: _hardtanh,
    _ATEN.hardtanh_.default: _hardtanh_,
})  # fmt: skip


def relu_input(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The input of a ReLU-like call, or None when the call is not one."""
    parse = RELU_CALLS.get(func)
    call = parse(*args, **kwargs) if parse is not None else None
    return call[0] if call is not None else None


_POOLS = {
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d,
    _ATEN.adaptive_avg_pool2d.default, _ATEN.avg_pool2d.default, _ATEN.max_pool2d.default,
}  # fmt: skip
_REDUCTIONS = {
    torch.mean, torch.Tensor.mean, torch.amax, torch.Tensor.amax, torch.sum, torch.Tensor.sum,
    _ATEN.mean.dim, _ATEN.amax.default, _ATEN.sum.dim_IntList,
}  # fmt: skip
_FLATTENS = {
    torch.flatten, torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape, torch.reshape,
    _ATEN.flatten.using_ints, _ATEN.view.default, _ATEN.reshape.default,
}  # fmt: skip
HEAD_CALLS = _POOLS | _REDUCTIONS | _FLATTENS


def _reduced_dims(args: tuple, kwargs: dict) -> set[int]:
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dims is None:
        return {0, 1, 2, 3}
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return {d % 4 for d in dims}


def head_reads(func: Callable, args: tuple, kwargs: dict, result: object) -> bool:
    """Whether a call reads a whole (N, C, h, w) map at once, as a classifier head does: a global
    pooling, a mean (or max, sum) over both spatial dimensions, or a flatten to (N, features)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not isinstance(result, torch.Tensor):
        return False
    if func in _POOLS:
        return result.ndim == 4 and result.shape[-2] * result.shape[-1] == 1
    if func in _REDUCTIONS:
        return {2, 3} <= _reduced_dims(args, kwargs)
    # flatten, view, reshape to (N, -1) of a map larger than 1 x 1 (a pooled map is not read again)
    return result.ndim == 2 and result.shape[0] == x.shape[0] and x.shape[-2] * x.shape[-1] > 1


# ---------------------------------------------------------------------------- token and channel layouts
def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _tokens(t: torch.Tensor, extra: int, side: int) -> torch.Tensor:
    # (N, extra + side*side, C) -> (N, C, side, side), dropping the leading class token(s)
    return t[:, extra:].reshape(t.shape[0], side, side, t.shape[-1]).permute(0, 3, 1, 2)


def feature_map_view(tensor: torch.Tensor, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """How to view a captured (1, ...) tensor as (1, C, h, w); the same view serves a (k, ...)
    batch of its gradients.

    Raises:
        LayerError: the tensor is not a feature map in any known layout.
    """
    shape = tuple(tensor.shape)
    if tensor.ndim == 4:
        # (N, H, W, C): a square grid whose last dimension, the channels, is the longest (Swin)
        channels_last = shape[1] == shape[2] != shape[3] and shape[3] > shape[1]
        return _channels_last if channels_last else _identity
    if tensor.ndim == 3:
        for extra in (1, 0):  # a class token first (ViT), or tokens only
            side = math.isqrt(max(shape[1] - extra, 0))
            if side > 1 and side * side == shape[1] - extra:
                return partial(_tokens, extra=extra, side=side)
    raise LayerError(
        f"Layer {name!r} outputs {shape}, not a feature map (N, C, h, w) or a square grid of "
        "tokens; choose a convolutional layer or a transformer block."
    )


class Captured(NamedTuple):
    """A captured tensor as the network computed it, and its view as a feature map."""

    tensor: torch.Tensor  # autograd history from the first captured target on
    view: Callable[[torch.Tensor], torch.Tensor]

    def feature_map(self) -> torch.Tensor:
        """(1, C, h, w)."""
        return self.view(self.tensor)


# ---------------------------------------------------------------------------- the final feature map
# model -> {input shape: the ordinal of the head's reading call among HEAD_CALLS, or None}
_FINAL_CALLS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int | None]] = weakref.WeakKeyDictionary()
_final_lock = threading.Lock()


class _HeadCallCounter(TorchFunctionMode):
    """Counts this thread's `HEAD_CALLS`; remembers the last one that reads a whole map."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.last_read: int | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in HEAD_CALLS:
            if head_reads(func, args, kwargs, result):
                self.last_read = self.count
            self.count += 1
        return result


def final_call(model: nn.Module, input_shape: Sequence[int], device: torch.device | None = None) -> int:
    """Which of the forward pass's `HEAD_CALLS` reads the final feature map (one probe pass per
    model and input shape, cached; the model is not modified).

    Raises:
        LayerError: no call reads a whole feature map (a transformer's class token, say).
    """
    key = tuple(input_shape)
    with _final_lock:
        known = _FINAL_CALLS.get(model, {})
        if key in known:
            ordinal = known[key]
        else:
            counter = _HeadCallCounter()
            device = device or model_device(model)
            with torch.no_grad(), counter:
                model(torch.zeros(1, *key, device=device))
            ordinal = counter.last_read
            _FINAL_CALLS.setdefault(model, {})[key] = ordinal
    if ordinal is None:
        raise LayerError(
            "This model has no final feature map: its head never pools or flattens a (N, C, h, w) "
            "map (a transformer that reads its class token, say); choose a layer."
        )
    return ordinal


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------- capture
def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``.

    Raises:
        LayerError: no such module; the message names close matches.
    """
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    hint = did_you_mean(name, [n for n in modules if n] + [FINAL])
    suffix = (
        ""
        if hint
        else f" Use {FINAL!r} (the final feature map) or a module name such as {_example(modules)!r}."
    )
    raise LayerError(f"The model has no layer named {name!r}.{hint}{suffix}")


def _example(modules: dict[str, nn.Module]) -> str:
    names = [n for n, m in modules.items() if n and isinstance(m, nn.Conv2d)]
    return names[-1] if names else next((n for n in modules if n), FINAL)


def check_target(model: nn.Module, name: str) -> Target:
    """Parse a target name and check that its module exists (fail early, with close matches)."""
    target = parse_target(name)
    if target.module:
        resolve_module(model, target.module)
    return target


class _CaptureCalls(TorchFunctionMode):
    """Captures targets that no module hook can reach: the final feature map (an argument of the
    head's reading call) and rectified outputs (the result of a ReLU call on a module's output)."""

    def __init__(self, keep: Callable, final: tuple[Target, int] | None) -> None:
        super().__init__()
        self.keep = keep
        self.final = final
        self.head_calls = 0
        self.relu_watch: dict[int, tuple[Target, torch.Tensor]] = {}  # id(module output) -> target

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.final is not None and func in HEAD_CALLS:
            target, ordinal = self.final
            if self.head_calls == ordinal:
                args = (self.keep(target, args[0]), *args[1:])
            self.head_calls += 1
        if self.relu_watch and func in RELU_CALLS:
            x = relu_input(func, args, kwargs)
            watched = self.relu_watch.pop(id(x), None) if x is not None else None
            if watched is not None and watched[1] is x:
                return self.keep(watched[0], func(*args, **kwargs))
        return func(*args, **kwargs)


@contextmanager
def capture_targets(
    model: nn.Module, names: Sequence[str], input_shape: Sequence[int] | None = None
) -> Iterator[dict[str, Captured]]:
    """Record the named targets during forward passes run inside the block.

    Run the forward pass under ``torch.no_grad()``: the first captured target is turned into a
    leaf that requires grad and autograd is switched on from there, so only the part of the
    network after the shallowest target is recorded for backward (no parameter gradients, no
    gradient with respect to the input).

    Hooks and function modes act only on the thread that opened the block, so concurrent callers
    sharing one model never see each other's captures; hooks are removed on exit, also when an
    exception is raised. The rest of the network is handed a clone of each stored tensor, so a
    later in-place operation (DenseNet's ``relu_``, ``ReLU(inplace=True)``) cannot overwrite it.

    Args:
        model: the network; never modified.
        names: target names (see the module docstring).
        input_shape: (C, H, W) of the coming input; needed for ``"final"``.

    Yields:
        A dict filled during the forward pass: target name -> `Captured`.

    Raises:
        LayerError: unknown module, a tensor that is not a feature map, a module that runs more
            than once, or no final feature map.
    """
    owner = threading.get_ident()
    targets = []
    for name in dict.fromkeys(names):
        found = check_target(model, resolve_stage(model, name, input_shape))
        targets.append(Target(name, found.module, found.part))  # captured under the name asked for
    captured: dict[str, Captured] = {}

    def keep(target: Target, tensor: object) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise LayerError(f"Layer {target.name!r} gives {type(tensor).__name__}, not a feature map.")
        if target.name in captured:
            raise LayerError(
                f"Layer {target.name!r} runs more than once in a forward pass (a shared module), so "
                "its output is ambiguous; choose a layer that runs once, or 'module:relu'."
            )
        view = feature_map_view(tensor, target.name)
        if not torch.is_grad_enabled():
            tensor = tensor.detach().requires_grad_(True)
            torch.set_grad_enabled(True)
        captured[target.name] = Captured(tensor, view)
        return tensor.clone()

    final = None
    if any(t.part == FINAL for t in targets):
        if input_shape is None:
            raise LayerError("The final feature map needs the input's shape to be located.")
        final = (next(t for t in targets if t.part == FINAL), final_call(model, input_shape))
    calls = _CaptureCalls(keep, final)

    def output_hook(target: Target):
        def hook(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor | None:
            if threading.get_ident() != owner:
                return None
            if target.part == "relu":
                if isinstance(output, torch.Tensor):
                    calls.relu_watch[id(output)] = (target, output)
                return None
            return keep(target, output)

        return hook

    def input_hook(target: Target):
        def hook(module: nn.Module, inputs: tuple) -> tuple | None:
            if threading.get_ident() != owner or not inputs:
                return None
            return (keep(target, inputs[0]), *inputs[1:])

        return hook

    handles = []
    try:
        # Watches for a module's ReLU go last: they must see the tensor that the module's other
        # hooks (its own capture) hand on.
        for target in sorted(targets, key=lambda t: t.part == "relu"):
            if not target.module:
                continue
            module = resolve_module(model, target.module)
            if target.part == "input":
                handles.append(module.register_forward_pre_hook(input_hook(target)))
            else:
                handles.append(module.register_forward_hook(output_hook(target)))
        if final is not None or any(t.part == "relu" for t in targets):
            with calls:
                yield captured
        else:
            yield captured
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------- the probe
class LayerInfo(NamedTuple):
    """A candidate target and its feature map's shape (C, h, w) at the model's input size.

    ``title`` names what it is for people ("final feature map", "stage 3"); ``rectified`` says
    whether the tensor is non-negative by construction (a ReLU's output, or a pooling,
    concatenation or reshape of such outputs).
    """

    name: str
    shape: tuple[int, int, int]
    title: str = ""
    rectified: bool = False

    @property
    def label(self) -> str:
        c, h, w = self.shape
        size = f"{c}×{h}×{w}"
        if not self.title:
            return f"{self.name}  ({size})"
        if self.name == FINAL:
            return f"{self.title} ({size})"
        return f"{self.title} · {h}×{w} — {self.name}"  # short: the sidebar cuts long labels


@dataclass(frozen=True)
class Anatomy:
    """What one probe pass finds in a model: where its feature maps are.

    Attributes:
        final: the final feature map, or None when the head reads no map (ViT).
        stages: the end of each resolution stage, shallow to deep, rectified where the network
            rectifies; the deepest is ``final`` when there is one.
        modules: every module output and rectified module output that is a feature map,
            deepest first.
    """

    final: LayerInfo | None
    stages: tuple[LayerInfo, ...]
    modules: tuple[LayerInfo, ...]

    def layers(self) -> list[LayerInfo]:
        """The picker's list: the final feature map, the stage ends deep to shallow, then the rest."""
        first = ([self.final] if self.final else []) + [s for s in reversed(self.stages) if s.name != FINAL]
        named = {layer.name for layer in first}
        return first + [layer for layer in self.modules if layer.name not in named]


# Modules whose output is never a useful explanation target.
_NOT_TARGETS = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.ZeroPad2d, nn.ConstantPad2d)


class _Recorder(TorchFunctionMode):
    """Records this thread's ReLU calls and head-reading calls, numbered on a clock shared with the
    module hooks, so that "a ReLU inside the module" and "a ReLU applied after it" differ even when
    the ReLU works in place and returns the module's own tensor."""

    def __init__(self, clock: Iterator[int]) -> None:
        super().__init__()
        self.clock = clock
        self.relus: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (time, input, output)
        self.head_calls = 0
        self.final: tuple[int, torch.Tensor] | None = None
        # Tensors non-negative by construction: id -> (time it became so, the tensor, kept alive)
        self.nonnegative: dict[int, tuple[int, torch.Tensor]] = {}

    def is_nonnegative(self, tensor: object, before: float = math.inf) -> bool:
        known = self.nonnegative.get(id(tensor))
        return known is not None and known[1] is tensor and known[0] < before

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in RELU_CALLS:
            x = relu_input(func, args, kwargs)
            if x is not None and isinstance(result, torch.Tensor):
                time = next(self.clock)
                self.relus.append((time, x, result))
                self.nonnegative[id(result)] = (time, result)
        elif func in _KEEPS_SIGN and isinstance(result, torch.Tensor):
            inputs = args[0] if func in (torch.cat, torch.concat, _ATEN.cat.default) else args[:1]
            if inputs and all(self.is_nonnegative(t) for t in inputs):
                self.nonnegative[id(result)] = (next(self.clock), result)
        if func in HEAD_CALLS:
            if head_reads(func, args, kwargs, result):
                self.final = (self.head_calls, args[0])
            self.head_calls += 1
        return result


# Operations whose output is non-negative when their tensor inputs are: pooling, concatenation
# (GoogLeNet's and Inception's blocks concatenate ReLU outputs), reshaping, eval-mode dropout.
_KEEPS_SIGN = {
    torch.cat, torch.concat, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.dropout, torch.flatten, torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape,
    torch.reshape, torch.Tensor.permute, torch.permute, torch.Tensor.contiguous, torch.Tensor.clone,
    *_POOLS, *_FLATTENS, _ATEN.cat.default, _ATEN.dropout.default, _ATEN.permute.default,
}  # fmt: skip


class _Record(NamedTuple):
    name: str
    time: int
    source: object  # the module's first input
    output: torch.Tensor


_ANATOMIES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Anatomy]] = weakref.WeakKeyDictionary()


def anatomy(model: nn.Module, input_shape: Sequence[int]) -> Anatomy:
    """`probe`'s result, cached per model and input shape (the model is never modified)."""
    with _final_lock:
        known = _ANATOMIES.get(model, {}).get(tuple(input_shape))
    return known if known is not None else probe(model, input_shape)


def probe(model: nn.Module, input_shape: Sequence[int]) -> Anatomy:
    """Run one forward pass on a zero image and find the model's candidate targets.

    Keeps the outputs of modules that run once (where several modules return the same tensor, a
    Sequential and its last child, the outermost name), the rectified outputs ``module:relu`` of
    modules whose output goes into a ReLU afterwards, and the final feature map. Stage ends are
    where the network shrinks a resolution, rectified where the network has a rectified map there.
    The model is not modified; the final feature map's location is cached for `capture_targets`.
    """
    owner = threading.get_ident()
    clock = itertools.count()
    calls: dict[str, int] = {}
    records: list[_Record] = []  # finishing order

    def make_hook(name: str):
        def hook(module, inputs, output):
            if threading.get_ident() != owner:
                return
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                records.append(_Record(name, next(clock), inputs[0] if inputs else None, output))

        return hook

    recorder = _Recorder(clock)
    handles = []
    key = tuple(input_shape)
    try:
        for name, module in model.named_modules():
            # Packages define their own Identity (EfficientNet-Lite's padding): skip by name too.
            if name and not isinstance(module, _NOT_TARGETS) and type(module).__name__ != "Identity":
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad(), recorder:
            model(torch.zeros(1, *key, device=model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    with _final_lock:
        _FINAL_CALLS.setdefault(model, {})[key] = recorder.final[0] if recorder.final else None

    records = [r for r in records if calls[r.name] == 1]
    outermost: dict[int, _Record] = {}  # id(tensor) -> the last (outermost) module returning it
    for record in records:
        outermost[id(record.output)] = record
    candidates: list[tuple[int, LayerInfo]] = []  # (time, layer)
    for record in outermost.values():
        if _rearranges(record):
            continue
        made_by_relu = recorder.is_nonnegative(record.output, before=record.time)
        layer = _info(record.output, record.name, made_by_relu)
        if layer is not None:
            candidates.append((record.time, layer))
        later = [(t, out) for t, x, out in recorder.relus if x is record.output and t > record.time]
        if later and layer is not None and not made_by_relu:
            t, out = later[0]
            owned = outermost.get(id(out))
            if owned is None or owned.time < t:  # no module of its own returns the ReLU's output
                rectified = _info(out, f"{record.name}:relu", True)
                if rectified is not None:
                    candidates.append((t, rectified))
    candidates.sort(key=lambda item: item[0])

    final = None
    if recorder.final is not None:
        tensor = recorder.final[1]
        final = _info(tensor, FINAL, recorder.is_nonnegative(tensor), "final feature map")
    stages = _stage_ends(records, outermost, candidates, final)
    found = Anatomy(final, tuple(stages), tuple(layer for _, layer in reversed(candidates)))
    with _final_lock:
        _ANATOMIES.setdefault(model, {})[key] = found
    return found


def _rearranges(record: _Record) -> bool:
    """A module that only reshapes or permutes its input (Swin's Permute, MaxViT's window
    partitions): its output is the same values in another order, not a new map."""
    source = record.source
    return (
        isinstance(source, torch.Tensor)
        and source.numel() == record.output.numel()
        and source.shape != record.output.shape
    )


def _spatial(tensor: torch.Tensor) -> tuple[int, int]:
    """(h, w) of a 4-D tensor read as a feature map (channels-last maps permuted)."""
    return tuple(feature_map_view(tensor, "")(tensor).shape[-2:])


def _info(tensor: torch.Tensor, name: str, rectified: bool, title: str = "") -> LayerInfo | None:
    try:
        view = feature_map_view(tensor, name)
    except LayerError:
        return None
    c, h, w = view(tensor).shape[1:]
    return LayerInfo(name, (c, h, w), title, rectified) if h == w > 1 else None


def _stage_ends(
    records: list[_Record],
    outermost: dict[int, _Record],
    candidates: list[tuple[int, LayerInfo]],
    final: LayerInfo | None,
) -> list[LayerInfo]:
    """The end of each resolution stage, shallow to deep, then the final feature map.

    Where a module shrinks the map, the module that produced its input ends the stage (the
    outermost: ``layer1``, not ``layer1.2``; of several readers, the first to finish). When that
    tensor is signed, its rectified output (``name:relu``) or else the last rectified map at the
    same resolution before the shrink takes its place (EfficientNet's linear bottlenecks).
    """
    by_name = {layer.name: (t, layer) for t, layer in candidates}
    ends: dict[tuple[int, int], tuple[int, int, LayerInfo]] = {}  # size -> (made, shrunk, layer)
    for record in records:
        source, output = record.source, record.output
        if not isinstance(source, torch.Tensor) or source.ndim != 4 or output.ndim != 4:
            continue
        size, smaller = _spatial(source), _spatial(output)
        # A downsampling: both sides at most 3/4 (a "valid" convolution's 149 -> 147 is not), and
        # not a global pooling (squeeze-and-excitation gates pool every block to 1 x 1).
        if smaller[0] * smaller[1] <= 1 or smaller[0] > 0.75 * size[0] or smaller[1] > 0.75 * size[1]:
            continue
        producer = outermost.get(id(source))
        if producer is None or producer.name not in by_name:
            continue
        if size not in ends or producer.time < ends[size][0]:
            ends[size] = (producer.time, record.time, by_name[producer.name][1])
    stages = []
    for size, (_, shrink_time, layer) in ends.items():
        if final is not None and size[0] <= final.shape[1]:
            continue
        if not layer.rectified:
            at_size = [c for t, c in candidates if c.shape[1:] == size and c.rectified and t < shrink_time]
            relu = by_name.get(f"{layer.name}:relu")
            layer = relu[1] if relu else (at_size[-1] if at_size else layer)
        stages.append(layer)
    stages.sort(key=lambda layer: -layer.shape[1])  # shallow (large) first
    stages = [layer._replace(title=f"stage {i + 1}") for i, layer in enumerate(stages)]
    if final is not None:
        stages.append(final)
    elif candidates:
        stages.append(candidates[-1][1]._replace(title=f"stage {len(stages) + 1}"))
    return stages
