"""The guided family: guided backprop, deconvnet and guided Grad-CAM(++), from one rectified pass.

Guided backprop and deconvnet are the gradient of the class score y^c with respect to the input,
with a different backward rule at every ReLU (R is the gradient arriving from above, x the
ReLU's forward input):

    plain gradient    R * [x > 0]
    deconvnet         max(R, 0)                (Zeiler & Fergus, arXiv 1311.2901)
    guided backprop   max(R, 0) * [x > 0]      (Springenberg et al., arXiv 1412.6806)

It is one mechanism with a flag, as in Captum and zennit. Here it is a custom autograd
Function put in place of every ReLU call by a `TorchFunctionMode`, active only around this
request's forward pass: the mode stack is thread-local, so concurrent requests on the shared
model see plain ReLUs, no module is swapped and no hook is registered. Because the mode sees
calls rather than modules, `nn.ReLU` (in-place, or one instance called several times),
`nn.ReLU6`, `F.relu`, `torch.relu_` and `Tensor.relu` in a model's `forward` are all covered.
The rule is read when the backward pass runs, so one recorded forward serves both rules, and
also the CAMs: asked together with a CAM, the family records its pass with the layer captured
and lends it to the layer gradients (`RectifiedPass`), which are taken under the plain rule, so
a request showing CAMs and guided maps costs one forward pass, not two.

ReLU6 is ReLU followed by a clip at 6; the clip is not a ReLU and keeps its plain gradient
[x < 6] under both rules. Models with other activations (SiLU, GELU, Hardswish...) are refused:
the rules are not defined for them, and the map would silently mix rules. Gates such as the
sigmoid of squeeze-and-excitation blocks keep their plain gradient, as in Captum. Not seen:
TorchScript models (refused), and ReLUs written as `clamp(min=0)` or `maximum` (plain gradient).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from explainers.errors import MethodError
from explainers.methods.capture import Captured
from explainers.methods.core import Evidence, Method, batched_grad, capture_forward, register
from models_zoo.targets import RELU_CALLS

if TYPE_CHECKING:
    from explainers.methods.batch import BatchEvidence


@dataclass
class _Rule:
    """The backward rule of one guided pass's ReLUs, read when the backward runs."""

    mask_by_input: bool = True  # guided backprop; False: deconvnet
    rectify: bool = True  # keep max(R, 0); False with mask_by_input: the plain gradient R [x > 0]


class _RectifiedReLU(torch.autograd.Function):
    """min(max(x, 0), upper) whose backward is the guided or deconvnet rule of `_Rule`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: float | None, inplace: bool, rule: _Rule) -> torch.Tensor:
        # Masks, not x, are kept: x or the output may legally be modified in place later.
        ctx.rule = rule
        ctx.positive = x > 0
        ctx.below_upper = None if upper is None else x < upper
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(0, upper)
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.rule.rectify:
            grad = grad.clamp(min=0)
        if ctx.rule.mask_by_input:
            grad = grad * ctx.positive
        if ctx.below_upper is not None:
            grad = grad * ctx.below_upper
        return grad, None, None, None


# Activations without a guided rule; seeing one makes the pass refuse the model (ATen operators
# for exported programs).
_ATEN = torch.ops.aten
_UNSUPPORTED = {
    _ATEN.gelu.default, _ATEN.silu.default, _ATEN.silu_.default, _ATEN.hardswish.default,
    _ATEN.hardswish_.default, _ATEN.mish.default, _ATEN.elu.default, _ATEN.leaky_relu.default,
    _ATEN.prelu.default, _ATEN.softplus.default,
    F.silu, F.gelu, F.hardswish, F.mish, F.elu, F.elu_, F.selu, F.selu_, F.celu, F.celu_,
    F.leaky_relu, F.leaky_relu_, F.prelu, F.rrelu, F.rrelu_, F.softplus, F.threshold, F.threshold_,
}  # fmt: skip


class _RectifyReLUs(TorchFunctionMode):
    """Inside the block, this thread's ReLU calls become `_RectifiedReLU` with one shared rule."""

    def __init__(self, rule: _Rule) -> None:
        super().__init__()
        self.rule = rule
        self.rectified = 0  # ReLU calls replaced
        self.unsupported: set[str] = set()  # names of activations met that have no rule

    def __torch_function__(
        self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        parse = RELU_CALLS.get(func)
        if parse is not None:
            call = parse(*args, **kwargs)
            if call is not None:
                self.rectified += 1
                return _RectifiedReLU.apply(*call, self.rule)
        if parse is not None or func in _UNSUPPORTED:
            self.unsupported.add(func.__name__)
        return func(*args, **kwargs)


# Models the family has refused, with why: a later request is refused without a pass of its own.
_REFUSED: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def _refusal(model: torch.nn.Module, mode: _RectifyReLUs | None = None) -> MethodError | None:
    """Why the family cannot explain ``model`` (after a pass: as ``mode`` saw it), or None."""
    if model in _REFUSED:
        return MethodError(_REFUSED[model])
    if any(isinstance(module, torch.jit.ScriptModule) for module in model.modules()):
        return MethodError(
            "Guided backprop and deconvnet cannot see the ReLUs inside a TorchScript model; "
            "use the model's Python version, or a CAM method."
        )
    if mode is None:
        return None
    if mode.unsupported:
        message = (
            "Guided backprop and deconvnet are defined for ReLU networks, but this model also uses "
            f"{', '.join(sorted(mode.unsupported))}, for which they have no rule: the map would be "
            "wrong. Use a CAM method, or a ReLU model (ResNet, VGG, EfficientNet-Lite)."
        )
    elif not mode.rectified:
        message = (
            "No ReLU ran in the model's forward pass, so guided backprop and deconvnet would show "
            "the plain gradient. Use a CAM method, or a ReLU model (ResNet, VGG, EfficientNet-Lite)."
        )
    else:
        return None
    _REFUSED[model] = message
    return MethodError(message)


def _record(
    model: torch.nn.Module, x: torch.Tensor, layers: Sequence[str] = ()
) -> tuple[torch.Tensor, torch.Tensor, _Rule, dict[str, Captured], MethodError | None]:
    """The guided forward pass, capturing ``layers``: (logits, input leaf, rule, captures, why the
    family refuses the model or None). A refused pass is still a valid forward pass of the model."""
    x = x.detach().requires_grad_(True)  # gradients go to the input only, not to parameters
    rule = _Rule()
    mode = _RectifyReLUs(rule)
    logits, captured = capture_forward(model, x, layers, around=mode)
    return logits, x, rule, captured, _refusal(model, mode)


def rectified_forward(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _Rule]:
    """The guided forward pass of images x (N, C, H, W): (logits (N, classes), the input leaf, the
    pass's rule), recorded for a backward to the input alone.

    Raises:
        MethodError: a TorchScript model, an activation without a guided rule, or no ReLU at all.
    """
    refusal = _refusal(model)
    if refusal is None:
        logits, x, rule, _, refusal = _record(model, x)
    if refusal is not None:
        raise refusal
    return logits, x, rule


class RectifiedPass:
    """The family's forward pass with the target layers captured, lent to the layer gradients
    (`explainers.methods.core.SharedForward`): the CAMs' backward to the layer and the family's
    backward to the input then share one forward pass.

    The pass records the whole network from the input, which costs more than the CAMs' own pass
    (it records only after the layer), so it is lent only when a guided map is asked for too.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, layers: Sequence[str]) -> None:
        self.model = model
        self.x = x
        self.layers = list(layers)
        self.rule: _Rule | None = None  # set by the pass
        self._recorded: tuple[torch.Tensor, torch.Tensor] | MethodError | None = None  # (logits, input leaf)

    def __call__(self) -> tuple[torch.Tensor, dict[str, Captured]]:
        logits, x, self.rule, captured, refusal = _record(self.model, self.x, self.layers)
        self._recorded = refusal or (logits, x)
        return logits, captured

    @contextmanager
    def plain_gradients(self) -> Iterator[None]:
        rule = self.rule
        if rule is None:  # the pass has not run
            yield
            return
        saved = rule.rectify, rule.mask_by_input
        rule.rectify, rule.mask_by_input = False, True
        try:
            yield
        finally:
            rule.rectify, rule.mask_by_input = saved

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor, _Rule]:
        """(logits, input leaf, rule) of the pass, which has run.

        Raises:
            MethodError: the family refuses the model (see `rectified_forward`).
        """
        if isinstance(self._recorded, MethodError):
            raise MethodError(str(self._recorded))
        assert self._recorded is not None and self.rule is not None, "the shared forward pass has not run"
        return (*self._recorded, self.rule)


def _lend_forward(owner: Evidence | BatchEvidence, layers: Sequence[str]) -> None:
    """Record the owner's forward pass as a `RectifiedPass`, unless the model is refused."""
    if isinstance(owner.shared_forward, RectifiedPass) or _refusal(owner.model) is not None:
        return
    owner.share_forward(RectifiedPass(owner.model, owner.x, layers))


def _guided_pass(owner: Evidence | BatchEvidence) -> tuple[torch.Tensor, torch.Tensor, _Rule]:
    """(logits, input leaf, rule): the lent forward pass when there is one, else a pass of its own."""
    shared = owner.shared_forward
    if isinstance(shared, RectifiedPass):
        owner.logits  # noqa: B018  (runs the shared pass, if it has not run)
        return shared.recorded()
    return rectified_forward(owner.model, owner.x)


def _rectified_forward(evidence: Evidence) -> tuple[torch.Tensor, torch.Tensor, _Rule]:
    """The guided forward pass of one image: (target scores (k,), input leaf (1, 3, H, W), rule)."""
    logits, x, rule = _guided_pass(evidence)
    scores = logits[0, evidence.targets]
    # Counterfactual: the rectified gradient of -y^c, what lowers the class (as the CAMs' negated
    # gradients); the ReLU rules then keep the positive part of that signal, not of y^c's.
    return (-scores if evidence.counterfactual else scores), x, rule


def _rule_key(mask_by_input: bool) -> str:
    """The `Evidence.memo` key of one rule's input gradients."""
    return f"guided:mask_by_input={mask_by_input}"


def rectified_input_gradients(evidence: Evidence, mask_by_input: bool) -> torch.Tensor:
    """d y^c / d x under the guided (mask_by_input) or deconvnet ReLU rule, (k, H, W, 3);
    d(-y^c) / d x when the evidence is counterfactual.

    One forward pass per request serves both rules; one backward per rule, batched over the
    k target classes.
    """

    def backward() -> torch.Tensor:
        scores, x, rule = evidence.memo("guided:forward", lambda: _rectified_forward(evidence))
        rule.rectify, rule.mask_by_input = True, mask_by_input
        (grads,) = batched_grad(scores, [x], retain_graph=True)  # (k, 3, H, W)
        return grads.permute(0, 2, 3, 1).contiguous()

    return evidence.memo(_rule_key(mask_by_input), backward)


def _batch_rectified_gradients(batch: BatchEvidence, mask_by_input: bool) -> torch.Tensor:
    """`rectified_input_gradients` of every image of a batch from one forward pass and one
    backward per rule: (N, H, W, 3). Images are independent in eval mode, so the gradient of
    sum_i y^{c_i}(x_i) with respect to the batch is each image's own gradient."""

    def forward() -> tuple[torch.Tensor, torch.Tensor, _Rule]:
        logits, x, rule = _guided_pass(batch)
        scores = logits[torch.arange(logits.shape[0], device=logits.device), batch.targets]
        return (-scores if batch.counterfactual else scores), x, rule

    def backward() -> torch.Tensor:
        scores, x, rule = batch.memo("guided:forward", forward)
        rule.rectify, rule.mask_by_input = True, mask_by_input
        (grads,) = torch.autograd.grad(scores.sum(), [x], retain_graph=True)  # (N, 3, H, W)
        return grads.permute(0, 2, 3, 1)

    return batch.memo(_rule_key(mask_by_input), backward)


class RectifiedGradient(Method):
    """Base of the guided family: the rectified input gradient, optionally times a CAM.

    Maps are raw input-space gradients, (k, H, W, 3) float32, the same as raw; show them with
    `guided_to_image`. With counterfactual set they are the rectified gradients of -y^c (what
    lowers the class), and the guided CAMs multiply them by the counterfactual CAM map.
    """

    kind = "guided"
    mask_by_input: ClassVar[bool] = True
    cam: ClassVar[str | None] = None  # a CAM method whose upsampled map multiplies the gradient

    def prepare(self, evidence: Evidence, layer: str) -> None:
        _lend_forward(evidence, evidence.layers)

    def prepare_batch(self, batch: BatchEvidence, layer: str) -> None:
        _lend_forward(batch, [batch.layer])
        mask = self.mask_by_input
        batch.share(
            _rule_key(mask), lambda i: _batch_rectified_gradients(batch, mask)[i : i + 1].contiguous()
        )

    def compute(self, evidence: Evidence, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        grads = rectified_input_gradients(evidence, self.mask_by_input)  # (k, H, W, 3)
        if self.cam is not None:
            cam_map = evidence.result(self.cam, layer)[1]  # (k, H, W) in [0, 1]
            grads = grads * cam_map[..., None]
        return grads, grads


@register
class GuidedBackprop(RectifiedGradient):
    """Guided backprop, Springenberg et al. 2015 (arXiv 1412.6806): ReLU backward max(R, 0) [x > 0]."""

    name = "guided_backprop"
    title = "Guided backprop"


@register
class Deconvnet(RectifiedGradient):
    """Deconvnet, Zeiler & Fergus 2014 (arXiv 1311.2901): ReLU backward max(R, 0)."""

    name = "deconvnet"
    title = "Deconvnet"
    mask_by_input = False


@register
class GuidedGradCAM(RectifiedGradient):
    """Guided Grad-CAM, Selvaraju et al. (arXiv 1610.02391): guided backprop ⊙ upsampled Grad-CAM."""

    name = "guided_gradcam"
    title = "Guided Grad-CAM"
    reads_gradient = True
    cam = "gradcam"


@register
class GuidedGradCAMPlusPlus(RectifiedGradient):
    """Guided Grad-CAM++, Chattopadhyay et al. (arXiv 1710.11063): guided backprop ⊙ Grad-CAM++."""

    name = "guided_gradcam++"
    title = "Guided Grad-CAM++"
    reads_gradient = True
    cam = "gradcam++"


def guided_to_image(guided_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """The papers' display of a raw guided map as an RGB image.

    m -> clip(0.1 (m - mean(m)) / (std(m) + 1e-5) + 0.5, 0, 1), scaled to 0..255 and truncated,
    as in the Grad-CAM authors' code (and the `grad-cam` package's `deprocess_image`).

    Args:
        guided_map: a raw map from `Explanation.maps`, (H, W, 3).

    Returns:
        The image, (H, W, 3) uint8.
    """
    if isinstance(guided_map, np.ndarray) and not guided_map.flags.writeable:
        guided_map = guided_map.copy()  # a shared, read-only result: torch would warn
    m = torch.as_tensor(guided_map).detach().float()
    m = (m - m.mean()) / (m.std(correction=0) + 1e-5) * 0.1 + 0.5
    return (m.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
