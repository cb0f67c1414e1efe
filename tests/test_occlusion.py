"""Occlusion sensitivity: exact answers on a hand-built model, and Captum's `Occlusion` as the oracle."""

from __future__ import annotations

import pytest
import torch
from conftest import frozen, pearson
from torch import nn

from explainers import Cancelled, ExplainerInputError, explain
from explainers.methods.occlusion import default_window, occlusion_passes, positions

captum_attr = pytest.importorskip("captum.attr")


class CornerModel(nn.Module):
    """Two classes: class 0's logit is the mean of the top-left 8×8 pixels (channel 0), class 1's
    that of the bottom-right ones; a map for class 0 must light the top-left corner."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Conv2d(3, 1, 1)  # a layer to name: occlusion ignores it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, 0, :8, :8].mean((1, 2))
        other = x[:, 0, -8:, -8:].mean((1, 2))
        unused = 0 * self.anchor(x).mean((1, 2, 3))
        return torch.stack([corner, other], 1) * 4 + unused[:, None]


@pytest.fixture
def corner() -> nn.Module:
    return frozen(CornerModel())


def test_positions_cover_every_pixel_as_captum():
    assert positions(224, 32, 16) == list(range(0, 193, 16))  # 13 starts, the last at 224 - 32
    assert positions(10, 4, 4) == [0, 4, 8]  # the last window is cut at the border
    assert default_window((224, 224)) == (32, 16)
    assert occlusion_passes((224, 224)) == 169


def test_map_lights_the_region_that_raises_the_class(corner):
    x = torch.ones(1, 3, 32, 32)
    result = explain(corner, x, "anchor", ["occlusion"], target=0, options={"occlusion_window": 8})
    shown = result.maps["occlusion"]
    assert shown.shape == (32, 32) and float(shown.max()) == 1.0 and float(shown.min()) == 0.0
    # Orientation: row 0 is the top, column 0 the left, as in the image.
    assert shown[:8, :8].mean() > 0.5 and shown[16:, 16:].max() == 0
    drops = result.raw["occlusion"]  # (rows, cols): the drop at each window position
    assert drops.shape == (7, 7) and drops[0, 0] == drops.max() > 0
    run = result.extras["occlusion"]
    assert (run.window, run.stride, run.passes) == (8, 4, 49)


def test_counterfactual_lights_what_lowers_the_class(corner):
    x = torch.ones(1, 3, 32, 32)
    options = {"occlusion_window": 8}
    result = explain(corner, x, "anchor", ["occlusion"], target=1, counterfactual=True, options=options)
    # Covering the top-left corner lowers class 0's logit, so class 1's probability rises there.
    assert result.maps["occlusion"][:8, :8].mean() > 0.5
    assert result.maps["occlusion"][-8:, -8:].max() == 0


def captum_occlusion(
    model: nn.Module, x: torch.Tensor, target: int, window: int, stride: int
) -> torch.Tensor:
    """Captum's attribution of the class probability, (H, W) (the same on every colour channel)."""
    with torch.no_grad():
        attribution = captum_attr.Occlusion(lambda inputs: model(inputs).softmax(-1)).attribute(
            x,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            target=target,
            baselines=0.0,
            perturbations_per_eval=32,
        )[0]
    assert torch.equal(attribution[0], attribution[2])
    return attribution[0]


def test_agrees_with_captum_on_the_default_model_at_default_settings(lite0, chelsea):
    x = lite0.preprocess(chelsea)
    target = int(lite0.model(x).argmax())
    ours = explain(lite0.model, x, "final", ["occlusion"], target=target)  # window 32, stride 16
    run = ours.extras["occlusion"]
    assert (run.window, run.stride, run.passes) == (32, 16, 169)
    theirs = captum_occlusion(lite0.model, x, target, 32, 16)
    assert pearson(run.attribution[0], theirs) >= 0.99
    torch.testing.assert_close(run.attribution[0], theirs, atol=2e-4, rtol=1e-3)
    # The shown map: Captum's attribution rectified and scaled to [0, 1], the same way up.
    expected = theirs.relu() / theirs.relu().max()
    assert (ours.maps["occlusion"] - expected).abs().max() < 1e-3
    assert ours.maps["occlusion"].flatten().argmax() == expected.flatten().argmax()


def test_agrees_with_captum_where_the_last_window_is_cut(corner):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 30, 30)
    options = {"occlusion_window": 8, "occlusion_stride": 6}  # starts 0, 6, ..., 24: the last is cut
    ours = explain(corner, x, "anchor", ["occlusion"], target=0, options=options)
    theirs = captum_occlusion(corner, x, 0, 8, 6)
    assert pearson(ours.extras["occlusion"].attribution[0], theirs) >= 0.99
    torch.testing.assert_close(ours.extras["occlusion"].attribution[0], theirs, atol=1e-6, rtol=1e-5)


def test_options_and_progress(corner):
    x = torch.rand(1, 3, 16, 16)
    seen = []
    result = explain(
        corner,
        x,
        "anchor",
        ["occlusion"],
        target=0,
        options={"occlusion_window": 4, "batch_size": 5, "progress": lambda d, t: seen.append((d, t))},
    )
    assert seen[0] == (0, 49) and seen[-1] == (49, 49) and len(seen) == 1 + 10  # ceil(49 / 5) batches
    assert result.extras["occlusion"].batch_size == 5
    blurred = explain(
        corner, x, "anchor", ["occlusion"], 0, options={"occlusion_window": 4, "occlusion_baseline": "blur"}
    )
    assert "blurred" in blurred.extras["occlusion"].baseline
    with pytest.raises(Cancelled, match="stopped after 0 of 49"):
        explain(
            corner,
            x,
            "anchor",
            ["occlusion"],
            0,
            options={"occlusion_window": 4, "progress": lambda d, t: False},
        )


@pytest.mark.parametrize(
    "options, words",
    [
        ({"occlusion_window": 40}, "larger than the input"),
        ({"occlusion_window": 4, "occlusion_stride": 6}, "larger than the window"),
        ({"occlusion_window": 0}, "positive integer"),
        ({"occlusion_baseline": "pink"}, "Unknown occlusion baseline"),
        ({"occlusion_score": "votes"}, "Unknown occlusion score"),
    ],
)
def test_bad_options_are_refused_clearly(corner, options, words):
    with pytest.raises(ExplainerInputError, match=words):
        explain(corner, torch.rand(1, 3, 16, 16), "anchor", ["occlusion"], 0, options=options)


def test_classes_share_one_set_of_passes(corner):
    from explainers import explain_classes

    x = torch.rand(1, 3, 16, 16)
    calls = []
    model = corner
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        both = explain_classes(model, x, "anchor", ["occlusion"], [0, 1], options={"occlusion_window": 8})
    finally:
        handle.remove()
    assert sum(calls) == 1 + 9  # the forward pass, then the nine occluded images once for both classes
    for explanation in both:
        alone = explain(
            model, x, "anchor", ["occlusion"], explanation.target, options={"occlusion_window": 8}
        )
        torch.testing.assert_close(explanation.maps["occlusion"], alone.maps["occlusion"])
