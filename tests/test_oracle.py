"""Agreement with an independent implementation: the `grad-cam` package (jacobgil/pytorch-grad-cam)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from conftest import frozen, pearson
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from explainers import explain

ORACLES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
}


def package_maps(
    model: torch.nn.Module,
    layer: str,
    x: torch.Tensor,
    target: int,
    names: tuple[str, ...] = tuple(ORACLES),
    reshape_transform=None,
) -> dict[str, np.ndarray]:
    """The package's maps, on its own copy of the model with gradients on, as its users run it."""
    model = copy.deepcopy(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    module = dict(model.named_modules())[layer]
    maps = {}
    for name in names:
        with ORACLES[name](model=model, target_layers=[module], reshape_transform=reshape_transform) as cam:
            maps[name] = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
    return maps


def scaled_classifier(model: torch.nn.Module, attribute: str, factor: float = 1e3) -> torch.nn.Module:
    # Random classifiers give tiny gradients, where the package's eps (1e-6) inside Grad-CAM++'s
    # alpha would dominate (SPEC pitfalls); scaling the last layer keeps the formula comparable.
    getattr(model, attribute).weight.mul_(factor)
    return model


def random_resnet18():
    torch.manual_seed(10)
    return scaled_classifier(frozen(torchvision.models.resnet18(weights=None)), "fc"), "layer4"


def random_densenet121():
    torch.manual_seed(11)
    return scaled_classifier(
        frozen(torchvision.models.densenet121(weights=None)), "classifier"
    ), "features.denseblock4"


@pytest.mark.parametrize("build", [random_resnet18, random_densenet121], ids=["resnet18", "densenet121"])
def test_random_weight_architectures_match_the_package(build):
    model, layer = build()
    torch.manual_seed(12)
    x = torch.randn(1, 3, 128, 128)
    ours = explain(model, x, layer, list(ORACLES))
    theirs = package_maps(model, layer, x, ours.target)
    for name in ORACLES:
        r = pearson(ours.maps[name], theirs[name])
        assert r >= 0.999, f"{name}: Pearson {r:.5f}"


def densenet_with_relu_module(model: torch.nn.Module) -> torch.nn.Module:
    """DenseNet's forward as modules, its functional final ReLU as an `nn.ReLU` the package can hook
    (at `features` the package pairs the post-ReLU map, overwritten in place, with pre-ReLU
    gradients: a mixture; SPEC pitfalls)."""
    return torch.nn.Sequential(
        model.features, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), model.classifier
    )


@pytest.mark.parametrize(
    "build, package_model, package_layer",
    [(random_resnet18, None, "layer4"), (random_densenet121, densenet_with_relu_module, "1")],
    ids=["resnet18", "densenet121"],
)
def test_the_final_feature_map_matches_the_package_at_the_pooled_module(build, package_model, package_layer):
    """Our "final" target is found from the pooling call; the package is pointed at the module
    whose output is pooled (a module we add for DenseNet's functional ReLU)."""
    model, _ = build()
    torch.manual_seed(13)
    x = torch.randn(1, 3, 128, 128)
    ours = explain(model, x, "final", list(ORACLES))
    reference = package_model(model) if package_model else model
    theirs = package_maps(reference, package_layer, x, ours.target)
    for name in ORACLES:
        r = pearson(ours.maps[name], theirs[name])
        assert r >= 0.999, f"{name}: Pearson {r:.5f}"


def vit_tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """The package's documented reshape_transform for ViT: drop the class token, make a grid."""
    side = int((tokens.shape[1] - 1) ** 0.5)
    return tokens[:, 1:].reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


def swin_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, package_layer, transform",
    [
        ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", vit_tokens_to_map),
        ("swin_t", "norm", swin_channels_last),
    ],
)
def test_transformers_match_the_package_with_its_reshape_transform(name, package_layer, transform):
    from models_zoo import load_model

    zoo = load_model(name, weights=None, device="cpu")
    model = copy.deepcopy(zoo.model)
    # torchvision zero-initialises ViT's head: draw a random one. At ViT's signed LayerNorm output
    # Grad-CAM++'s denominator 2g² + ΣA·g³ crosses zero, where the package's eps (1e-6) decides
    # the value (r = 0.977 at unit scale, 0.06 at 1e3); at 1e6 the eps is negligible.
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.manual_seed(14)
    head.weight.normal_(0, 1e6)
    x = torch.randn(1, 3, *zoo.input_size)
    ours = explain(model, x, zoo.default_layer, list(ORACLES))
    theirs = package_maps(model, package_layer, x, ours.target, reshape_transform=transform)
    for method in ORACLES:
        assert ours.maps[method].amax() > 0, method
        r = pearson(ours.maps[method], theirs[method])
        assert r >= 0.999, f"{method}: Pearson {r:.5f}"


def test_offline_default_model_matches_the_package(lite0, chelsea):
    # The package hooks modules: compare the formulas at a module output (Lite0's "final" is the
    # output of a reused ReLU6 module, which the package cannot single out).
    x = lite0.preprocess(chelsea)
    ours = explain(lite0.model, x, "_bn1", list(ORACLES), target=504)  # coffee mug
    eps_free = tuple(name for name in ORACLES if name != "gradcam++")  # see the next test
    theirs = package_maps(lite0.model, "_bn1", x, ours.target, eps_free)
    for name in eps_free:
        r = pearson(ours.maps[name], theirs[name])
        assert r >= 0.999, f"{name}: Pearson {r:.5f}"


def test_gradcam_plus_plus_matches_the_package_once_its_eps_is_negligible(lite0, chelsea):
    # Grad-CAM++'s alpha is not invariant to the gradient's scale (the g^3 term), and with
    # EfficientNet-Lite0's gradients (~1e-3) the package's hidden eps = 1e-6 shifts it: r = 0.988.
    # On a copy with a scaled-up classifier both compute the same formula.
    model = scaled_classifier(copy.deepcopy(lite0.model), "_fc")
    x = lite0.preprocess(chelsea)
    ours = explain(model, x, "_bn1", ["gradcam++"])
    theirs = package_maps(model, "_bn1", x, ours.target, ("gradcam++",))
    r = pearson(ours.maps["gradcam++"], theirs["gradcam++"])
    assert r >= 0.999, f"gradcam++: Pearson {r:.5f}"
