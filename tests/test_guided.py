"""Tests of the guided family (explainers/guided.py): exact answers on hand-built models,
agreement with Captum and the grad-cam package, the shared model left untouched, threads, passes."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import frozen, pearson
from torch import nn

from explainers import METHODS, Evidence, MethodError, explain, guided_to_image
from explainers.methods.guided import _RectifyReLUs, _Rule

# Captum announces its (temporary) ReLU hooks on every call.
pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")

GUIDED = ["guided_backprop", "deconvnet", "guided_gradcam", "guided_gradcam++"]


class Tiny(nn.Module):
    """conv 1x1 (3 -> 1) -> activation -> flatten -> linear (4 -> 2); numbers chosen by hand."""

    def __init__(self, act) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.act = act
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[2.0, 5.0, 4.0, -1.0], [0.0, 0.0, 0.0, 0.0]]))

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def tiny_input() -> torch.Tensor:
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[1.0, -1.0], [7.0, 3.0]])  # = the conv output z
    return x


ACTIVATIONS = {
    "nn.ReLU": (lambda: nn.ReLU(), None),
    "nn.ReLU(inplace)": (lambda: nn.ReLU(inplace=True), None),
    "F.relu": (lambda: F.relu, None),
    "F.relu(inplace)": (lambda: lambda z: F.relu(z, inplace=True), None),
    "torch.relu": (lambda: torch.relu, None),
    "torch.relu_": (lambda: torch.relu_, None),
    "Tensor.relu_ result unused": (lambda: lambda z: (z.relu_(), z)[1], None),
    "nn.ReLU6": (lambda: nn.ReLU6(), 6),
    "nn.ReLU6(inplace)": (lambda: nn.ReLU6(inplace=True), 6),
    "F.relu6": (lambda: F.relu6, 6),
    "F.hardtanh_(0, 6)": (lambda: lambda z: F.hardtanh_(z, 0.0, 6.0), 6),
}

# d y^0 / d z by hand, z = [[1, -1], [7, 3]], fc row R = [[2, 5], [4, -1]], max(R, 0) = [[2, 5], [4, 0]]:
EXPECTED_DZ = {
    ("guided_backprop", None): [[2.0, 0.0], [4.0, 0.0]],  # max(R, 0) [z > 0]
    ("deconvnet", None): [[2.0, 5.0], [4.0, 0.0]],  # max(R, 0)
    ("guided_backprop", 6): [[2.0, 0.0], [0.0, 0.0]],  # max(R, 0) [0 < z < 6]
    ("deconvnet", 6): [[2.0, 5.0], [0.0, 0.0]],  # max(R, 0) [z < 6]: the clip keeps its gradient
}


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_exact_on_hand_built_model(activation, method):
    make, upper = ACTIVATIONS[activation]
    model = frozen(Tiny(make()))
    result = explain(model, tiny_input(), "conv", [method], target=0)
    dz = torch.tensor(EXPECTED_DZ[method, upper])
    expected = dz[..., None] * torch.tensor([1.0, -2.0, 0.5])  # d z / d x_c = conv weight w_c
    assert result.maps[method].dtype == torch.float32
    assert result.maps[method].shape == (2, 2, 3)
    torch.testing.assert_close(result.maps[method], expected, rtol=0, atol=0)
    torch.testing.assert_close(result.raw[method], expected, rtol=0, atol=0)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_rectified_forward_values_unchanged(activation):
    # Including in-place calls whose result is ignored: the in-place semantics are kept.
    model = Tiny(ACTIVATIONS[activation][0]()).eval()
    x = tiny_input()
    with torch.no_grad():
        plain = model(x)
    with torch.enable_grad(), _RectifyReLUs(_Rule()) as mode:
        rectified = model(x.clone().requires_grad_(True))
    assert mode.rectified == 1
    torch.testing.assert_close(rectified, plain, rtol=0, atol=0)


def test_registered():
    for name in GUIDED:
        assert METHODS[name].kind == "guided"
        assert METHODS[name].title


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return frozen(torchvision.models.resnet18(weights=None)), torch.randn(1, 3, 160, 160), "layer4"


@pytest.fixture(scope="module")
def vgg11():
    torch.manual_seed(0)
    return frozen(torchvision.models.vgg11(weights=None)), torch.randn(1, 3, 128, 128), "features.18"


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_matches_captum(arch, request):
    from captum.attr import Deconvolution, GuidedBackprop

    model, x, layer = request.getfixturevalue(arch)
    result = explain(model, x, layer, ["guided_backprop", "deconvnet"])
    for method, oracle in [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)]:
        reference = oracle(model).attribute(x.clone().requires_grad_(True), target=result.target)
        reference = reference[0].permute(1, 2, 0)  # (H, W, 3)
        assert reference.abs().max() > 0
        assert pearson(result.maps[method], reference) >= 0.999, method
        torch.testing.assert_close(
            result.maps[method], reference, rtol=1e-4, atol=1e-4 * reference.abs().max()
        )


def test_guided_gradcam_is_guided_backprop_times_cam(resnet18):
    model, x, _ = resnet18
    x = x[..., :128, :128]
    for counterfactual in (False, True):
        result = explain(model, x, "layer3", ["gradcam", "gradcam++", *GUIDED], counterfactual=counterfactual)
        guided = result.maps["guided_backprop"]
        assert result.maps["gradcam++"].max() > 0  # (the counterfactual Grad-CAM is all zero here)
        for name, cam in [("guided_gradcam", "gradcam"), ("guided_gradcam++", "gradcam++")]:
            torch.testing.assert_close(result.maps[name], guided * result.maps[cam][..., None])
    # Under counterfactual, guided backprop explains -y: not the plain map.
    plain = explain(model, x, "layer3", ["guided_backprop"])
    assert (plain.maps["guided_backprop"] - result.maps["guided_backprop"]).abs().max() > 0


class Negated(nn.Module):
    """The model with its logits negated: its class score is -y^c."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.model(x)


def test_counterfactual_guided_maps_are_those_of_minus_y(vgg11):
    """Captum's guided backprop and deconvnet of a model whose logits are negated: the oracle of
    our counterfactual, which the panels' "· counterfactual" caption promises."""
    from captum.attr import Deconvolution, GuidedBackprop

    model, x, _ = vgg11
    x = x[..., :64, :64]
    result = explain(model, x, "features.18", ["guided_backprop", "deconvnet"], target=3, counterfactual=True)
    plain = explain(model, x, "features.18", ["guided_backprop", "deconvnet"], target=3)
    for method, oracle in [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)]:
        reference = (
            oracle(Negated(model)).attribute(x.clone().requires_grad_(True), target=3)[0].permute(1, 2, 0)
        )
        assert reference.abs().max() > 0
        torch.testing.assert_close(
            result.maps[method], reference, rtol=1e-4, atol=1e-4 * reference.abs().max()
        )
        # Not the plain map, though close to it: guided backprop hardly depends on the class
        # score it starts from (Nie et al. 2018; here Pearson 0.999 between y and -y).
        difference = (result.maps[method] - plain.maps[method]).abs().max()
        assert difference > 0.05 * plain.maps[method].abs().max(), method


def test_several_targets_in_one_batched_backward(resnet18):
    model, x, _ = resnet18
    x = x[..., :64, :64]
    targets = [7, 42]
    together = Evidence(model, x, ["layer4"], targets)
    for i, target in enumerate(targets):
        alone = explain(model, x, "layer4", ["guided_backprop", "deconvnet"], target=target).maps
        for method in ("guided_backprop", "deconvnet"):
            shown = together.result(method, "layer4")[1]  # (k, H, W, 3)
            assert shown.shape == (2, 64, 64, 3)
            torch.testing.assert_close(shown[i], alone[method], rtol=1e-4, atol=1e-6)


class SharedReLU6(nn.Module):
    """One nn.ReLU6 instance called three times, as in EfficientNet-Lite's blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU6(inplace=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.fc(self.act(x + 1).mean((2, 3)))


class _ReferenceGuidedReLU6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.where((grad > 0) & (x > 0) & (x < 6), grad, torch.zeros_like(grad))


class _ReferenceModule(nn.Module):
    def forward(self, x):
        return _ReferenceGuidedReLU6.apply(x)


def test_relu6_called_several_times_matches_reference():
    torch.manual_seed(0)
    model = frozen(SharedReLU6())
    x = 3 * torch.randn(1, 3, 16, 16)
    inputs = []
    handle = model.act.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    try:
        ours = explain(model, x, "conv2", ["guided_backprop"]).maps["guided_backprop"]
    finally:
        handle.remove()
    assert any((t > 6).any() for t in inputs[:3])  # the upper clip is reached
    # Reference: a copy with a fresh guided ReLU6 module per call site.
    reference_model = copy.deepcopy(model)
    reference_model.act = _ReferenceModule()
    xr = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(reference_model(xr)[0, int(model(x).argmax())], xr)
    torch.testing.assert_close(ours, reference[0].permute(1, 2, 0), rtol=0, atol=0)


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


class ModuleNet(FunctionalNet):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def test_functional_relu_model_matches_captum_on_module_twin():
    from captum.attr import GuidedBackprop

    torch.manual_seed(0)
    functional = frozen(FunctionalNet())
    twin = frozen(ModuleNet())
    twin.load_state_dict(functional.state_dict())
    x = torch.randn(1, 3, 16, 16)
    result = explain(functional, x, "conv2", ["guided_backprop"], target=2)
    reference = GuidedBackprop(twin).attribute(x.clone().requires_grad_(True), target=2)[0].permute(1, 2, 0)
    assert pearson(result.maps["guided_backprop"], reference) >= 0.999
    torch.testing.assert_close(result.maps["guided_backprop"], reference)
    # Captum itself misses functional ReLUs (its documented limitation): a plain gradient.
    missed = (
        GuidedBackprop(functional).attribute(x.clone().requires_grad_(True), target=2)[0].permute(1, 2, 0)
    )
    assert not torch.allclose(missed, reference)


def test_matches_grad_cam_package():
    from pytorch_grad_cam import GuidedBackpropReLUModel

    torch.manual_seed(0)
    model = frozen(ModuleNet())
    x = torch.randn(1, 3, 16, 16)
    result = explain(model, x, "conv2", ["guided_backprop"], target=3)
    reference = GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")(x.clone(), target_category=3)
    torch.testing.assert_close(result.maps["guided_backprop"], torch.from_numpy(reference))


@pytest.mark.parametrize(
    "act, name",
    [(nn.SiLU(), "silu"), (nn.GELU(), "gelu"), (nn.Hardswish(), "hardswish"), (nn.Hardtanh(), "hardtanh")],
)
def test_other_activations_are_refused_plainly(act, name):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), act, nn.Flatten(), nn.LazyLinear(3)
    )
    model(torch.randn(1, 3, 8, 8))  # materialise the lazy layer
    model.eval()
    with pytest.raises(MethodError, match=f"ReLU networks.*{name}"):
        explain(model, torch.randn(1, 3, 8, 8), "0", ["guided_backprop"])


def test_model_without_relu_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    with pytest.raises(MethodError, match="No ReLU"):
        explain(model, torch.randn(1, 3, 8, 8), "0", ["guided_gradcam"])


def test_guided_to_image_is_the_papers_display():
    from pytorch_grad_cam.utils.image import deprocess_image

    torch.manual_seed(0)
    raw = torch.randn(12, 10, 3) * 1e-3
    image = guided_to_image(raw)
    assert image.dtype == np.uint8 and image.shape == (12, 10, 3)
    assert np.abs(image.astype(int) - deprocess_image(raw.numpy()).astype(int)).max() <= 1
    assert (guided_to_image(torch.zeros(4, 4, 3)) == 127).all()  # no signal: flat grey, no noise


# --- the shared model stays untouched, also after errors and across threads ---------------------


class SmallNet(nn.Module):
    """BatchNorm, an in-place ReLU instance reused, a functional ReLU and a ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x))
        x = F.relu(self.conv3(x) + x)
        return self.fc(self.relu6(x).mean((2, 3)))


def small_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = SmallNet().eval()  # parameters require grad, as users load them
    with torch.no_grad():
        model.fc.weight.mul_(10)
    return model, torch.randn(1, 3, 32, 32)


def hooks_of(model: nn.Module) -> int:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, kind)) for m in model.modules() for kind in kinds)


def assert_untouched(model: nn.Module, state: dict, modules: list) -> None:
    assert hooks_of(model) == 0
    assert list(model.modules()) == modules  # nothing swapped
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert torch._C._len_torch_function_stack() == 0
    assert torch.is_grad_enabled()


def test_model_untouched_after_calls_and_after_an_error_mid_forward():
    model, x = small_net()
    state = copy.deepcopy(model.state_dict())
    modules = list(model.modules())
    before = explain(model, x, "conv2", ["gradcam", *GUIDED])
    assert_untouched(model, state, modules)

    class Boom(RuntimeError):
        pass

    def fail_in_guided_pass(module, args):
        if torch.is_grad_enabled():  # the guided forward; the CAM forward runs without grad here
            raise Boom

    handle = model.conv3.register_forward_pre_hook(fail_in_guided_pass)
    try:
        with pytest.raises(Boom):
            explain(model, x, "conv2", ["guided_backprop"])
    finally:
        handle.remove()
    assert_untouched(model, state, modules)
    after = explain(model, x, "conv2", ["gradcam", *GUIDED])
    for name in before.maps:
        torch.testing.assert_close(after.maps[name], before.maps[name], rtol=0, atol=0)


REQUESTS = [
    ["gradcam"],
    ["guided_backprop", "gradcam++"],
    ["guided_gradcam", "deconvnet"],
    ["layercam", *GUIDED],
]


def test_threads_get_the_same_results_as_sequential_calls():
    model, x = small_net()
    expected = [explain(model, x, "conv2", methods).maps for methods in REQUESTS]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            barrier.wait()
            for i in range(6):
                index = (offset + i) % len(REQUESTS)
                maps = explain(model, x, "conv2", REQUESTS[index]).maps
                for name, value in maps.items():
                    torch.testing.assert_close(value, expected[index][name], rtol=1e-5, atol=1e-7)
        except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert hooks_of(model) == 0


def test_a_cam_call_during_another_threads_guided_forward_is_unaffected():
    # Deterministic interleaving: thread A stops inside its guided forward (its rectifying mode
    # active) while the main thread computes a CAM and a guided map on the same model.
    model, x = small_net()
    expected = explain(model, x, "conv2", ["gradcam", "guided_backprop"]).maps
    inside, release = threading.Event(), threading.Event()
    owner: list[int] = []

    def pause(module, args):
        if threading.get_ident() in owner and torch.is_grad_enabled():
            inside.set()
            release.wait(timeout=30)

    results: dict[str, torch.Tensor] = {}

    def thread_a() -> None:
        owner.append(threading.get_ident())
        results.update(explain(model, x, "conv2", ["guided_backprop"]).maps)

    handle = model.conv3.register_forward_pre_hook(pause)
    try:
        a = threading.Thread(target=thread_a)
        a.start()
        assert inside.wait(timeout=30)
        meanwhile = explain(model, x, "conv2", ["gradcam", "guided_backprop"]).maps
        release.set()
        a.join()
    finally:
        release.set()
        handle.remove()
    for name in expected:
        torch.testing.assert_close(meanwhile[name], expected[name], rtol=0, atol=0)
    torch.testing.assert_close(results["guided_backprop"], expected["guided_backprop"], rtol=0, atol=0)


class _CountBackward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _CountBackward.calls += 1
        return grad


class CountingNet(SmallNet):
    def forward(self, x):
        return super().forward(_CountBackward.apply(x))


@pytest.mark.parametrize(
    "methods, backwards_to_input",
    [(["gradcam", "guided_backprop", "guided_gradcam", "guided_gradcam++"], 1), (["gradcam", *GUIDED], 2)],
)
def test_one_guided_pass_serves_the_guided_methods(methods, backwards_to_input):
    torch.manual_seed(0)
    model = CountingNet().eval()
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, args: forwards.append(1))
    _CountBackward.calls = 0
    try:
        explain(model, torch.randn(1, 3, 32, 32), "conv2", methods)
    finally:
        handle.remove()
    assert len(forwards) == 1  # one pass, recorded from the input, serves the CAMs and the guided maps
    # The CAM backward stops at the layer; each guided rule's backward reaches the input once.
    assert _CountBackward.calls == backwards_to_input


# --- one forward pass lent to the CAMs ------------------------------------------------------------
CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def separate_passes(model, x, layer, methods, targets=None, counterfactual=False) -> dict:
    """Each method's maps as before the lent pass: the CAMs on their capture pass (autograd from
    the layer on), the guided family on a rectified pass of its own."""
    evidence = Evidence(model, x, [layer], targets, counterfactual)  # no `prepare`: nothing lent
    return {name: evidence.result(name, layer) for name in methods}


@pytest.mark.parametrize("counterfactual", [False, True])
@pytest.mark.parametrize("layer", ["conv2", "conv3", "relu6"])
def test_the_lent_pass_gives_the_maps_of_separate_passes(layer, counterfactual):
    """Layers before and after ReLUs (the CAM backward crosses rectified ReLUs under the plain
    rule), several classes in one batched backward, and either order of asking."""
    model, x = small_net()
    methods = [*CAMS, *GUIDED]
    expected = separate_passes(model, x, layer, methods, [3, 7], counterfactual)
    for order in (methods, methods[::-1]):  # the guided backward first, or the CAMs' first
        evidence = Evidence(model, x, [layer], [3, 7], counterfactual)
        evidence.prepare(order, layer)
        got = {name: evidence.result(name, layer) for name in order}
        assert evidence.shared_forward is not None
        for name in methods:
            for a, b in zip(got[name], expected[name], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} at {layer}")


def test_the_lent_pass_on_a_relu6_network(lite0, chelsea):
    """EfficientNet-Lite0 (ReLU6 throughout) at the final map and a mid-block layer."""
    x = lite0.preprocess(chelsea)
    for layer in ("final", "_blocks.3"):
        expected = separate_passes(lite0.model, x, layer, ["gradcam", "layercam", "guided_gradcam"])
        got = explain(lite0.model, x, layer, ["gradcam", "layercam", "guided_gradcam"])
        for name, (raw, shown) in expected.items():
            torch.testing.assert_close(got.maps[name], shown[0], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(got.raw[name], raw[0], rtol=1e-4, atol=1e-6)


def test_a_refused_model_keeps_its_cams_and_is_not_recorded_again():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 8, 8)
    expected = separate_passes(model, x, "2", ["gradcam", "layercam"])
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, args: forwards.append(torch.is_grad_enabled()))
    try:
        for attempt in range(2):
            evidence = Evidence(model, x, ["2"])
            evidence.prepare(["gradcam", "guided_backprop"], "2")
            torch.testing.assert_close(evidence.result("gradcam", "2"), expected["gradcam"], rtol=0, atol=0)
            with pytest.raises(MethodError, match="ReLU networks.*silu"):
                evidence.result("guided_backprop", "2")
            # The first request records from the input; once refused, the model gets the CAMs'
            # cheaper pass and no guided pass at all.
            assert forwards == [True] if attempt == 0 else forwards == [True, False]
    finally:
        handle.remove()
    assert hooks_of(model) == 0 and torch._C._len_torch_function_stack() == 0
