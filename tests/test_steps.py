"""'How this map was made': the steps add up to the map, and come from the same passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explainers import service
from explainers.methods.core import METHODS, normalise
from explainers.methods.steps import KEEP_VALUES, map_steps

# Every CAM with a channel sum: all but occlusion, which has no layer and is tested on its own.
SUM_CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam"]


@pytest.fixture(scope="module")
def resnet18():
    from models_zoo import load_model

    return load_model("resnet18", weights=None, device="cpu")


def recompose(steps) -> np.ndarray:
    """The map from the displayed pieces alone: Σ_k W^k A^k, ReLU, bilinear upsampling, min–max."""
    record = steps.record
    assert len(record.channels) == record.layer_channels, "every channel kept on these layers"
    if steps.weights is not None:
        terms = steps.weights[record.channels, None, None] * record.activations
    else:
        terms = np.stack([steps.contribution_map(int(c)) for c in record.channels])
    weighted_sum = terms.astype(np.float64).sum(0)
    scale = np.abs(steps.weighted_sum).max()
    np.testing.assert_allclose(weighted_sum, steps.weighted_sum, atol=1e-5 * scale, rtol=0)
    # The displayed sum, rectified, upsampled and normalised, by hand:
    rectified = torch.from_numpy(steps.weighted_sum).relu()
    assert np.array_equal(rectified.numpy(), steps.rectified)
    up = F.interpolate(rectified[None, None], size=steps.input_size, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(up[0].numpy(), steps.upsampled(), atol=1e-6)
    return normalise(up, torch.from_numpy(steps.weighted_sum).abs().max()[None])[0].numpy()


def check_adds_up(result: service.ExplanationResult, methods: list[str]) -> None:
    assert set(result.steps) == set(methods), result.errors
    for name in methods:
        steps = result.steps[name]
        assert np.abs(steps.shown() - result.maps[name]).max() <= 1e-5, name
        assert np.abs(recompose(steps) - result.maps[name]).max() <= 1e-5, name
        assert steps.weighted_sum.shape == result.raw[name].shape
        np.testing.assert_allclose(steps.rectified, result.raw[name], atol=1e-6)
        assert 0 < steps.top_share() <= 1 and 0 <= steps.negative_share() <= 1
        assert np.isclose(steps.magnitudes.sum(), np.abs(steps.contributions).sum()) or name in (
            "layercam",
            "hirescam",
        ), "a channel weight times a rectified map has one sign per channel"


@pytest.mark.parametrize("model_name", ["lite0", "resnet18"])
def test_steps_add_up_to_the_map_for_every_cam(model_name, lite0, resnet18, chelsea):
    zoo = lite0 if model_name == "lite0" else resnet18
    result = service.run_explanation(zoo, chelsea, zoo.default_layer, SUM_CAMS, None)
    assert not result.errors
    check_adds_up(result, SUM_CAMS)
    # The methods share one record of the layer (one copy of A and g, not one per method).
    assert len({id(s.record) for s in result.steps.values()}) == 1
    scored = service.run_scorecam(zoo, chelsea, zoo.default_layer, result.target, max_channels=8)
    check_adds_up(scored, ["scorecam"])
    # Score-CAM with max_channels weighs 8 channels: the others add nothing.
    assert np.count_nonzero(scored.steps["scorecam"].weights) <= 8


def test_counterfactual_steps_add_up(lite0, chelsea):
    result = service.run_explanation(lite0, chelsea, "final", ["gradcam", "layercam"], 282, True)
    check_adds_up(result, ["gradcam", "layercam"])
    normal = service.run_explanation(lite0, chelsea, "final", ["gradcam"], 282)
    np.testing.assert_allclose(result.steps["gradcam"].weights, -normal.steps["gradcam"].weights, rtol=1e-6)


def test_steps_run_no_pass_of_their_own(lite0, chelsea, monkeypatch):
    forwards, backwards = [], []
    handle = lite0.model.register_forward_hook(lambda *args: forwards.append(1))
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(1) or grad(*a, **k))
    try:
        result = service.run_explanation(lite0, chelsea, "final", ["gradcam", "gradcam++", "layercam"], None)
    finally:
        handle.remove()
    assert (len(forwards), len(backwards)) == (1, 1)
    assert result.steps["gradcam"].record.gradients is not None
    # CAM alone runs no backward pass, and its steps do not start one: no gradients to show.
    backwards.clear()
    cam_only = service.run_explanation(lite0, chelsea, "final", ["cam"], None)
    assert not backwards and cam_only.steps["cam"].record.gradients is None
    assert cam_only.steps["cam"].own_step(0) is None and cam_only.steps["cam"].contribution_map(0) is not None


def test_each_methods_own_step_makes_its_weights(lite0, chelsea):
    result = service.run_explanation(
        lite0, chelsea, "final", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"], None
    )
    for name in ("gradcam", "gradcam++", "xgradcam"):
        steps = result.steps[name]
        for channel in steps.top_channels(3):
            own, gradient = steps.own_step(int(channel)), steps.gradient_map(int(channel))
            made = {
                "gradcam": own.mean(),  # α_k is the mean gradient
                "gradcam++": (own * np.maximum(gradient, 0)).sum(),  # w_k = Σ α_ij ReLU(g_ij)
                "xgradcam": own.sum(),  # α_k = Σ (A_ij / ΣA) g_ij
            }[name]
            assert np.isclose(made, steps.weights[channel], rtol=1e-4, atol=1e-9), name
            np.testing.assert_allclose(
                steps.contribution_map(int(channel)), steps.weights[channel] * steps.channel_map(int(channel))
            )
    for name in ("layercam", "hirescam"):
        steps = result.steps[name]
        channel = int(steps.top_channels(1)[0])
        np.testing.assert_allclose(steps.own_step(channel), steps.contribution_map(channel), rtol=1e-6)
        assert np.isclose(steps.contribution_map(channel).sum(), steps.contributions[channel], rtol=1e-4)
    top = result.steps["gradcam"].top_channels(8)
    share = result.steps["gradcam"].magnitudes[top].sum() / result.steps["gradcam"].magnitudes.sum()
    assert len(top) == 8 and np.isclose(result.steps["gradcam"].top_share(8), share)


def test_a_large_layer_keeps_only_its_top_channels_and_still_adds_up(lite0, chelsea):
    from explainers.methods.core import Evidence

    x = lite0.preprocess(chelsea)
    evidence = Evidence(lite0.model, x, ["final"])
    for name in ("gradcam", "layercam"):
        evidence.result(name, "final")
    budget = 49 * 100  # 100 channels of 7×7
    steps = map_steps(evidence, ["gradcam", "layercam"], "final", budget=budget)
    record = steps["gradcam"].record
    assert len(record.channels) == 100 and record.layer_channels == 1280 and 1280 * 49 > budget
    for name, step in steps.items():
        raw, shown = evidence.result(name, "final")
        assert np.abs(step.shown() - shown[0].numpy()).max() <= 1e-5
        assert set(step.top_channels(8).tolist()) <= set(record.channels.tolist()), "thumbnails kept"
    assert steps["gradcam"].channel_map(int(np.setdiff1d(np.arange(1280), record.channels)[0])) is None
    assert KEEP_VALUES >= 1280 * 49


def test_guided_maps_have_no_channel_steps(lite0, chelsea):
    result = service.run_explanation(lite0, chelsea, "final", ["gradcam", "guided_backprop"], None)
    assert set(result.steps) == {"gradcam"}
    assert all(METHODS[m].kind == "cam" for m in result.steps)
