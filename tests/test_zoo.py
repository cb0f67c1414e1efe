"""models_zoo: the offline default, torchvision's registry, layers, and offline errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from PIL import Image

import models_zoo
from explainers import explain
from explainers.samples import SAMPLES_DIR
from models_zoo import (
    DEFAULT_MODEL,
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
    assert lite0.default_layer == "_bn1" == names[0]
    assert layers[0].shape == (1280, 7, 7)
    assert "_swish" not in names  # runs twice: ambiguous
    assert len(set(names)) == len(names)
    # Deepest first: spatial size never grows along the list.
    sizes = [layer.shape[1] for layer in layers]
    assert sizes == sorted(sizes)
    modules = dict(lite0.model.named_modules())
    assert all(name in modules for name in names)


def test_list_starts_with_the_offline_default_and_skips_transformers():
    names = list_zoo()
    assert names[0] == DEFAULT_MODEL
    assert "resnet50" in names and "densenet121" in names
    assert not any(name.startswith("vit_") for name in names)


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
    "name, layer",
    [
        ("resnet50", "layer4"),
        ("vgg16", "features.29"),
        ("densenet121", "features"),
        ("mobilenet_v3_small", "features"),
    ],
)
def test_random_weight_models_pick_the_last_feature_map(name, layer):
    zoo = load_model(name, weights=None, device="cpu")
    assert zoo.default_layer == layer
    x = torch.randn(1, 3, *zoo.input_size)
    result = explain(zoo.model, x, zoo.default_layer, ["gradcam"])
    assert result.maps["gradcam"].shape == zoo.input_size


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(REGISTRY) if n != DEFAULT_MODEL])
def test_every_registered_model_builds_and_explains(name):
    zoo = load_model(name, weights=None, device="cpu")
    assert zoo.default_layer in {layer.name for layer in zoo.layers()}
    result = explain(
        zoo.model, torch.randn(1, 3, *zoo.input_size), zoo.default_layer, ["gradcam", "layercam"]
    )
    assert torch.isfinite(result.maps["gradcam"]).all()


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="twice"):
        models_zoo.register_model(REGISTRY[DEFAULT_MODEL])
