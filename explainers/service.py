"""What the app calls: read an image, predict, explain, and turn results into pictures and files.

Computing (a forward and backward pass, seconds on a CPU) and rendering (blending a map over
the image, milliseconds) are separate calls: `run_explanation` returns plain numpy arrays that
can be cached and pickled, and `render_panel` draws them with any colormap and opacity, so a
display change never recomputes. Nothing here imports Streamlit.
"""

from __future__ import annotations

import io
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from explainers.core import METHODS, Evidence, get_method
from explainers.errors import ExplainerInputError, MethodError
from explainers.guided import guided_to_image
from explainers.images import content_hash, load_image
from explainers.render import overlay, to_numpy
from models_zoo import ZooModel

# Models see crops of a few hundred pixels; a larger working copy only costs memory and time.
MAX_WORKING_SIDE = 1024

# What a first-time visitor sees: the classic trio of CAMs and the two best-known guided maps.
DEFAULT_METHODS = ("gradcam", "gradcam++", "layercam", "guided_backprop", "guided_gradcam")

__all__ = [
    "DEFAULT_METHODS",
    "ExplanationResult",
    "Prediction",
    "content_hash",
    "default_methods",
    "device_name",
    "inspect_values",
    "method_options",
    "method_title",
    "predict",
    "prepare_image",
    "render_panel",
    "run_explanation",
    "to_npy",
    "to_npz",
    "to_png",
]


class Prediction(NamedTuple):
    """One class the model predicts, with its softmax probability."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class ExplanationResult:
    """One explanation, CPU numpy only (picklable, cacheable).

    Attributes:
        model: the model's registry name.
        layer: the target layer.
        target: the explained class index.
        target_label: its class name.
        target_probability: its softmax probability on the image.
        counterfactual: whether the gradients were negated.
        image: the crop the model saw, (H, W, 3) uint8.
        top: the five most probable classes, most probable first.
        maps: method -> shown map at the input's resolution: (H, W) in [0, 1] for kind "cam",
            the raw input gradient (H, W, 3) for kind "guided".
        raw: method -> the map at the layer's resolution before normalisation.
        errors: method -> why it does not apply here (e.g. CAM at a layer not followed by GAP).
        seconds: wall time of the computation.
        device: where it ran, "CPU" or the GPU's name.
    """

    model: str
    layer: str
    target: int
    target_label: str
    target_probability: float
    counterfactual: bool
    image: np.ndarray
    top: list[Prediction]
    maps: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "CPU"

    def kind(self, method: str) -> str:
        """How a method's map is shown: "cam" (a heat map) or "guided" (an RGB gradient)."""
        return METHODS[method].kind

    def methods(self, kind: str) -> list[str]:
        """The computed methods of one kind ("cam" or "guided"), in the order asked."""
        return [name for name in self.maps if self.kind(name) == kind]

    def caption(self, method: str) -> str:
        """Names the method, class and probability, e.g. "Grad-CAM · tabby · 45.2%"."""
        text = f"{method_title(method)} · {self.target_label} · {self.target_probability:.1%}"
        return f"{text} · counterfactual" if self.counterfactual else text


# Hooks are registered on the shared model for the duration of one pass; a per-model lock keeps
# a second session's pass from iterating the hook table while it is being changed.
_locks: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _model_lock(model: nn.Module) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(model, threading.Lock())


def prepare_image(source: bytes) -> Image.Image:
    """Decode an uploaded or bundled image to RGB, at most `MAX_WORKING_SIDE` on its long side.

    Raises:
        ImageError: corrupt, not an image, too many pixels (checked before decoding), too small.
    """
    image = load_image(source)
    image.thumbnail((MAX_WORKING_SIDE, MAX_WORKING_SIDE), Image.Resampling.LANCZOS)
    return image


def device_name(device: torch.device | str) -> str:
    """The device's display name: "CPU", or the GPU's name for a CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type.upper()


def method_title(name: str) -> str:
    """A method's display name, e.g. "Grad-CAM++"."""
    return get_method(name).title or name


def method_options() -> list[str]:
    """Every registered method, the CAM family first, then the guided maps."""
    order = {"cam": 0, "guided": 1}
    return sorted(METHODS, key=lambda name: order.get(METHODS[name].kind, 2))


def default_methods() -> list[str]:
    """The methods a first-time visitor sees, those of `DEFAULT_METHODS` that are registered."""
    return [name for name in DEFAULT_METHODS if name in METHODS]


def _top(probabilities: torch.Tensor, labels: Sequence[str], k: int = 5) -> list[Prediction]:
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [Prediction(int(i), labels[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]


def predict(zoo_model: ZooModel, image: Image.Image, k: int = 5) -> list[Prediction]:
    """The k most probable classes for an image: one forward pass, no gradients."""
    x = zoo_model.preprocess(image).to(zoo_model.device)
    with _model_lock(zoo_model.model), torch.no_grad():
        logits = zoo_model.model(x)[0].float().cpu()
    return _top(logits.softmax(0), zoo_model.labels, k)


def run_explanation(
    zoo_model: ZooModel,
    image: Image.Image,
    layer: str,
    methods: Sequence[str],
    target: int | None = None,
    counterfactual: bool = False,
) -> ExplanationResult:
    """Explain one class of one image with several methods, sharing their passes.

    A method that does not apply (CAM away from a GAP + linear head) is reported in
    `errors` instead of failing the others.

    Args:
        zoo_model: a loaded model from `models_zoo.load_model`.
        image: any RGB PIL image; it is resized and cropped as the model expects.
        layer: a layer name from `zoo_model.layers()`.
        methods: names from `METHODS`.
        target: the class to explain; None explains the predicted class.
        counterfactual: explain what lowers the class score.

    Raises:
        ExplainerInputError: no method chosen, an unknown method or layer, a class out of range.
    """
    names = list(dict.fromkeys(methods))
    if not names:
        raise MethodError("Choose at least one method.")
    for name in names:
        get_method(name)
    start = time.perf_counter()
    crop = np.asarray(zoo_model.preprocess.crop_image(image), dtype=np.uint8)
    x = zoo_model.preprocess(image)
    targets = None if target is None else [target]
    maps: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    with _model_lock(zoo_model.model):
        evidence = Evidence(zoo_model.model, x, [layer], targets, counterfactual)
        for name in names:
            try:
                raw_k, map_k = evidence.result(name, layer)
            except MethodError as error:
                errors[name] = str(error)
                continue
            raw[name], maps[name] = to_numpy(raw_k[0]), to_numpy(map_k[0])
        probabilities = evidence.logits.detach().float().cpu().softmax(0)
        chosen = int(evidence.targets[0])
    return ExplanationResult(
        model=zoo_model.name,
        layer=layer,
        target=chosen,
        target_label=zoo_model.labels[chosen],
        target_probability=float(probabilities[chosen]),
        counterfactual=counterfactual,
        image=crop,
        top=_top(probabilities, zoo_model.labels),
        maps=maps,
        raw=raw,
        errors=errors,
        seconds=time.perf_counter() - start,
        device=device_name(evidence.device),
    )


def render_panel(
    result: ExplanationResult, method: str, colormap: str = "jet", opacity: float = 0.5
) -> np.ndarray:
    """The picture of one method's map: a heat-map overlay for a CAM, the guided map itself.

    Returns:
        (H, W, 3) uint8.
    """
    if result.kind(method) == "guided":
        return guided_to_image(result.maps[method])
    return overlay(result.image, result.maps[method], colormap, opacity)


def inspect_values(result: ExplanationResult, method: str) -> np.ndarray:
    """Per-pixel values to inspect, (H, W): the CAM itself, or a guided map's gradient size
    (the largest absolute value over the colour channels, scaled to [0, 1])."""
    values = result.maps[method]
    if values.ndim == 3:
        values = np.abs(values).max(axis=2)
        peak = values.max()
        values = values / peak if peak > 0 else values
    return values.astype(np.float32)


def to_png(image: np.ndarray) -> bytes:
    """An RGB uint8 image (H, W, 3) as PNG bytes."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ExplainerInputError("Could not encode the image as PNG.")
    return encoded.tobytes()


def to_npy(array: np.ndarray) -> bytes:
    """An array in NumPy's .npy format, for `np.load`."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def to_npz(result: ExplanationResult) -> bytes:
    """Every map of a result in one .npz: `<method>` at input resolution, `<method>_raw` at the
    layer's resolution, and `image`, the crop the model saw."""
    arrays = {"image": result.image}
    for name in result.maps:
        arrays[name] = result.maps[name]
        arrays[f"{name}_raw"] = result.raw[name]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()
