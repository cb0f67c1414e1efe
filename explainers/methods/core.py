"""The explanation pipeline: shared passes (Evidence), the method registry and `explain`.

Every method reads what it needs from one `Evidence` object, which computes each pass at most
once: one forward pass capturing the target layers, one backward pass to those layers (batched
over target classes), and whatever further passes a method family adds (guided, masked inputs).
So asking for five gradient CAMs costs one forward and one backward, not five of each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from explainers.errors import ExplainerInputError, MethodError, TargetError, did_you_mean
from explainers.methods.capture import Captured, capture_targets, model_device, parse_target

if TYPE_CHECKING:
    from explainers.methods.batch import BatchEvidence

T = TypeVar("T")

# A map whose positive part is below this fraction of the pre-ReLU map's magnitude carries no
# positive evidence: it is returned as zeros instead of rescaled rounding noise.
NO_EVIDENCE_RTOL = 1e-5


class SharedForward(Protocol):
    """A forward pass that a method family records from the input (the guided family's rectified
    pass) and lends to the layer gradients, so that one forward serves both backward passes.

    Calling it runs the pass: (logits (N, num_classes), the captured layers), as `capture_forward`.
    `plain_gradients` is the context in which the layer gradients are taken: the family's
    backward rules set to the plain gradient for that backward pass.
    """

    def __call__(self) -> tuple[torch.Tensor, dict[str, Captured]]: ...

    def plain_gradients(self) -> AbstractContextManager[object]: ...


class LendsForward:
    """A request whose forward pass a method family may run for it (`SharedForward`): shared by
    `Evidence` and `BatchEvidence`, whose cached forward property is named by ``_forward_name``."""

    _forward_name: ClassVar[str]
    shared_forward: SharedForward | None = None

    def share_forward(self, forward: SharedForward) -> bool:
        """Run the forward pass as ``forward`` (see `SharedForward`); False if it has already run."""
        if self._forward_name in self.__dict__:
            return False
        self.shared_forward = forward
        return True

    @contextmanager
    def layer_backward(self) -> Iterator[bool]:
        """The context of the backward pass to the layers: under a lent pass, its plain rule.
        Yields whether to keep the graph: a lent pass keeps it for the family's own backward."""
        shared = self.shared_forward
        with shared.plain_gradients() if shared else nullcontext():
            yield shared is not None


class Evidence(LendsForward):
    """The activations, gradients and scores of one (model, image, layers, classes) request.

    Each property runs its pass on first use and keeps the result, so methods that need the
    same pass share it.

    Args:
        model: a classifier in eval mode; never modified.
        x: the input, (1, channels, H, W) (3 for RGB models, 1 for grayscale ones).
        layers: targets to capture (module names, ``"final"``, ``"fc:input"``, ``"_bn1:relu"``:
            see `models_zoo.targets`); gradients reach the shallowest and stop there.
        targets: class indices; None means the predicted top-``top_k`` classes.
        counterfactual: negate the gradients (Grad-CAM paper, section 5.2).
        top_k: how many of the highest-scoring classes to explain when ``targets`` is None.
        options: method options, read by the methods that take them (e.g. Score-CAM's
            ``max_channels``, ``eigen_smooth`` for the CAMs).

    Attributes:
        extras: what methods report about their work (e.g. Score-CAM's number of passes);
            copied into each `Explanation`.
    """

    _forward_name = "_forward"

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        layers: Sequence[str],
        targets: Sequence[int] | None = None,
        counterfactual: bool = False,
        top_k: int = 1,
        options: Mapping[str, object] | None = None,
    ) -> None:
        if model.training:
            raise ExplainerInputError(
                "The model is in training mode; call model.eval() first (a training-mode "
                "forward pass would update its BatchNorm statistics)."
            )
        if x.ndim != 4 or x.shape[0] != 1:
            raise ExplainerInputError(
                f"Expected one image of shape (1, channels, H, W), got {tuple(x.shape)}."
            )
        self.model = model
        self.device = model_device(model)
        self.x = x.to(self.device, torch.float32)
        self.layers = tuple(dict.fromkeys(layers))
        self._requested_targets = None if targets is None else tuple(int(t) for t in targets)
        self.counterfactual = counterfactual
        self.top_k = top_k
        self.options: dict[str, object] = dict(options or {})
        self.extras: dict[str, object] = {}
        self._results: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._memo: dict[str, object] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        return self.x.shape[-2], self.x.shape[-1]

    def prepare(self, methods: Sequence[str], layer: str) -> None:
        """Let each method arrange its passes before any runs (`Method.prepare`)."""
        for name in methods:
            get_method(name).prepare(self, layer)

    @cached_property
    def _forward(self) -> tuple[torch.Tensor, dict[str, Captured]]:
        if self.shared_forward is not None:
            return self.shared_forward()
        return capture_forward(self.model, self.x, self.layers)

    @property
    def logits(self) -> torch.Tensor:
        """The class scores before softmax, (num_classes,), with autograd history to the layers."""
        return self._forward[0][0]

    @cached_property
    def targets(self) -> torch.Tensor:
        """The explained class indices, (k,), on the model's device."""
        num_classes = self.logits.shape[0]
        if self._requested_targets is None:
            if not 1 <= self.top_k <= num_classes:
                raise TargetError(f"Cannot explain the top {self.top_k} of {num_classes} classes.")
            return self.logits.detach().topk(self.top_k).indices
        for target in self._requested_targets:
            if not 0 <= target < num_classes:
                raise TargetError(
                    f"Class {target} is out of range: the model has {num_classes} classes "
                    f"(0 to {num_classes - 1})."
                )
        return torch.tensor(self._requested_targets, device=self.device)

    @property
    def executed_layers(self) -> tuple[str, ...]:
        """The captured layers in the order the forward pass reached them: shallow to deep."""
        return tuple(self._forward[1])

    def activations(self, layer: str) -> torch.Tensor:
        """The target's feature map, (1, C, h, w), detached (token and channels-last tensors
        viewed as maps)."""
        return self._forward[1][layer].feature_map().detach()

    @cached_property
    def _gradients(self) -> dict[str, torch.Tensor]:
        # One backward for all layers and all target classes.
        captured = [self._forward[1][name] for name in self.layers]
        with self.layer_backward() as keep_graph:
            grads = batched_grad(self.logits[self.targets], [c.tensor for c in captured], keep_graph)
        sign = -1.0 if self.counterfactual else 1.0
        return {name: sign * c.view(g) for name, c, g in zip(self.layers, captured, grads)}

    def gradients(self, layer: str) -> torch.Tensor:
        """d(score of each target)/d(activation), (k, C, h, w); negated when counterfactual."""
        return self._gradients[layer]

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """Run ``compute`` once per request and keep its value: how method families share
        their own extra passes (a guided backward, a batch of masked inputs)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def result(self, method: str, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, map) of a registered method, computed once per request; see `Method.compute`."""
        key = (method, layer)
        if key not in self._results:
            self._results[key] = get_method(method).compute(self, layer)
        return self._results[key]


def capture_forward(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    around: AbstractContextManager[object] | None = None,
) -> tuple[torch.Tensor, dict[str, Captured]]:
    """One forward pass of ``x`` (N, C, H, W) capturing ``layers``: (logits (N, num_classes), captures).

    Autograd records the network from the shallowest captured layer on (see `capture_targets`).
    With ``around`` (a method family's function mode, entered outside the capture so that the
    capture sees the model's own calls), it records the whole pass from ``x`` on instead: the
    pass a `SharedForward` lends to the layer gradients.

    Raises:
        ExplainerInputError (and subclasses): a layer that is unknown, not a feature map or did
            not run; a model that does not return (N, num_classes) scores.
    """
    recording = torch.enable_grad() if around is not None else torch.no_grad()
    with around or nullcontext(), capture_targets(model, layers, tuple(x.shape[1:])) as captured, recording:
        logits = model(x)
    missing = [name for name in layers if name not in captured]
    if missing:
        target = parse_target(missing[0])
        if target.part == "relu":
            raise ExplainerInputError(
                f"No ReLU is applied to the output of {target.module!r} (it is rectified already, "
                f"or its activation is not a ReLU); use {target.module!r} itself, or another layer."
            )
        raise ExplainerInputError(f"Layer {missing[0]!r} did not run in the forward pass.")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ExplainerInputError(f"The model must return class scores of shape ({x.shape[0]}, num_classes).")
    return logits, captured


class Method:
    """One explanation method. Subclasses set `name`, `kind` and override `compute`.

    `kind` tells consumers how to show the map: "cam" maps are (H, W) in [0, 1];
    "guided" maps are raw input gradients (H, W, 3).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "cam"
    title: ClassVar[str] = ""
    reads_gradient: ClassVar[bool] = False  # its map is blank where no gradient reaches the layer

    def compute(self, evidence: Evidence, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (raw, map), each with a leading dimension of one entry per target class.

        raw is the map at the layer's resolution before normalisation, map is what is shown.
        """
        raise NotImplementedError

    def prepare(self, evidence: Evidence, layer: str) -> None:
        """Arrange this method's passes on one image's evidence before any pass runs.

        The guided family lends its forward pass, recorded from the input, to the layer
        gradients (`Evidence.share_forward`), so a request mixing CAMs and guided maps costs one
        forward pass, not two. The default does nothing; a method works without it.
        """

    def prepare_batch(self, batch: BatchEvidence, layer: str) -> None:
        """Run this method's own extra passes once for a batch of images (`explainers.methods.batch`).

        A method with passes beyond the shared forward and backward (the guided family's
        rectified backward) may compute them for all images at once and hand each image its
        share through ``batch.share``; `compute` then finds them in the image's evidence. The
        default does nothing: `compute` runs per image, on evidence whose forward pass,
        targets and gradients come from the batch, so every method works on a batch unchanged.
        """


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding one instance of a `Method` subclass to `METHODS`."""
    if cls.name in METHODS:
        raise ValueError(f"Method {cls.name!r} is registered twice.")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Raises:
        MethodError: unknown name; the message names close matches.
    """
    if name in METHODS:
        return METHODS[name]
    hint = did_you_mean(name, METHODS, cutoff=0.4)
    raise MethodError(f"Unknown method {name!r}.{hint} Available: {', '.join(METHODS)}.")


def method_title(name: str) -> str:
    """A method's display name, e.g. "Grad-CAM++"; a name that is not a method comes back as is."""
    method = METHODS.get(name)
    return (method.title if method is not None else "") or name


def batched_grad(
    scores: torch.Tensor, inputs: Sequence[torch.Tensor], retain_graph: bool = False
) -> tuple[torch.Tensor, ...]:
    """The gradient of each of k scores with respect to each input, in one backward pass.

    Args:
        scores: (k,) scalars of one graph.
        inputs: tensors of batch size 1, (1, ...), that the scores depend on.
        retain_graph: keep the graph for a later backward pass.

    Returns:
        One (k, ...) tensor per input: row i is d scores[i] / d input.
    """
    k = scores.shape[0]
    if k == 1:
        return torch.autograd.grad(scores.sum(), inputs, retain_graph=retain_graph)
    # A batched vector-Jacobian product: one backward for all k classes.
    eye = torch.eye(k, device=scores.device, dtype=scores.dtype)
    try:
        grads = torch.autograd.grad(scores, inputs, eye, retain_graph=retain_graph, is_grads_batched=True)
    except RuntimeError:  # an op without a batching rule: fall back to k backwards
        per_class = [torch.autograd.grad(scores[i], inputs, retain_graph=True) for i in range(k)]
        grads = tuple(torch.cat(parts) for parts in zip(*per_class))
    return tuple(g.reshape(k, *x.shape[1:]) for g, x in zip(grads, inputs))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (k, h, w) maps to (k, H, W)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (H, W) map of a non-negative (k, H, W) stack to [0, 1].

    Args:
        maps: non-negative maps (after ReLU).
        magnitude: per map, the largest absolute value before ReLU, (k,): a map whose maximum
            is a negligible fraction of it has no positive evidence and becomes all zeros.
    """
    flat = maps.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    span = high - low
    has_evidence = high > NO_EVIDENCE_RTOL * magnitude
    varies = span > NO_EVIDENCE_RTOL * high
    scaled = (flat - low[:, None]) / torch.where(varies, span, torch.ones_like(span))[:, None]
    # A constant positive map is uniform evidence: all ones.
    scaled = torch.where(varies[:, None], scaled, torch.ones_like(scaled))
    return torch.where(has_evidence[:, None], scaled, torch.zeros_like(scaled)).view_as(maps)


def cam_from_sum(weighted_sum: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU, upsample and normalise (k, h, w) channel sums; returns (raw, map)."""
    raw = weighted_sum.relu()
    magnitude = weighted_sum.abs().flatten(1).amax(1)
    return raw, normalise(upsample(raw, size), magnitude)


@dataclass(frozen=True)
class Explanation:
    """What `explain` returns.

    Attributes:
        target: the explained class index.
        logits: the model's class scores for the input, (num_classes,), on the CPU.
        maps: method -> shown map at the input's resolution: (H, W) float32 in [0, 1] for
            CAMs, the raw (H, W, 3) input-space map for guided methods; on the model's device.
        raw: method -> the map at the layer's own resolution before normalisation.
        layer: the target layer.
        counterfactual: whether the gradients were negated.
        seconds: wall time of the call.
        device: where it ran, e.g. "cpu" or "cuda:0".
        extras: what the methods reported about their work, e.g. Score-CAM's number of
            forward passes and whether its map is an approximation.
    """

    target: int
    logits: torch.Tensor
    maps: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]
    layer: str
    counterfactual: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, (num_classes,)."""
        return self.logits.softmax(0)


def request_options(options: Mapping[str, object] | None, eigen_smooth: bool) -> dict[str, object]:
    """A request's method options with its ``eigen_smooth`` flag (given either way) folded in."""
    options = dict(options or {})
    options["eigen_smooth"] = bool(eigen_smooth or options.get("eigen_smooth"))
    return options


def check_methods(methods: Sequence[str]) -> list[str]:
    """The requested method names, deduplicated in order.

    Raises:
        MethodError: no method, or an unknown one.
    """
    names = list(dict.fromkeys(methods))
    if not names:
        raise MethodError("Choose at least one method.")
    for name in names:
        get_method(name)
    return names


def collect(
    evidence: Evidence, methods: Sequence[str], layer: str, index: int = 0, seconds: float = 0.0
) -> Explanation:
    """The `Explanation` of the ``index``-th target of ``evidence`` at ``layer``.

    Maps already computed for other targets or layers of the same evidence are reused.
    """
    raw, maps = {}, {}
    for name in methods:
        raw_k, map_k = evidence.result(name, layer)
        raw[name], maps[name] = raw_k[index], map_k[index]
    return Explanation(
        target=int(evidence.targets[index]),
        logits=evidence.logits.detach().float().cpu(),
        maps=maps,
        raw=raw,
        layer=layer,
        counterfactual=evidence.counterfactual,
        seconds=seconds,
        device=str(evidence.device),
        extras=dict(evidence.extras),
    )


def explain(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    methods: Sequence[str],
    target: int | None = None,
    counterfactual: bool = False,
    *,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    options: Mapping[str, object] | None = None,
) -> Explanation:
    """Explain the model's score for one class on one image with several methods.

    All gradient methods share one forward pass and one backward pass that stops at `layer`.

    Args:
        model: a classifier in eval mode (any `nn.Module` returning (1, num_classes) scores);
            never modified, safe to share between threads.
        x: the preprocessed image, (1, 3, H, W).
        layer: a module name from `model.named_modules()` whose output is (1, C, h, w).
        methods: names from `METHODS`.
        target: the class index to explain; None explains the predicted top-1 class.
        counterfactual: explain what lowers the score (negated gradients).
        aug_smooth: average each CAM over horizontal flips and pixel-value scales of the
            input, mapped back (`explainers.methods.smooth`); six times the passes.
        eigen_smooth: replace each CAM's channel sum by the first principal component of
            the weighted activations (`explainers.methods.smooth.eigen_projection`).
        options: method options, e.g. Score-CAM's ``max_channels``, ``batch_size``,
            ``progress`` and ``scoring`` (`explainers.methods.score`).

    Returns:
        An `Explanation` with one map per method.

    Raises:
        ExplainerInputError (and subclasses): unknown method or layer, a layer that is not a
            feature map, a target out of range, a method that does not apply to the model.
    """
    start = time.perf_counter()
    names = check_methods(methods)
    options = request_options(options, eigen_smooth)
    targets = None if target is None else [target]
    if aug_smooth:
        from explainers.methods.smooth import explain_augmented  # imports this module

        return explain_augmented(model, x, layer, names, targets, counterfactual, options, start)
    evidence = Evidence(model, x, [layer], targets, counterfactual, options=options)
    evidence.prepare(names, layer)
    for name in names:  # the passes are lazy: run them all before reading the clock
        evidence.result(name, layer)
    return collect(evidence, names, layer, seconds=elapsed(start, evidence.device))


def elapsed(start: float, device: torch.device) -> float:
    """Seconds since ``start`` once the device has finished its queued work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
