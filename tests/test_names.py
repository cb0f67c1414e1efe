"""Display names: every zoo model gets a readable, unique name; layers lose their code marks."""

from __future__ import annotations

import pytest

from models_zoo import list_zoo
from models_zoo.names import display_name, layer_name


@pytest.mark.parametrize(
    "name, shown",
    [
        ("efficientnet_lite0", "EfficientNet-Lite0"),
        ("bias_demo_biased", "Bias demo · biased"),
        ("resnet18", "ResNet-18"),
        ("resnext50_32x4d", "ResNeXt-50 32x4d"),
        ("wide_resnet50_2", "Wide ResNet-50-2"),
        ("vgg16_bn", "VGG-16 BN"),
        ("efficientnet_b0", "EfficientNet-B0"),
        ("efficientnet_v2_s", "EfficientNetV2-S"),
        ("convnext_tiny", "ConvNeXt Tiny"),
        ("regnet_y_1_6gf", "RegNetY 1.6GF"),
        ("mnasnet1_0", "MNASNet 1.0"),
        ("shufflenet_v2_x1_0", "ShuffleNetV2 x1.0"),
        ("mobilenet_v3_large", "MobileNetV3 Large"),
        ("resnet18 (custom)", "ResNet-18 (custom)"),
        ("my model", "my model"),
    ],
)
def test_display_name(name, shown):
    assert display_name(name) == shown


def test_every_zoo_model_has_its_own_display_name_without_underscores():
    names = [display_name(name) for name in list_zoo()]
    assert len(set(names)) == len(names)
    assert not any("_" in name for name in names)


def test_layer_name():
    assert layer_name("_bn1") == "bn1"
    assert layer_name("_blocks.15") == "blocks › 15"
    assert layer_name("layer4.1.conv2") == "layer4 › 1 › conv2"
