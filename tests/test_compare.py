"""Compare mode: two models on one class matched by name, two classes with counterfactual maps."""

from __future__ import annotations

import pytest
import torch
from conftest import GapLinear
from PIL import Image

from explainers.errors import ExplainerInputError, TargetError
from explainers.methods.metrics import box_shares, parse_box, scale_box
from explainers.services.compare import compare_classes, compare_models, explain_panel, find_class
from models_zoo import Preprocessing, wrap_model

TINY = Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)


def tiny(name: str, labels: tuple[str, ...], seed: int):
    torch.manual_seed(seed)
    return wrap_model(name, GapLinear(classes=len(labels)), TINY, labels, device="cpu")


@pytest.fixture
def image() -> Image.Image:
    torch.manual_seed(0)
    return Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())


def test_find_class_by_name_or_index():
    labels = ("tabby", "tiger cat", "golden_retriever", "7")
    assert find_class(labels, "Tiger Cat") == 1
    assert find_class(labels, "golden retriever") == 2
    assert find_class(labels, 0) == 0
    assert find_class(labels, "7") == 3  # a class name wins over an index
    assert find_class(labels, " 2 ") == 2
    with pytest.raises(TargetError, match="no class named 'taby'. Did you mean 'tabby'"):
        find_class(labels, "taby")
    with pytest.raises(TargetError, match="out of range"):
        find_class(labels, 4)


def test_two_models_same_class_by_name(image):
    left = tiny("left", ("cat", "dog", "stethoscope"), 0)
    right = tiny("right", ("Stethoscope", "Cat"), 1)  # another order, other spelling
    a, b = compare_models(left, right, image, ["gradcam", "hirescam"], class_name="cat")
    assert (a.model, a.class_index, a.class_name) == ("left", 0, "cat")
    assert (b.model, b.class_index, b.class_name) == ("right", 1, "Cat")
    assert a.explanation.maps["gradcam"].shape == (32, 32) and a.crop.size == (32, 32)
    assert b.probability == pytest.approx(float(b.explanation.probabilities[1]))
    assert a.counterfactual is None


def test_two_models_default_to_the_left_top1(image):
    left = tiny("left", ("cat", "dog"), 0)
    right = tiny("right", ("dog", "cat"), 1)
    a, b = compare_models(left, right, image, ["gradcam"])
    assert a.class_index == a.predicted and b.class_name == a.class_name


def test_class_missing_from_one_model(image):
    left = tiny("left", ("nurse", "doctor"), 0)
    right = tiny("right", ("cat", "dog"), 1)
    with pytest.raises(TargetError, match="right: The model has no class named 'nurse'"):
        compare_models(left, right, image, ["gradcam"], class_name="nurse")


def test_two_classes_with_counterfactual_maps(lite0, chelsea):
    cat, dog = compare_classes(lite0, chelsea, ("tabby", "golden retriever"), ["gradcam"])
    assert (cat.class_index, dog.class_index) == (281, 207)
    assert cat.probability > dog.probability
    for panel in (cat, dog):
        assert panel.counterfactual is not None and panel.counterfactual.counterfactual
        assert panel.counterfactual.target == panel.class_index
        # Raw Grad-CAM and counterfactual maps have disjoint support (SPEC invariants).
        raw, opposite = panel.explanation.raw["gradcam"], panel.counterfactual.raw["gradcam"]
        assert not ((raw > 0) & (opposite > 0)).any()


def test_region_check_helpers(image):
    panel = explain_panel(tiny("m", ("a", "b"), 0), image, ["gradcam", "layercam"], target="b")
    shares = box_shares(panel.explanation.maps, (0, 0, 32, 32))
    assert shares == pytest.approx({"gradcam": 1.0, "layercam": 1.0})
    assert scale_box((100, 50, 300, 151), (448, 448), (224, 224)) == (50, 25, 150, 76)
    assert parse_box(" 8, 8,56,56") == (8, 8, 56, 56)
    for bad in ("8,8,56", "a,b,c,d", "10,10,5,20", "-1,0,4,4"):
        with pytest.raises(ExplainerInputError):
            parse_box(bad)
