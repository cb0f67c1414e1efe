"""Score-CAM, many classes at once, layer sweeps and fusion, eigen/aug smoothing.

Oracles: the `grad-cam` package (ScoreCAM, GradCAM with eigen_smooth / aug_smooth), a
brute-force Score-CAM written here, and the single-class, single-layer `explain`. Models are
random-weight and small (ResNet-18 at 32 x 32 or 64 x 64, a three-conv net) to stay fast.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torchvision
from conftest import pearson
from torch import nn

from explainers import (
    Cancelled,
    ExplainerInputError,
    MethodError,
    explain,
    explain_classes,
    fuse_layers,
    scorecam_passes,
    stage_ends,
    sweep,
)
from explainers.methods.core import Evidence, cam_from_sum
from explainers.methods.score import CPU_BATCH_SIZE, ScoreCAM, default_batch_size
from explainers.methods.smooth import eigen_projection


def resnet18(scale: float = 1.0, device: str = "cpu") -> nn.Module:
    """A seeded random-weight ResNet-18; ``scale`` sharpens its softmax (scaled classifier)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        model.fc.weight.mul_(scale)
    return model.to(device)


class Count(torch.autograd.Function):
    """Identity whose backward counts how often it runs (once per batched backward too)."""

    generate_vmap_rule = True
    backwards = 0

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        Count.backwards += 1
        return grad


class Tiny(nn.Module):
    """Three conv stages (16, 8, 4 pixels at 16 x 16) and a GAP + linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            self.fc.weight.mul_(20)
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        x = Count.apply(self.c(self.b(self.a(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny() -> Tiny:
    Count.backwards = 0
    return Tiny().eval()


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(1, 3, 32, 32)


def x16() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(1, 3, 16, 16)


# --- Score-CAM -----------------------------------------------------------------------------


@pytest.mark.parametrize("scoring", ["logits", "paper", "official"])
def test_scorecam_matches_package(scoring, x32):
    from pytorch_grad_cam import ScoreCAM as PackageScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    model = resnet18(scale=10.0)
    target = int(model(x32).argmax())
    package_target = {
        "logits": ClassifierOutputTarget(target),
        "paper": ClassifierOutputSoftmaxTarget(target),
        # softmax_k(log p_k) = p_k / sum p: proportional to the official raw probabilities
        "official": lambda out: torch.log_softmax(out, -1)[target],
    }[scoring]
    package = PackageScoreCAM(model, [model.layer2])
    package.batch_size = 64
    package_weights = []
    compute_weights = package.get_cam_weights
    package.get_cam_weights = lambda *args: (
        package_weights.append(compute_weights(*args)) or package_weights[-1]
    )
    reference = package(x32, [package_target])[0]

    evidence = Evidence(model, x32, ["layer2"], [target], options={"scoring": scoring, "align_corners": True})
    ours = evidence.result("scorecam", "layer2")[1][0]
    assert pearson(ours, reference) >= 0.99
    # The weights themselves agree (same masked passes, shared), and for the logits scoring
    # the map is far from the plain channel sum: the agreement is not a trivial one.
    weights = ScoreCAM().layer_weights(evidence, "layer2")[0]
    assert pearson(weights / weights.sum(), package_weights[0][0]) >= 0.99
    if scoring == "logits":
        plain = cam_from_sum(evidence.activations("layer2").sum(1), (32, 32))[1]
        assert pearson(ours, plain) < 0.9


def brute_force_scorecam(model: nn.Module, x: torch.Tensor, layer: str, target: int) -> torch.Tensor:
    """The official code's loop: one masked image at a time, constant channels skipped."""
    activations = Evidence(model, x, [layer]).activations(layer)[0]
    total = torch.zeros(activations.shape[1:])
    for channel in activations:
        mask = nn.functional.interpolate(channel[None, None], x.shape[-2:], mode="bilinear")[0, 0]
        if mask.max() == mask.min():
            continue
        mask = (mask - mask.min()) / (mask.max() - mask.min())
        with torch.no_grad():
            probability = model(x * mask).softmax(1)[0, target]
        total += probability * channel
    return total.relu()


def test_scorecam_equals_brute_force_loop(tiny):
    x = x16()
    # Zero some channels of layer "b" to exercise the skipped constant channels.
    with torch.no_grad():
        tiny.b[0].bias[:3] = -100.0
    result = explain(tiny, x, "b", ["scorecam"], target=4, options={"batch_size": 3})
    expected = brute_force_scorecam(tiny, x, "b", 4)
    torch.testing.assert_close(result.raw["scorecam"], expected, rtol=1e-4, atol=1e-6)
    run = result.extras["scorecam"]["b"]
    assert run.passes == 5 and run.approximation is None  # 8 channels, 3 constant


def test_scorecam_blank_pass_shared_by_constant_channels(tiny):
    with torch.no_grad():
        tiny.b[0].bias[:3] = -100.0
    assert scorecam_passes(tiny, x16(), "b", options={"scoring": "logits"}) == 6  # 5 + one blank
    assert scorecam_passes(tiny, x16(), "b") == 5


def test_scorecam_batches_the_masked_images(tiny):
    passes = scorecam_passes(tiny, x16(), "c")
    tiny.forwards = 0
    explain(tiny, x16(), "c", ["scorecam"], options={"batch_size": 5})
    assert tiny.forwards == 1 + -(-passes // 5)  # the shared forward + one per batch


def test_scorecam_progress_and_cancel(tiny):
    calls = []
    explain(tiny, x16(), "c", ["scorecam"], options={"batch_size": 4, "progress": lambda *a: calls.append(a)})
    total = scorecam_passes(tiny, x16(), "c")
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)

    tiny.forwards = 0
    with pytest.raises(Cancelled, match="stopped after 4 of"):
        explain(
            tiny, x16(), "c", ["scorecam"], options={"batch_size": 4, "progress": lambda done, _: done < 4}
        )
    assert tiny.forwards == 2  # the shared forward and one batch, then it stopped
    assert issubclass(Cancelled, ExplainerInputError)


def test_scorecam_max_channels_is_labelled_approximation(tiny):
    x = x16()
    evidence = Evidence(tiny, x, ["c"], [2], options={"max_channels": 4})
    weights = ScoreCAM().layer_weights(evidence, "c")[0]
    top = evidence.gradients("c").mean((2, 3))[0].topk(4).indices
    assert set(weights.nonzero().flatten().tolist()) <= set(top.tolist())
    result = explain(tiny, x, "c", ["scorecam"], target=2, options={"max_channels": 4})
    run = result.extras["scorecam"]["c"]
    assert run.passes <= 4 and run.channels == 4 and "approximation" in run.approximation
    assert scorecam_passes(tiny, x, "c", 2, options={"max_channels": 4}) == run.passes
    # Keeping every channel is the exact method.
    full = explain(tiny, x, "c", ["scorecam"], target=2, options={"max_channels": 16})
    exact = explain(tiny, x, "c", ["scorecam"], target=2)
    torch.testing.assert_close(full.maps["scorecam"], exact.maps["scorecam"])
    assert full.extras["scorecam"]["c"].approximation is None


def test_scorecam_halves_the_batch_when_memory_runs_out(tiny):
    class Limited(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("fake")
            return self.inner(x)

    limited = Limited(tiny).eval()
    result = explain(limited, x16(), "inner.c", ["scorecam"], target=1, options={"batch_size": 8})
    expected = explain(tiny, x16(), "c", ["scorecam"], target=1)
    torch.testing.assert_close(result.maps["scorecam"], expected.maps["scorecam"])
    assert result.extras["scorecam"]["inner.c"].batch_size == 2


def test_scorecam_options_and_counterfactual_are_checked(tiny):
    with pytest.raises(ExplainerInputError, match="scoring"):
        explain(tiny, x16(), "c", ["scorecam"], options={"scoring": "softmax"})
    with pytest.raises(ExplainerInputError, match="max_channels"):
        explain(tiny, x16(), "c", ["scorecam"], options={"max_channels": 0})
    with pytest.raises(MethodError, match="counterfactual"):
        explain(tiny, x16(), "c", ["scorecam"], counterfactual=True)
    assert default_batch_size(x16()) == CPU_BATCH_SIZE


def test_scorecam_threads_share_a_model(tiny):
    x = x16()
    expected = explain(tiny, x, "c", ["scorecam", "gradcam"], target=3).maps
    results: list = [None] * 4

    def run(i: int) -> None:
        results[i] = explain(tiny, x, "c", ["scorecam", "gradcam"], target=3, options={"batch_size": 2}).maps

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for maps in results:
        for name in expected:
            torch.testing.assert_close(maps[name], expected[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the CPU runs the same paths")
def test_cuda_matches_cpu(x32):
    methods = ["scorecam", "gradcam", "layercam"]
    cuda, cpu = resnet18(scale=10.0, device="cuda"), resnet18(scale=10.0)
    ours = explain(cuda, x32.cuda(), "layer3", methods, target=1, eigen_smooth=True)
    expected = explain(cpu, x32, "layer3", methods, target=1, eigen_smooth=True)
    assert ours.device.startswith("cuda") and ours.extras["scorecam"]["layer3"].batch_size > CPU_BATCH_SIZE
    pairs = [(ours, expected)]
    pairs += zip(
        explain_classes(cuda, x32.cuda(), "layer3", methods, 3),
        explain_classes(cpu, x32, "layer3", methods, 3),
        strict=True,
    )
    pairs += zip(
        sweep(cuda, x32.cuda(), ["layer2", "layer3"], methods).values(),
        sweep(cpu, x32, ["layer2", "layer3"], methods).values(),
        strict=True,
    )
    for on_cuda, on_cpu in pairs:
        assert on_cuda.target == on_cpu.target
        for name in methods:
            assert pearson(on_cuda.maps[name], on_cpu.maps[name]) >= 0.999


# --- many classes ---------------------------------------------------------------------------

METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam"]


def test_classes_equal_separate_calls_from_one_forward_one_backward(tiny):
    x = x16()
    score_batches = -(-scorecam_passes(tiny, x, "b", [7, 1, 4]) // CPU_BATCH_SIZE)
    tiny.forwards, Count.backwards = 0, 0
    results = explain_classes(tiny, x, "b", METHODS, [7, 1, 4])
    assert tiny.forwards == 1 + score_batches and Count.backwards == 1
    assert [r.target for r in results] == [7, 1, 4]
    for result in results:
        single = explain(tiny, x, "b", METHODS, result.target)
        for name in METHODS:
            torch.testing.assert_close(result.maps[name], single.maps[name], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(result.raw[name], single.raw[name], rtol=1e-4, atol=1e-6)


def test_top_k_classes_best_first(tiny):
    x = x16()
    logits = tiny(x)[0]
    tiny.forwards = 0
    results = explain_classes(tiny, x, "c", ["gradcam"], 5)
    assert [r.target for r in results] == logits.topk(5).indices.tolist()
    assert tiny.forwards == 1 and Count.backwards == 1
    torch.testing.assert_close(results[0].maps["gradcam"], explain(tiny, x, "c", ["gradcam"]).maps["gradcam"])


# --- layer sweep and fusion -----------------------------------------------------------------


def test_sweep_equals_separate_calls_from_one_forward_one_backward(tiny):
    x = x16()
    methods = ["gradcam", "layercam"]
    result = sweep(tiny, x, ["c", "a", "b"], methods, target=6)
    assert list(result) == ["a", "b", "c"]  # shallow to deep
    assert tiny.forwards == 1 and Count.backwards == 1
    for layer, explanation in result.items():
        single = explain(tiny, x, layer, methods, 6)
        assert explanation.layer == layer and explanation.target == 6
        for name in methods:
            torch.testing.assert_close(explanation.maps[name], single.maps[name], rtol=1e-4, atol=1e-5)


def test_sweep_on_resnet_stage_ends(x32):
    model = resnet18()
    layers = stage_ends(model, (64, 64))
    assert layers == ["relu", "layer1", "layer2", "layer3", "final"]
    result = sweep(model, x32, layers[1:], "layercam")
    shapes = [tuple(e.raw["layercam"].shape) for e in result.values()]
    assert shapes == [(8, 8), (4, 4), (2, 2), (1, 1)]  # coarse versus fine
    fused = fuse_layers(result)
    assert fused.shape == (32, 32) and fused.min() >= 0 and fused.max() == 1


def test_stage_ends_of_a_sequential_net():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
    ).eval()
    assert stage_ends(model, (16, 16)) == ["1", "4"]


def test_fuse_layers_formula():
    shallow = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    deep = torch.tensor([[3.0]])
    # max(tanh(2 * shallow / 4), deep / 3 = 1) is 1 everywhere: uniform evidence
    assert torch.equal(fuse_layers([shallow, deep], size=(2, 2)), torch.ones(2, 2))
    fused = fuse_layers([shallow, torch.zeros(1, 1)], size=(2, 2))
    torch.testing.assert_close(fused, torch.tanh(2 * shallow / 4) / torch.tanh(torch.tensor(2.0)))
    assert torch.equal(fuse_layers([torch.zeros(2, 2), torch.zeros(1, 1)]), torch.zeros(2, 2))


# --- eigen_smooth and aug_smooth ------------------------------------------------------------


def test_eigen_projection_matches_package():
    from pytorch_grad_cam.utils.svd_on_activations import (
        get_2d_projection,
        get_2d_projection_with_sign_correction,
    )

    torch.manual_seed(4)
    weighted = torch.randn(3, 16, 5, 6) + torch.linspace(0, 2, 30).view(1, 1, 5, 6)
    ours = eigen_projection(weighted)
    reference = torch.as_tensor(get_2d_projection_with_sign_correction(weighted.numpy()))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    unsigned = torch.as_tensor(get_2d_projection(weighted.numpy()))
    for i in range(3):
        assert abs(pearson(ours[i], unsigned[i])) > 0.9999
        assert ours[i].abs().amax() == ours[i].amax()  # the dominant sign is positive


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_eigen_smooth_matches_package(method, monkeypatch, x32):
    import pytorch_grad_cam
    from pytorch_grad_cam import base_cam, layer_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    # Our sign rule is the package's sign-corrected projection: set the package the same way.
    monkeypatch.setattr(base_cam, "get_2d_projection", get_2d_projection_with_sign_correction)
    monkeypatch.setattr(layer_cam, "get_2d_projection", get_2d_projection_with_sign_correction)
    model = resnet18(scale=10.0)
    package_class = {"gradcam": pytorch_grad_cam.GradCAM, "layercam": pytorch_grad_cam.LayerCAM}[method]
    reference = package_class(model, [model.layer2])(x32, [ClassifierOutputTarget(3)], eigen_smooth=True)[0]
    ours = explain(model, x32, "layer2", [method], 3, eigen_smooth=True).maps[method]
    plain = explain(model, x32, "layer2", [method], 3).maps[method]
    assert pearson(ours, reference) >= 0.99
    assert pearson(ours, plain) < 0.99  # the option does something


def test_eigen_smooth_keeps_the_counterfactual_sign(x32):
    """Before: the sign correction turned the counterfactual projection back (max diff 0.0).
    Grad-CAM's counterfactual weighted activations are the plain ones negated, so the map must be
    ReLU(-P) of the plain, sign-corrected projection P, computed here from the plain evidence."""
    model = resnet18(scale=10.0)
    plain = explain(model, x32, "layer2", ["gradcam"], 3, eigen_smooth=True).maps["gradcam"]
    counterfactual = explain(model, x32, "layer2", ["gradcam"], 3, counterfactual=True, eigen_smooth=True)
    evidence = Evidence(model, x32, ["layer2"], [3])
    weighted = evidence.gradients("layer2").mean((2, 3))[:, :, None, None] * evidence.activations("layer2")
    expected = cam_from_sum(-eigen_projection(weighted), (32, 32))[1][0]
    torch.testing.assert_close(counterfactual.maps["gradcam"], expected, rtol=1e-4, atol=1e-5)
    assert (counterfactual.maps["gradcam"] - plain).abs().max() > 0.5  # not the plain map
    assert pearson(counterfactual.maps["gradcam"], plain) < 0


def test_aug_smooth_matches_package(x32):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = resnet18(scale=10.0)
    reference = GradCAM(model, [model.layer3])(x32, [ClassifierOutputTarget(5)], aug_smooth=True)[0]
    ours = explain(model, x32, "layer3", ["gradcam"], 5, aug_smooth=True)
    plain = explain(model, x32, "layer3", ["gradcam"], 5)
    assert pearson(ours.maps["gradcam"], reference) >= 0.99
    assert pearson(ours.maps["gradcam"], plain.maps["gradcam"]) < 0.99
    assert ours.maps["gradcam"].max() == 1 and ours.maps["gradcam"].min() >= 0
    assert "aug_smooth" in ours.extras and ours.target == 5


def test_aug_smooth_progress_covers_all_inputs(tiny):
    calls = []
    explain(tiny, x16(), "c", ["scorecam"], aug_smooth=True, options={"progress": lambda *a: calls.append(a)})
    total = scorecam_passes(tiny, x16(), "c", aug_smooth=True)
    assert calls[-1][0] == calls[-1][1] and abs(calls[-1][1] - total) <= 6
