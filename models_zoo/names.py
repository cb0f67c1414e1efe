"""Display names of the zoo's models and of target layers: what the pages show instead of the
registry keys and module names (`bias_demo_biased` -> "Bias demo · biased", `_bn1` -> "bn1").

    >>> display_name("efficientnet_lite0"), display_name("resnext50_32x4d"), display_name("vgg16_bn")
    ('EfficientNet-Lite0', 'ResNeXt-50 32x4d', 'VGG-16 BN')
"""

from __future__ import annotations

import re

_FIXED = {
    "efficientnet_lite0": "EfficientNet-Lite0",
    "bias_demo_biased": "Bias demo · biased",
    "bias_demo_unbiased": "Bias demo · unbiased",
    "alexnet": "AlexNet",
    "googlenet": "GoogLeNet",
    "inception_v3": "Inception v3",
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3_large": "MobileNetV3 Large",
    "mobilenet_v3_small": "MobileNetV3 Small",
    "wide_resnet50_2": "Wide ResNet-50-2",
    "wide_resnet101_2": "Wide ResNet-101-2",
}
# family prefix -> (display, joiner before the size): "resnet50" -> "ResNet-50".
_FAMILIES = (
    ("resnext", "ResNeXt", "-"),
    ("resnet", "ResNet", "-"),
    ("densenet", "DenseNet", "-"),
    ("vgg", "VGG", "-"),
    ("efficientnet_v2_", "EfficientNetV2", "-"),
    ("efficientnet_", "EfficientNet", "-"),
    ("convnext_", "ConvNeXt", " "),
    ("regnet_x_", "RegNetX", " "),
    ("regnet_y_", "RegNetY", " "),
    ("mnasnet", "MNASNet", " "),
    ("shufflenet_v2_", "ShuffleNetV2", " "),
    ("squeezenet", "SqueezeNet", " "),
    ("vit_", "ViT", "-"),
    ("swin_v2_", "Swin V2", "-"),
    ("swin_", "Swin", "-"),
    ("maxvit_", "MaxViT", "-"),
)


def _size(rest: str) -> str:
    """The size part of a torchvision name: "1_0" -> "1.0", "50_32x4d" -> "50 32x4d", "bn" -> "BN"."""
    rest = re.sub(r"(?<=\d)_(?=\d(?!\d*x))", ".", rest)  # 1_0 -> 1.0, 1_6gf -> 1.6gf, not 50_32x4d
    parts = [part.upper() if part in ("bn", "s", "m", "l") or re.fullmatch(r"b\d", part) else part
             for part in rest.split("_")]  # fmt: skip
    parts = [part.upper() if re.fullmatch(r"[\d.]+(gf|mf)", part) else part for part in parts]
    return " ".join(part.capitalize() if part.isalpha() and part.islower() else part for part in parts)


def display_name(name: str) -> str:
    """A model's display name from its registry key ("resnet18 (custom)", a custom model's name,
    reads "ResNet-18 (custom)"); a name of no known family comes back as is."""
    if name in _FIXED:
        return _FIXED[name]
    for prefix, title, joiner in _FAMILIES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return f"{title}{joiner}{_size(name[len(prefix) :])}"
    return name


def layer_name(layer: str) -> str:
    """A target as a reader would write it: no leading underscores (EfficientNet's packages mark
    every module private), dots read as " › " (``_blocks.15`` -> "blocks › 15"), ``final`` reads
    "final feature map" and ``_bn1:relu`` "bn1 (rectified)"."""
    if layer == "final":
        return "final feature map"
    module, _, part = layer.rpartition(":") if ":" in layer else (layer, "", "")
    suffix = {"relu": " (rectified)", "input": " (input)"}.get(part, "")
    return " › ".join(p.lstrip("_") or p for p in (module or layer).split(".")) + suffix
