"""Cascading randomisation (Adebayo et al. 2018): order of steps, isolation, and the lesson."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, module_state
from torch import nn

from explainers.errors import LayerError
from explainers.sanity import randomisation_steps, reinitialise, sanity_check


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(self.body(self.stem(x))).flatten(1))


def test_steps_go_from_the_output_back_opening_containers(lite0):
    assert randomisation_steps(TwoConvs()) == [("fc",), ("body.1",), ("body.0",), ("stem.0",)]
    steps = randomisation_steps(lite0.model)
    assert steps[:4] == [("_fc",), ("_bn1",), ("_conv_head",), ("_blocks.15",)]
    assert steps[-1] == ("_conv_stem",) and len(steps) == 21


def test_reinitialise_resets_batch_norm_statistics():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.fill_(3.0)
    bn.weight.data.fill_(2.0)
    reinitialise(bn)
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.weight, torch.ones(4))


def test_shared_model_and_global_rng_untouched(gap_linear):
    state, weights = module_state(gap_linear), {k: v.clone() for k, v in gap_linear.state_dict().items()}
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    result = sanity_check(gap_linear, x, "conv", ["gradcam", "hirescam"], keep_maps=True)
    assert torch.equal(torch.rand(3), expected_next)  # the randomisation drew from a forked RNG
    assert_untouched(gap_linear, state, weights)
    assert result.steps == (("fc",), ("conv",))
    assert set(result.correlations) == {"gradcam", "hirescam"}
    assert all(len(values) == 2 for values in result.correlations.values())
    assert len(result.maps["gradcam"]) == 3  # original plus one per step
    assert result.step_names == ["fc", "conv"]


def test_seeded_and_reproducible(gap_linear):
    x = torch.randn(1, 3, 8, 8)
    first = sanity_check(gap_linear, x, "conv", ["gradcam"], seed=1)
    assert sanity_check(gap_linear, x, "conv", ["gradcam"], seed=1).correlations == first.correlations


def test_unknown_step_names_close_matches(gap_linear):
    with pytest.raises(LayerError, match="Did you mean 'fc'"):
        sanity_check(gap_linear, torch.randn(1, 3, 8, 8), "conv", ["gradcam"], steps=[["fcc"]])


def test_gradcam_changes_and_guided_backprop_barely_does(lite0, chelsea):
    """The lesson of Adebayo et al.: randomising the top layers destroys Grad-CAM, not guided backprop."""
    x = lite0.preprocess(chelsea)
    result = sanity_check(lite0.model, x, "_bn1", ["gradcam", "guided_backprop"], max_steps=3)
    gradcam, guided = result.correlations["gradcam"], result.correlations["guided_backprop"]
    assert result.step_names == ["_fc", "_bn1", "_conv_head"]
    assert min(guided) > 0.9
    assert max(gradcam[1:]) < 0.4
    assert all(g - c > 0.3 for g, c in zip(guided, gradcam, strict=True))
