"""The CAM family: exact answers, SPEC invariants, shared passes, safety of the shared model."""

from __future__ import annotations

import threading

import pytest
import torch
import torchvision
from conftest import assert_untouched, frozen, module_state, pearson
from torch import nn

from explainers import METHODS, LayerError, MethodError, TargetError, explain
from explainers.methods.cam import GradCAMPlusPlus
from explainers.methods.core import Evidence, register

GRADIENT_CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def test_exact_answer_on_one_conv_model(gap_linear):
    x = torch.randn(1, 3, 6, 5)
    result = explain(gap_linear, x, "relu", GRADIENT_CAMS + ["cam"], target=2)

    # By hand: A = ReLU(conv(x)); y = W (mean A) + b, so dy/dA^k_ij = W[c, k] / Z everywhere.
    A = torch.relu(gap_linear.conv(x))[0].double()  # (C, h, w)
    w = gap_linear.fc.weight[2].double()
    Z = A.shape[1] * A.shape[2]
    g = (w / Z)[:, None, None].expand_as(A)
    expected = {
        "gradcam": (g.mean((1, 2))[:, None, None] * A).sum(0).relu(),
        "hirescam": (g * A).sum(0).relu(),
        "layercam": (g.relu() * A).sum(0).relu(),
        "cam": (w[:, None, None] * A).sum(0).relu(),
    }
    sums = A.sum((1, 2), keepdim=True)
    expected["xgradcam"] = ((g * A / sums).sum((1, 2))[:, None, None] * A).sum(0).relu()
    alpha = g**2 / (2 * g**2 + sums * g**3)
    expected["gradcam++"] = ((alpha * g.relu()).sum((1, 2))[:, None, None] * A).sum(0).relu()

    assert result.target == 2
    for name, want in expected.items():
        torch.testing.assert_close(result.raw[name].double(), want, rtol=1e-5, atol=1e-7, msg=name)
        shown = result.maps[name]
        assert shown.shape == (6, 5) and shown.dtype == torch.float32
        assert float(shown.min()) >= 0 and float(shown.max()) <= 1


def test_maps_are_upsampled_and_normalised(gap_linear):
    result = explain(gap_linear, torch.randn(1, 3, 32, 48), "relu", GRADIENT_CAMS)
    for name in GRADIENT_CAMS:
        shown = result.maps[name]
        assert shown.shape == (32, 48)
        if shown.max() > 0:
            assert float(shown.min()) == pytest.approx(0, abs=1e-6)
            assert float(shown.max()) == pytest.approx(1, abs=1e-6)


def test_no_positive_evidence_gives_zeros_not_noise(gap_linear):
    # Non-negative activations and a class whose weights are all negative: no positive evidence.
    gap_linear.fc.weight[1] = -gap_linear.fc.weight[1].abs() - 0.1
    result = explain(gap_linear, torch.randn(1, 3, 8, 8), "relu", GRADIENT_CAMS + ["cam"], target=1)
    for name in GRADIENT_CAMS + ["cam"]:
        assert torch.count_nonzero(result.maps[name]) == 0, name


def test_cam_equals_gradient_cams_on_gap_linear_net():
    """SPEC invariant: at the last block of a GAP + linear net, cam = gradcam = hirescam = xgradcam."""
    torch.manual_seed(1)
    model = frozen(torchvision.models.resnet18(weights=None))
    result = explain(model, torch.randn(1, 3, 96, 96), "layer4", ["cam", "gradcam", "hirescam", "xgradcam"])
    for name in ["gradcam", "hirescam", "xgradcam"]:
        torch.testing.assert_close(result.maps[name], result.maps["cam"], atol=1e-4, rtol=0)


def test_vgg_breaks_the_cam_identity_and_rejects_cam():
    """Negative control: VGG has several linear layers, so Grad-CAM and HiResCAM differ, and CAM
    does not apply."""
    torch.manual_seed(2)
    model = frozen(torchvision.models.vgg11(weights=None))
    x = torch.randn(1, 3, 64, 64)
    result = explain(model, x, "features.18", ["gradcam", "hirescam"])
    assert pearson(result.maps["gradcam"], result.maps["hirescam"]) < 0.99
    with pytest.raises(MethodError, match="global average pooling"):
        explain(model, x, "features.18", ["cam"])


def test_cam_rejects_a_layer_that_does_not_feed_the_classifier():
    model = frozen(torchvision.models.resnet18(weights=None))
    with pytest.raises(MethodError, match="layer3"):
        explain(model, torch.randn(1, 3, 64, 64), "layer3", ["cam"])


def test_gradcam_plus_plus_with_uniform_alpha_is_gradcam(gap_linear):
    """SPEC invariant: forcing alpha = 1/Z reproduces Grad-CAM (where gradients are non-negative)."""
    gap_linear.fc.weight.abs_()

    class UniformAlpha(GradCAMPlusPlus):
        name = "test_uniform_alpha"

        def weights(self, activations, gradients):
            Z = gradients.shape[-1] * gradients.shape[-2]
            return (gradients.relu() / Z).sum((2, 3))

    register(UniformAlpha)
    try:
        result = explain(gap_linear, torch.randn(1, 3, 8, 8), "relu", ["gradcam", "test_uniform_alpha"])
        torch.testing.assert_close(result.raw["test_uniform_alpha"], result.raw["gradcam"])
    finally:
        del METHODS["test_uniform_alpha"]


def test_counterfactual_and_gradcam_raw_maps_have_disjoint_support(lite0, chelsea):
    x = lite0.preprocess(chelsea)
    factual = explain(lite0.model, x, "_blocks.10", ["gradcam", "hirescam"], target=281)
    counter = explain(lite0.model, x, "_blocks.10", ["gradcam", "hirescam"], target=281, counterfactual=True)
    assert counter.counterfactual
    for name in ["gradcam", "hirescam"]:
        overlap = (factual.raw[name] > 0) & (counter.raw[name] > 0)
        assert not overlap.any(), name
        assert (factual.raw[name] > 0).any() and (counter.raw[name] > 0).any()


def test_top1_is_default_target_and_target_is_checked(gap_linear):
    x = torch.randn(1, 3, 8, 8)
    result = explain(gap_linear, x, "relu", ["gradcam"])
    assert result.target == int(gap_linear(x).argmax())
    assert result.logits.shape == (3,)
    torch.testing.assert_close(result.probabilities.sum(), torch.tensor(1.0))
    with pytest.raises(TargetError, match="out of range.*3 classes"):
        explain(gap_linear, x, "relu", ["gradcam"], target=3)
    with pytest.raises(TargetError):
        explain(gap_linear, x, "relu", ["gradcam"], target=-1)


def test_bad_method_and_layer_names_suggest_close_matches(gap_linear):
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(MethodError, match="'gradcam'"):
        explain(gap_linear, x, "relu", ["gradcma"])
    with pytest.raises(LayerError, match="'relu'"):
        explain(gap_linear, x, "reluu", ["gradcam"])
    with pytest.raises(LayerError, match="not a feature map"):
        explain(gap_linear, x, "fc", ["gradcam"])
    with pytest.raises(MethodError, match="at least one"):
        explain(gap_linear, x, "relu", [])


def test_a_module_run_twice_is_refused(lite0):
    # EfficientNet-Lite reuses one ReLU6 instance for its stem and head.
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(LayerError, match="more than once"):
        explain(lite0.model, x, "_swish", ["gradcam"])


def test_training_mode_model_is_refused(gap_linear):
    gap_linear.train()
    with pytest.raises(ValueError, match="eval"):
        explain(gap_linear, torch.randn(1, 3, 8, 8), "relu", ["gradcam"])


class Counted(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.label = name

    def forward(self, x):
        return CountedFn.apply(x, self.label)


class CountedFn(torch.autograd.Function):
    backward_calls: dict[str, int] = {}

    @staticmethod
    def forward(ctx, x, label):
        ctx.label = label
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        CountedFn.backward_calls[ctx.label] = CountedFn.backward_calls.get(ctx.label, 0) + 1
        return grad, None


def test_all_gradient_methods_share_one_forward_and_one_backward_that_stops_at_the_layer():
    torch.manual_seed(4)
    model = frozen(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            Counted("before"),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            Counted("after"),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 5),
        )
    )
    for parameter in model.parameters():  # a user's model may still require grads
        parameter.requires_grad_(True)
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    CountedFn.backward_calls.clear()
    try:
        result = explain(model, torch.randn(1, 3, 10, 10), "3", GRADIENT_CAMS)
    finally:
        handle.remove()
    assert len(result.maps) == 5
    assert len(forwards) == 1
    assert CountedFn.backward_calls == {"after": 1}  # one backward, never below the layer
    assert all(p.grad is None for p in model.parameters())


def test_the_model_is_left_untouched_also_after_errors():
    torch.manual_seed(5)
    model = frozen(torchvision.models.densenet121(weights=None))
    state, weights = module_state(model), {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    explain(model, x, "features.denseblock4", GRADIENT_CAMS)
    assert_untouched(model, state, weights)
    with pytest.raises(LayerError):  # raised inside a hook, mid forward
        explain(model, x, "classifier", ["gradcam"])
    assert_untouched(model, state, weights)

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = frozen(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), Boom()))
    state = module_state(broken)
    with pytest.raises(RuntimeError, match="boom"):
        explain(broken, x, "1", ["gradcam"])
    assert module_state(broken) == state


def test_in_place_relu_after_the_layer_does_not_corrupt_the_capture():
    """DenseNet applies relu_ to features.norm5's output; we must keep the pre-ReLU activation."""
    torch.manual_seed(6)
    model = frozen(torchvision.models.densenet121(weights=None))
    x = torch.randn(1, 3, 64, 64)
    evidence = Evidence(model, x, ["features.norm5"])
    activation = evidence.activations("features.norm5")
    assert (activation < 0).any()  # the ReLU'd copy went on to the classifier, not this one
    gradient = evidence.gradients("features.norm5")
    assert gradient.shape == activation.shape and gradient.abs().sum() > 0


def test_concurrent_explanations_match_sequential_ones(lite0):
    torch.manual_seed(7)
    inputs = [torch.randn(1, 3, 224, 224) for _ in range(4)]
    jobs = [(i, target, layer) for i in range(4) for target, layer in [(None, "_bn1"), (281, "_blocks.10")]]
    expected = {
        job: explain(lite0.model, inputs[job[0]], job[2], GRADIENT_CAMS, target=job[1]) for job in jobs
    }
    results, errors = {}, []

    def worker(my_jobs):
        try:
            for job in my_jobs:
                results[job] = explain(lite0.model, inputs[job[0]], job[2], GRADIENT_CAMS, target=job[1])
        except Exception as error:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(jobs[i::4] * 2,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for job in jobs:
        assert results[job].target == expected[job].target
        for name in GRADIENT_CAMS:
            torch.testing.assert_close(results[job].maps[name], expected[job].maps[name])
    assert all(len(m._forward_hooks) == 0 for m in lite0.model.modules())


def test_several_targets_and_layers_come_from_one_evidence(gap_linear):
    """The shared Evidence batches classes and layers; each matches a single-target call."""
    x = torch.randn(1, 3, 8, 8)
    evidence = Evidence(gap_linear, x, ["conv", "relu"], targets=[0, 2])
    raw, shown = evidence.result("gradcam", "relu")
    assert shown.shape == (2, 8, 8)
    for row, target in enumerate([0, 2]):
        single = explain(gap_linear, x, "relu", ["gradcam"], target=target)
        torch.testing.assert_close(raw[row], single.raw["gradcam"])
    assert evidence.gradients("conv").shape == (2, 4, 8, 8)


def test_registry_refuses_duplicates():
    class Again(GradCAMPlusPlus):
        name = "gradcam"

    with pytest.raises(ValueError, match="twice"):
        register(Again)


def test_every_registered_method_runs_on_a_tiny_model(gap_linear):
    names = list(METHODS)
    result = explain(gap_linear, torch.randn(1, 3, 16, 16), "relu", names)
    for name in names:
        assert torch.isfinite(result.maps[name]).all(), name
        assert result.maps[name].shape[:2] == (16, 16), name
