"""Explain many images at once: shared batched passes, each image's maps exactly as `explain` gives them.

A batch of N images costs one forward pass capturing the layer and one backward pass to it: the
gradient of sum_i y^{c_i}(x_i) with respect to the captured (N, C, h, w) activations is, row by
row, each image's own gradient, since the images of a batch do not interact in eval mode. Each
image then gets an `Evidence` whose forward pass, targets and gradients are its share of the
batch's (`ImageEvidence`), and the registered methods' `Method.compute` runs on it unchanged, so
every method, including ones added later, gives the map `explain` would. A method with passes of
its own may batch them too (`Method.prepare_batch`: the guided family's rectified backward);
one that does not (Score-CAM, its own many-pass method) runs them per image, with the same result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TypeVar

import torch
from torch import nn

from explainers.errors import ExplainerInputError, TargetError
from explainers.methods.capture import Captured, model_device
from explainers.methods.core import (
    Evidence,
    Explanation,
    LendsForward,
    capture_forward,
    check_methods,
    collect,
    elapsed,
    get_method,
    request_options,
)

T = TypeVar("T")

# Images per batched pass when the options give no ``batch_size``. On two loaded CPU cores a
# forward pass of EfficientNet-Lite0 at 224 x 224 costs the least per image at 4-8 images (36
# CPU-ms at 8, 42 at 16, 59 at 32: larger batches leave the caches); ResNets gain little beyond.
# On a GPU a mid-layer backward holds the rest of the network's activations for the whole batch.
CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 64


class BatchEvidence(LendsForward):
    """The shared passes of a batch of images: one forward, one backward, methods' batch passes.

    Args:
        model: a classifier in eval mode; never modified.
        x: the images, (n, channels, H, W), preprocessed.
        layer: the target layer (see `Evidence`).
        targets: per image, a class index or None (that image's top-1 class).
        counterfactual: negate the gradients (Grad-CAM paper, section 5.2).
        options: method options (see `explain`); every image's evidence reads them.
        first: the index of the batch's first image among the caller's images (for messages).
    """

    _forward_name = "forward"

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        layer: str,
        targets: Sequence[int | None],
        counterfactual: bool = False,
        options: Mapping[str, object] | None = None,
        first: int = 0,
    ) -> None:
        if model.training:
            raise ExplainerInputError(
                "The model is in training mode; call model.eval() first (a training-mode "
                "forward pass would update its BatchNorm statistics)."
            )
        if x.ndim != 4 or x.shape[0] < 1:
            raise ExplainerInputError(f"Expected images of shape (N, channels, H, W), got {tuple(x.shape)}.")
        if len(targets) != x.shape[0]:
            raise ExplainerInputError(f"{len(targets)} targets for {x.shape[0]} images.")
        self.model = model
        self.device = model_device(model)
        self.x = x.to(self.device, torch.float32)
        self.layer = layer
        self.requested = list(targets)
        self.counterfactual = counterfactual
        self.options: dict[str, object] = dict(options or {})
        self.first = first
        self._memo: dict[str, object] = {}

    @cached_property
    def forward(self) -> tuple[torch.Tensor, Captured]:
        """(logits (n, num_classes), the captured layer): one forward pass for the batch."""
        if self.shared_forward is not None:
            logits, captured = self.shared_forward()
        else:
            logits, captured = capture_forward(self.model, self.x, [self.layer])
        return logits, captured[self.layer]

    @property
    def logits(self) -> torch.Tensor:
        """(n, num_classes), with autograd history to the layer."""
        return self.forward[0]

    @cached_property
    def targets(self) -> torch.Tensor:
        """Each image's explained class, (n,), on the model's device.

        Raises:
            TargetError: a requested class is out of range; the message names the image.
        """
        logits = self.logits.detach()
        check_targets(self.requested, logits.shape[1], self.first)
        top1 = logits.topk(1, dim=1).indices[:, 0].tolist()  # as `Evidence.targets` picks it
        chosen = [top if t is None else int(t) for t, top in zip(self.requested, top1)]
        return torch.tensor(chosen, device=self.device)

    @cached_property
    def gradients(self) -> torch.Tensor:
        """d y^{c_i} / d A_i for every image i, as the captured tensor (n, ...); negated when
        counterfactual. One backward pass for the whole batch."""
        logits, captured = self.forward
        rows = torch.arange(logits.shape[0], device=logits.device)
        with self.layer_backward() as keep_graph:
            score = logits[rows, self.targets].sum()
            (grads,) = torch.autograd.grad(score, [captured.tensor], retain_graph=keep_graph)
        return -grads if self.counterfactual else grads

    @cached_property
    def views(self) -> list[ImageEvidence]:
        """Each image's `Evidence`, fed from the batch's passes."""
        return [ImageEvidence(self, i) for i in range(self.x.shape[0])]

    def release(self) -> None:
        """Drop the batch's passes and views once the results are collected. The views and the
        batch reference each other, a cycle that only the garbage collector frees, and the forward
        pass holds the autograd graph of the whole batch (tens of MB): the app runs no collection
        after each script run (`.streamlit/config.toml`), so without this they outlive the request."""
        for name in ("views", "forward", "gradients", "targets"):
            self.__dict__.pop(name, None)
        self._memo.clear()
        self.shared_forward = None

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """Run ``compute`` once per batch and keep its value (a method family's batched pass)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def share(self, key: str, value_of: Callable[[int], object]) -> None:
        """Hand each image's evidence its share of a batched pass: ``value_of(i)`` becomes what
        ``views[i].memo(key, ...)`` returns, so `Method.compute` finds it instead of running
        the pass for that image alone. Lazy: nothing runs until a view asks."""
        for i, view in enumerate(self.views):
            view.shares[key] = lambda i=i: value_of(i)


class ImageEvidence(Evidence):
    """Image ``index`` of a `BatchEvidence`: an `Evidence` whose forward pass, targets and
    gradients are its rows of the batch's. Everything else (method results, a method's own
    passes) is computed per image, on this image alone, as `Evidence` does.

    Its ``logits`` carry no autograd history: a method needing a backward pass beyond
    `Evidence.gradients` runs it in `Method.prepare_batch`, or on its own pass (Score-CAM's).
    """

    def __init__(self, batch: BatchEvidence, index: int) -> None:
        requested = batch.requested[index]
        super().__init__(
            batch.model,
            batch.x[index : index + 1],
            [batch.layer],
            None if requested is None else [requested],
            batch.counterfactual,
            options=batch.options,
        )
        self.batch = batch
        self.index = index
        self.shares: dict[str, Callable[[], object]] = {}  # memo keys the batch computes (`share`)

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        return super().memo(key, self.shares.get(key, compute))

    @cached_property
    def _forward(self) -> tuple[torch.Tensor, dict[str, Captured]]:
        logits, captured = self.batch.forward
        i = self.index
        # Copies, so that what an `Explanation` keeps does not hold the whole batch's tensors.
        mine = Captured(captured.tensor.detach()[i : i + 1], captured.view)
        return logits.detach()[i : i + 1].clone(), {self.batch.layer: mine}

    @cached_property
    def targets(self) -> torch.Tensor:
        return self.batch.targets[self.index : self.index + 1]

    @cached_property
    def _gradients(self) -> dict[str, torch.Tensor]:
        captured = self.batch.forward[1]
        i = self.index
        return {self.batch.layer: captured.view(self.batch.gradients[i : i + 1])}


def check_targets(targets: Sequence[int | None], num_classes: int, first: int = 0) -> None:
    """Raise `TargetError` naming the first image whose requested class is out of range."""
    for index, target in enumerate(targets, start=first):
        if target is not None and not 0 <= int(target) < num_classes:
            raise TargetError(
                f"Image {index}: class {target} is out of range: the model has {num_classes} "
                f"classes (0 to {num_classes - 1})."
            )


def batch_size_option(options: Mapping[str, object], device: torch.device) -> int:
    """``options["batch_size"]``, or the device's default (`CPU_BATCH_SIZE`, `GPU_BATCH_SIZE`).

    Raises:
        ExplainerInputError: not a positive integer.
    """
    value = options.get("batch_size")
    if value is None:
        return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExplainerInputError(f"batch_size must be a positive integer, got {value!r}.")
    return value


def explain_batch(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    methods: Sequence[str],
    targets: Sequence[int | None] | None = None,
    counterfactual: bool = False,
    *,
    eigen_smooth: bool = False,
    options: Mapping[str, object] | None = None,
) -> list[Explanation]:
    """`explain` for each of N images, from shared batched passes.

    The images go through the model in batches of ``options["batch_size"]``: per batch, one
    forward pass capturing ``layer`` and one backward pass to it serve every gradient CAM of
    every image; the guided maps add one backward per ReLU rule for the batch, on the same
    forward pass (recorded from the input when a guided map is asked for).
    Score-CAM scores its masked inputs per image, as `explain` does (it is its own many-pass
    method). Each result equals ``explain(model, x[i:i+1], layer, methods, targets[i], ...)``
    up to floating-point rounding of batched kernels (1e-5 in the tests).

    The images must not interact inside the model (true of any classifier in eval mode:
    BatchNorm uses its running statistics).

    Args:
        model: a classifier in eval mode; never modified, safe to share between threads.
        x: the preprocessed images, (N, channels, H, W), on any device.
        layer: the target layer, as for `explain`.
        methods: names from `METHODS`.
        targets: per image, the class to explain or None (its top-1); None: every image's top-1.
        counterfactual: explain what lowers each score (negated gradients).
        eigen_smooth: as for `explain`.
        options: method options, as for `explain`; ``batch_size`` is the number of images per
            forward pass, here and in the methods' own passes (Score-CAM's masked images);
            default 8 on a CPU, 64 on a GPU.

    Returns:
        One `Explanation` per image, in order; ``seconds`` is each image's share of its
        batch's time.

    Raises:
        ExplainerInputError (and subclasses): as `explain`; a `TargetError` names the image.
    """
    names = check_methods(methods)
    options = request_options(options, eigen_smooth)
    if x.ndim != 4:
        raise ExplainerInputError(f"Expected images of shape (N, channels, H, W), got {tuple(x.shape)}.")
    count = x.shape[0]
    requested = [None] * count if targets is None else list(targets)
    if len(requested) != count:
        raise ExplainerInputError(f"{len(requested)} targets for {count} images; give one per image.")
    if model.training:
        raise ExplainerInputError(
            "The model is in training mode; call model.eval() first (a training-mode "
            "forward pass would update its BatchNorm statistics)."
        )
    size = batch_size_option(options, model_device(model))
    results: list[Explanation] = []
    for first in range(0, count, size):
        start = time.perf_counter()
        batch = BatchEvidence(model, x[first : first + size], layer, requested[first : first + size],
                              counterfactual, options, first)  # fmt: skip
        try:
            for name in names:
                get_method(name).prepare_batch(batch, layer)
            if first == 0:  # every image's class is checked before any work beyond one forward pass
                check_targets(requested, batch.logits.shape[1])
            for view in batch.views:  # the passes are lazy: run them all before reading the clock
                for name in names:
                    view.result(name, layer)
            seconds = elapsed(start, batch.device) / len(batch.views)
            results += [collect(view, names, layer, seconds=seconds) for view in batch.views]
        finally:
            batch.release()
    return results
