"""Targets: the final feature map, module inputs, rectified outputs, token and channels-last maps,
and the probe that finds a model's stages."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_untouched, frozen, module_state, pearson
from torch import nn
from torchvision.models import resnet18

from explainers import LayerError, explain
from explainers.methods.core import Evidence
from explainers.methods.metrics import average_drop, confidence
from explainers.services.samples import SAMPLES_DIR
from models_zoo import FINAL, load_model, probe


class FunctionalHead(nn.Module):
    """conv -> BN -> F.relu in forward -> F.adaptive_avg_pool2d -> linear: no module outputs the
    rectified map the head pools (DenseNet's pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class MeanHead(FunctionalHead):
    """The same with ``.mean((2, 3))`` as the pooling (ShuffleNet, MNASNet)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class FlattenHead(FunctionalHead):
    """A head that flattens the whole map into a linear layer (VGG, AlexNet): no pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).view(x.shape[0], -1))


class SharedActivation(nn.Module):
    """One ReLU6 module called twice (EfficientNet-Lite's ``_swish``), then a pooling module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.conv2, self.bn2 = nn.Conv2d(5, 7, 3, stride=2, padding=1), nn.BatchNorm2d(7)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class Tokens(nn.Module):
    """A toy ViT: patches -> (N, 1 + 16, C) tokens with a class token, read by the head."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, channels, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, channels))
        self.block = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # (N, 16, C)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        tokens = self.norm(tokens + torch.tanh(self.block(tokens)))
        return self.head(tokens[:, 0] + tokens[:, 1:].mean(1))


class ChannelsLast(nn.Module):
    """Swin's pattern: a channels-last (N, H, W, C) map, permuted, then pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.norm = nn.LayerNorm(24)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))  # (N, H, W, C), C > H as in Swin
        return self.fc(F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1).flatten(1))


def build(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls()
    for module in model.modules():  # BatchNorm statistics that give signed maps
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
    return frozen(model)


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, 16, 16)


@pytest.mark.parametrize("cls", [FunctionalHead, MeanHead])
def test_final_is_the_rectified_map_the_head_pools(cls, x):
    model = build(cls)
    captured = Evidence(model, x, [FINAL]).activations(FINAL)
    with torch.no_grad():
        expected = F.relu(model.bn(model.conv(x)))
    torch.testing.assert_close(captured, expected)
    assert captured.min() >= 0 and model.bn(model.conv(x)).min() < 0  # the module output is signed


def test_final_is_found_where_the_head_flattens_the_map(x):
    model = build(FlattenHead)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = F.relu(model.bn(model.conv(x)))
    torch.testing.assert_close(Evidence(model, x, [FINAL]).activations(FINAL), expected)


def test_gradients_at_the_final_map_are_the_heads(x):
    """At a GAP + linear head, dy_c/dA = w_c / Z everywhere: so CAM = Grad-CAM = XGrad-CAM there."""
    model = build(MeanHead)
    evidence = Evidence(model, x, [FINAL], targets=[2])
    gradients = evidence.gradients(FINAL)[0]  # (C, h, w)
    expected = model.fc.weight[2][:, None, None].expand_as(gradients) / (16 * 16)
    torch.testing.assert_close(gradients, expected)
    result = explain(model, x, FINAL, ["cam", "gradcam", "xgradcam", "hirescam"], target=2)
    for name in ("cam", "xgradcam", "hirescam"):
        torch.testing.assert_close(result.maps[name], result.maps["gradcam"], atol=1e-5, rtol=1e-4)


def test_a_module_input_is_a_target(x):
    model = build(SharedActivation)
    evidence = Evidence(model, x, ["pool:input", FINAL])
    torch.testing.assert_close(evidence.activations("pool:input"), evidence.activations(FINAL))
    with pytest.raises(LayerError, match="not a feature map"):
        Evidence(model, x, ["fc:input"]).activations("fc:input")


def test_each_call_of_a_reused_activation_is_reachable(x):
    model = build(SharedActivation)
    evidence = Evidence(model, x, ["bn1:relu", "bn2:relu", "bn2"])
    with torch.no_grad():
        first = F.relu6(model.bn1(model.conv1(x)))
        second = F.relu6(model.bn2(model.conv2(first)))
    torch.testing.assert_close(evidence.activations("bn1:relu"), first)
    torch.testing.assert_close(evidence.activations("bn2:relu"), second)
    assert evidence.activations("bn2").min() < 0  # the signed map, before the ReLU6
    # Gradients flow from the deeper target to the shallower one in one backward.
    assert evidence.gradients("bn1:relu").abs().sum() > 0
    with pytest.raises(LayerError, match="more than once"):
        Evidence(model, x, ["act"]).activations("act")


def test_tokens_become_a_map_without_the_class_token():
    model = build(Tokens)
    x = torch.randn(1, 3, 16, 16)
    evidence = Evidence(model, x, ["norm"], targets=[1])
    activations = evidence.activations("norm")
    assert activations.shape == (1, 8, 4, 4)
    # Grad-CAM by hand on the reshaped token grid, from autograd on the raw tokens.
    tokens = {}
    handle = model.norm.register_forward_hook(lambda m, i, o: tokens.setdefault("t", o))
    with torch.enable_grad():
        logits = model(x.clone().requires_grad_(True))
        (grad,) = torch.autograd.grad(logits[0, 1], tokens["t"])
    handle.remove()
    grid = grad[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(evidence.gradients("norm"), grid)
    expected = (grid.mean((2, 3), keepdim=True) * activations).sum(1).relu()
    torch.testing.assert_close(explain(model, x, "norm", ["gradcam"], target=1).raw["gradcam"], expected[0])


def test_channels_last_maps_are_permuted(x):
    model = build(ChannelsLast)
    evidence = Evidence(model, x, ["norm", FINAL])
    torch.testing.assert_close(evidence.activations("norm"), evidence.activations(FINAL))
    assert evidence.activations("norm").shape == (1, 24, 16, 16)


def test_no_final_map_is_a_clear_error():
    model = build(Tokens)  # reads tokens, never pools a map
    with pytest.raises(LayerError, match="no final feature map"):
        explain(model, torch.randn(1, 3, 16, 16), FINAL, ["gradcam"])


def test_unknown_layers_name_close_matches_and_examples(x):
    model = build(SharedActivation)
    with pytest.raises(LayerError, match="'bn1'"):
        explain(model, x, "bn_1", ["gradcam"])
    with pytest.raises(LayerError, match="'final'.*'conv2'"):
        explain(model, x, "zzz", ["gradcam"])


def test_capture_leaves_nothing_behind_even_on_errors(x):
    model = build(SharedActivation)
    state, weights = module_state(model), {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, x, FINAL, ["gradcam", "guided_gradcam"])
    with pytest.raises(LayerError):
        explain(model, x, "act", ["gradcam"])
    assert_untouched(model, state, weights)
    assert torch._C._len_torch_function_stack() == 0


def test_concurrent_calls_at_function_targets_match_sequential_ones():
    model = build(SharedActivation)
    torch.manual_seed(3)
    inputs = [torch.randn(1, 3, 16, 16) for _ in range(6)]
    layers = [FINAL, "bn1:relu", "pool:input"] * 2
    sequential = [explain(model, x, layer, ["gradcam"]).maps["gradcam"] for x, layer in zip(inputs, layers)]
    results: list[torch.Tensor | None] = [None] * len(inputs)

    def run(i: int) -> None:
        results[i] = explain(model, inputs[i], layers[i], ["gradcam"]).maps["gradcam"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ours, theirs in zip(results, sequential):
        torch.testing.assert_close(ours, theirs)


def test_probe_finds_resnet_stages_and_its_final_map():
    torch.manual_seed(0)
    anatomy = probe(frozen(resnet18()), (3, 224, 224))
    assert [layer.name for layer in anatomy.stages] == ["relu", "layer1", "layer2", "layer3", FINAL]
    assert anatomy.final.shape == (512, 7, 7) and anatomy.final.rectified
    assert all(layer.rectified for layer in anatomy.stages)
    assert anatomy.layers()[0].label == "final feature map (512×7×7)"


def test_explanation_seconds_time_the_passes(lite0, chelsea):
    x = lite0.preprocess(chelsea)
    start = time.perf_counter()
    result = explain(lite0.model, x, lite0.default_layer, ["gradcam", "gradcam++", "guided_backprop"])
    wall = time.perf_counter() - start
    assert 0.5 * wall <= result.seconds <= wall


# ---------------------------------------------------------------------------- the offline default
def test_lite0_default_is_the_rectified_final_map(lite0, chelsea):
    assert lite0.default_layer == FINAL
    x = lite0.preprocess(chelsea)
    evidence = Evidence(lite0.model, x, [FINAL, "_bn1", "_bn1:relu"])
    assert evidence.activations(FINAL).min() >= 0
    assert evidence.activations("_bn1").min() < -1  # the old default: BatchNorm before ReLU6
    torch.testing.assert_close(evidence.activations(FINAL), evidence.activations("_bn1:relu"))
    stages = lite0.stages()
    assert stages[-1].name == FINAL and len(stages) == 5
    assert all(layer.rectified for layer in stages)


def samples():
    from PIL import Image

    return [Image.open(path).convert("RGB") for path in sorted(SAMPLES_DIR.glob("*.jpg"))]


def test_lite0_cam_agrees_with_gradcam_and_gradcam_plus_plus_is_comparable(lite0):
    """At the rectified final map the theory holds on every sample: CAM = Grad-CAM = XGrad-CAM
    (r >= 0.999), and Grad-CAM++'s Average Drop is close to Grad-CAM's (within 10 points). At the
    old default ``_bn1`` (signed) Grad-CAM++'s weights flip and its Average Drop is far worse."""
    drops: dict[str, dict[str, list[float]]] = {FINAL: {}, "_bn1": {}}
    for image in samples():
        x = lite0.preprocess(image)
        for layer, per_method in drops.items():
            methods = ["gradcam", "gradcam++"] + (["cam", "xgradcam"] if layer == FINAL else [])
            result = explain(lite0.model, x, layer, methods)
            if layer == FINAL:
                for name in ("cam", "xgradcam"):
                    assert pearson(result.maps[name], result.maps["gradcam"]) >= 0.999, name
            maps = torch.stack([result.maps["gradcam"], result.maps["gradcam++"]])
            y, o = confidence(lite0.model, x, maps, result.target)
            for name, masked in zip(("gradcam", "gradcam++"), o):
                per_method.setdefault(name, []).append(average_drop(y, masked))
    mean = {layer: {m: sum(v) / len(v) for m, v in d.items()} for layer, d in drops.items()}
    assert abs(mean[FINAL]["gradcam++"] - mean[FINAL]["gradcam"]) <= 10, mean
    assert mean["_bn1"]["gradcam++"] - mean["_bn1"]["gradcam"] > 10, mean


def test_densenet_default_is_rectified():
    zoo = load_model("densenet121", weights=None, device="cpu")
    assert zoo.default_layer == FINAL
    x = torch.randn(1, 3, *zoo.input_size)
    evidence = Evidence(zoo.model, x, [FINAL, "features"])
    assert evidence.activations(FINAL).min() >= 0 > evidence.activations("features").min()
    assert "features:relu" in {layer.name for layer in zoo.layers()}


def test_every_method_and_multi_call_works_at_function_targets(x):
    from explainers import METHODS, explain_classes, sweep

    model = build(SharedActivation)
    for layer in (FINAL, "bn2:relu", "pool:input"):
        result = explain(model, x, layer, list(METHODS), options={"max_channels": 4})
        assert set(result.maps) == set(METHODS)
        assert all(torch.isfinite(m).all() for m in result.maps.values())
    top = explain_classes(model, x, FINAL, ["gradcam", "scorecam"], targets=3)
    assert [e.target for e in top] == model(x).topk(3).indices[0].tolist()
    layers = sweep(model, x, ["bn1:relu", FINAL], ["gradcam", "layercam"])
    assert list(layers) == ["bn1:relu", FINAL]
    assert layers["bn1:relu"].raw["gradcam"].shape == (16, 16) and layers[FINAL].raw["gradcam"].shape == (
        8,
        8,
    )


class ClassTokenOnly(Tokens):
    """ViT's head: only the class token is read, so the patch tokens after the last mixing get
    no gradient at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        mixed = tokens + tokens.mean(1, keepdim=True)  # "attention": every token sees every other
        return self.head(self.norm(mixed + torch.tanh(self.block(mixed)))[:, 0])


def test_a_blank_map_says_when_no_gradient_reaches_the_layer(chelsea):
    from explainers.services.service import NO_GRADIENT, run_explanation
    from models_zoo import Preprocessing, wrap_model

    tiny = Preprocessing(16, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    zoo = wrap_model("tokens", build(ClassTokenOnly), tiny, ("a", "b", "c"), default_layer="block")
    assert zoo.stages() == [layer for layer in zoo.layers() if layer.name == "block"]  # no map is pooled
    blank = run_explanation(zoo, chelsea, "norm", ["gradcam", "layercam"])
    assert blank.notes == {"gradcam": NO_GRADIENT, "layercam": NO_GRADIENT}
    assert not blank.maps["gradcam"].any()
    before = run_explanation(zoo, chelsea, "patches", ["gradcam"])
    assert before.notes == {} and before.maps["gradcam"].any()


def test_stage_ends_skip_squeeze_excitation_pools_and_valid_convolutions_and_see_channels_last():
    from torchvision.models import efficientnet_b0, inception_v3, swin_t

    def sizes(model: nn.Module, side: int) -> list[int]:
        torch.manual_seed(0)
        return [layer.shape[1] for layer in probe(frozen(model), (3, side, side)).stages]

    assert sizes(efficientnet_b0(), 224) == [112, 56, 28, 14, 7]
    assert sizes(swin_t(), 224) == [56, 28, 14, 7]  # channels-last PatchMerging shrinks the grid
    assert sizes(inception_v3(init_weights=False, aux_logits=False), 299) == [147, 71, 35, 17, 8]


def test_stage_names_and_suffix_errors_are_clear(x):
    torch.manual_seed(0)
    model = frozen(resnet18())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(
        explain(model, x, "stage 2", ["gradcam"]).maps["gradcam"],
        explain(model, x, "layer1", ["gradcam"]).maps["gradcam"],
    )
    with pytest.raises(LayerError, match="stages 1 to 5"):
        explain(model, x, "stage 9", ["gradcam"])
    with pytest.raises(LayerError, match="takes no ':relu'"):
        explain(model, x, "final:relu", ["gradcam"])
    with pytest.raises(ValueError, match="No ReLU is applied to the output of 'layer4'"):
        explain(model, x, "layer4:relu", ["gradcam"])
