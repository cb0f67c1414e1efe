"""models_zoo: the offline default, torchvision's registry, layers, and offline errors."""

from __future__ import annotations

import copy
import urllib.error

import pytest
import torch
from conftest import pearson
from PIL import Image

import models_zoo
from explainers import explain
from explainers.methods.core import Evidence
from explainers.services.samples import SAMPLES_DIR
from models_zoo import (
    DEFAULT_MODEL,
    FINAL,
    REGISTRY,
    ModelError,
    Preprocessing,
    WeightsUnavailableError,
    list_zoo,
    load_model,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def sample(name: str) -> Image.Image:
    return Image.open(SAMPLES_DIR / name).convert("RGB")


def probabilities(zoo, preprocessing: Preprocessing, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        return zoo.model(preprocessing(image)).softmax(-1)[0]


def test_offline_default_recognises_the_samples(lite0):
    cat = probabilities(lite0, lite0.preprocess, sample("chelsea.jpg"))
    coffee = probabilities(lite0, lite0.preprocess, sample("coffee.jpg"))
    assert int(cat.argmax()) in CAT_CLASSES
    assert int(coffee.argmax()) == ESPRESSO
    assert lite0.labels[ESPRESSO] == "espresso"


def test_offline_default_uses_its_training_preprocessing(lite0):
    """EfficientNet-Lite was trained on (x - 127) / 128 pixels; ImageNet statistics, the usual
    guess, make it clearly less sure of the right answers."""
    imagenet = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ours_coffee = probabilities(lite0, lite0.preprocess, sample("coffee.jpg"))[ESPRESSO]
    guess_coffee = probabilities(lite0, imagenet, sample("coffee.jpg"))[ESPRESSO]
    assert ours_coffee > guess_coffee + 0.05
    ours_cat = probabilities(lite0, lite0.preprocess, sample("chelsea.jpg"))[list(CAT_CLASSES)].sum()
    guess_cat = probabilities(lite0, imagenet, sample("chelsea.jpg"))[list(CAT_CLASSES)].sum()
    assert ours_cat > guess_cat


def test_zoo_model_contract(lite0):
    assert lite0.name == DEFAULT_MODEL
    assert not lite0.model.training
    assert not any(p.requires_grad for p in lite0.model.parameters())
    assert len(lite0.labels) == 1000
    x = lite0.preprocess(sample("rocket.jpg"))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert lite0.preprocess.crop_image(sample("rocket.jpg")).size == (224, 224)
    layers = lite0.layers()
    names = [layer.name for layer in layers]
    assert lite0.default_layer == "final" == names[0]
    assert layers[0].shape == (1280, 7, 7) and layers[0].label == "final feature map (1280×7×7)"
    assert layers[1].label.startswith("stage 4 · 14×14 — ")
    assert "_swish" not in names  # runs many times: ambiguous; its outputs are reached as "x:relu"
    assert "_bn1:relu" in names and "_blocks.15._bn0:relu" in names
    assert len(set(names)) == len(names)
    # After the final map and the stages, the module outputs run deepest first.
    modules_only = [layer for layer in layers if not layer.title]
    sizes = [layer.shape[1] for layer in modules_only]
    assert sizes == sorted(sizes)
    modules = dict(lite0.model.named_modules())
    assert all(name.removesuffix(":relu") in modules for name in names if name != "final")
    assert lite0.resolve_layer("stage 2") == lite0.resolve_layer("stage2") == lite0.stages()[1].name


def test_list_starts_with_the_offline_default_and_has_every_torchvision_classifier():
    names = list_zoo()
    assert names[0] == DEFAULT_MODEL
    assert {"resnet50", "densenet121", "vit_b_16", "swin_t", "swin_v2_b", "maxvit_t"} <= set(names)


def test_unknown_model_names_close_matches():
    with pytest.raises(ModelError, match="'resnet50'"):
        load_model("resnet5O")
    with pytest.raises(ValueError):
        load_model("resnet18", weights="imagenet")


def test_missing_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model("resnet18")
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "checkpoints") in message
    assert DEFAULT_MODEL in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "name, stages",
    [
        ("resnet50", ["relu", "layer1", "layer2", "layer3", FINAL]),
        ("vgg16", ["features.3", "features.8", "features.15", "features.22", "features.29", FINAL]),
        ("mobilenet_v3_small", None),
    ],
)
def test_random_weight_models_default_to_the_final_feature_map(name, stages):
    zoo = load_model(name, weights=None, device="cpu")
    assert zoo.default_layer == FINAL
    if stages is not None:
        assert [layer.name for layer in zoo.stages()] == stages
    x = torch.randn(1, 3, *zoo.input_size)
    result = explain(zoo.model, x, zoo.default_layer, ["gradcam"])
    assert result.maps["gradcam"].shape == zoo.input_size


# Families whose head pools the output of a ReLU (or ReLU6): their default must be rectified.
RECTIFYING = (
    "alexnet", "densenet", "googlenet", "inception", "mnasnet", "mobilenet_v2", "regnet", "resnet",
    "resnext", "shufflenet", "squeezenet", "vgg", "wide_resnet", DEFAULT_MODEL,
)  # fmt: skip
# Families that end in global average pooling and one linear layer: CAM applies at "final".
GAP_LINEAR = (
    "densenet", "efficientnet", "googlenet", "inception", "mnasnet", "mobilenet_v2", "regnet", "resnet",
    "resnext", "shufflenet", "swin", "wide_resnet",
)  # fmt: skip
GRADIENT_CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def with_random_head(zoo) -> torch.nn.Module:
    """A copy whose last linear (or, in SqueezeNet, convolutional) layer has unit-scale random
    weights: torchvision zero-initialises ViT's head, and tiny random heads leave rounding noise."""
    model = copy.deepcopy(zoo.model)
    head = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    torch.manual_seed(0)
    head.weight.normal_(0, 1)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(REGISTRY) if n != DEFAULT_MODEL])
def test_every_registered_model_explains_at_its_default_target(name):
    zoo = load_model(name, weights=None, device="cpu")
    assert zoo.default_layer == zoo.layers()[0].name
    model = with_random_head(zoo)
    torch.manual_seed(1)
    x = torch.randn(1, 3, *zoo.input_size)
    evidence = Evidence(model, x, [zoo.default_layer])
    if name.startswith(RECTIFYING):
        assert zoo.default_layer == FINAL and zoo.layers()[0].rectified
        assert evidence.activations(FINAL).min() >= 0
    result = explain(model, x, zoo.default_layer, GRADIENT_CAMS)
    for method in GRADIENT_CAMS:
        assert torch.isfinite(result.maps[method]).all(), method
    assert result.maps["gradcam"].amax() > 0  # a random head still gives evidence somewhere
    if name.startswith(GAP_LINEAR):
        cam = explain(model, x, FINAL, ["cam", "gradcam", "xgradcam"])
        for method in ("cam", "xgradcam"):
            assert pearson(cam.maps[method], cam.maps["gradcam"]) >= 0.999, method


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="twice"):
        models_zoo.register_model(REGISTRY[DEFAULT_MODEL])
