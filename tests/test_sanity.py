"""Cascading randomisation (Adebayo et al. 2018): steps, isolation, the four measures and the verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GapLinear, assert_untouched, frozen, module_state
from torch import nn

from explainers.errors import LayerError
from explainers.methods.metrics import hog_similarity, scaled_saliency, ssim
from explainers.methods.sanity import (
    MEASURES,
    SanityResult,
    cascade_copies,
    compare_maps,
    judge,
    randomisation_steps,
    reinitialise,
    sanity_check,
)
from explainers.services.lessons import sample, sanity_lesson
from models_zoo import Preprocessing, load_model, wrap_model


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
    assert all(set(result.similarities[m]) == set(MEASURES) for m in ("gradcam", "hirescam"))
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


# --- the four measures --------------------------------------------------------------------------


def test_ssim_matches_the_formula_on_one_window():
    """A 7 x 7 map is one window of scikit-image's default: SSIM is the formula, by hand, with
    sample (n - 1) statistics and C1 = (0.01)², C2 = (0.03)² for data range 1."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(7, 7, generator=generator, dtype=torch.float64)
    b = (0.6 * a + 0.4 * torch.rand(7, 7, generator=generator, dtype=torch.float64)).clamp(0, 1)
    x, y = a.numpy().ravel(), b.numpy().ravel()
    mx, my = x.mean(), y.mean()
    vx, vy, cov = x.var(ddof=1), y.var(ddof=1), np.cov(x, y, ddof=1)[0, 1]
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_hog_similarity_sees_edges_and_their_orientation():
    stripes = torch.zeros(64, 64)
    stripes[:, ::8] = 1.0  # vertical lines
    assert hog_similarity(stripes, stripes) == pytest.approx(1.0)
    assert hog_similarity(stripes, 0.5 * stripes) == pytest.approx(1.0, abs=1e-6)  # contrast-invariant
    assert hog_similarity(stripes, stripes.T) < 0.3  # the same lines turned: other orientations
    assert hog_similarity(stripes, torch.zeros(64, 64)) == 0.0  # no edges: nothing to correlate


def test_guided_maps_are_scaled_by_their_99th_percentile():
    magnitude = torch.linspace(0, 1, 1000).reshape(10, 100)
    magnitude[0, 0] = 100.0  # one extreme pixel
    guided = torch.stack([magnitude, -magnitude, torch.zeros_like(magnitude)], -1) / 2
    scaled = scaled_saliency(guided)
    assert scaled.max() == 1.0 and scaled.mean() > 0.45  # the max-scaled map would average 0.005
    cam = torch.rand(5, 5)
    assert torch.equal(scaled_saliency(cam), cam)


def test_signed_and_absolute_spearman_coincide_for_cams_not_for_guided_maps():
    generator = torch.Generator().manual_seed(1)
    cam, other = torch.rand(16, 16, generator=generator), torch.rand(16, 16, generator=generator)
    measures = compare_maps(cam, other)
    assert measures["spearman"] == measures["spearman_abs"]
    guided = torch.randn(16, 16, 3, generator=generator)
    flipped = compare_maps(guided, -guided)  # the same magnitudes, the opposite signs
    assert flipped["spearman_abs"] == pytest.approx(1.0) and flipped["spearman"] == pytest.approx(-1.0)


# --- the cascade keeps the model a function of the image --------------------------------------


def test_recalibrated_cascade_keeps_outputs_depending_on_the_image(lite0, chelsea):
    """The issue: re-initialising without BatchNorm statistics shrank the spread of the logits
    across images from 1.12 to 0.006 after 8 steps. With recalibration it stays of order 1."""
    images = torch.cat([lite0.preprocess(chelsea), lite0.preprocess(sample("rocket.jpg"))])
    steps = randomisation_steps(lite0.model)[:8]

    def spread_after(recalibrate: bool) -> float:
        *_, randomised = cascade_copies(lite0.model, steps, 0, lite0.input_size, recalibrate=recalibrate)
        with torch.no_grad():
            logits = randomised(images)
        return float((logits[0] - logits[1]).abs().max())

    assert spread_after(True) > 0.1
    assert spread_after(True) > 20 * spread_after(False)


# --- the verdict: holds, fails, cannot judge ----------------------------------------------------


class PositiveScale(nn.Module):
    """Multiplies the logits by exp(s): re-initialised, it rescales them but ranks nothing anew."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.log_scale, -1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_scale.exp()


class ScaledHead(nn.Module):
    """GapLinear under two positive scales: Grad-CAM's map cannot depend on the top two units."""

    def __init__(self) -> None:
        super().__init__()
        self.body = GapLinear()
        self.top = PositiveScale()
        self.top2 = PositiveScale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top2(self.top(self.body(x)))


def test_verdict_holds_for_gradcam_on_a_trained_model(lite0, chelsea):
    result = sanity_check(
        lite0.model, lite0.preprocess(chelsea), "_conv_head", ["gradcam", "guided_backprop"],
        max_steps=3, seeds=(0, 1),
    )  # fmt: skip
    gradcam = judge(result, "gradcam")
    assert gradcam.status == "changes" and gradcam.passes, gradcam.reason
    assert all(gradcam.overall[m] < 0.5 for m in ("spearman_abs", "ssim", "hog"))
    guided = judge(result, "guided_backprop")  # Adebayo et al.: guided backprop fails
    assert guided.status == "stays" and not guided.passes, guided.reason
    assert "3 steps and 2 seeds" in guided.reason


def test_verdict_fails_when_the_map_ignores_the_randomised_layers():
    torch.manual_seed(0)
    model = frozen(ScaledHead())
    steps = randomisation_steps(model)
    assert steps[:2] == [("top2",), ("top",)]
    result = sanity_check(
        model, torch.randn(1, 3, 12, 12), "body.conv", ["gradcam"], steps=steps[:2], seeds=(0, 1)
    )
    verdict = judge(result, "gradcam")
    assert verdict.status == "stays" and not verdict.passes, verdict.reason
    assert verdict.overall["spearman_abs"] == pytest.approx(1.0) and verdict.overall["ssim"] == pytest.approx(
        1.0
    )


def test_verdict_cannot_judge_blank_untrained_or_too_short():
    torch.manual_seed(0)
    model = frozen(GapLinear())
    with torch.no_grad():
        model.conv.weight.abs_()
        model.conv.bias.fill_(0.1)  # non-negative activations everywhere...
        model.fc.weight[0] = -1.0  # ...and a class they only lower: Grad-CAM is blank
        model.fc.weight[1] = 1.0  # one they raise: Grad-CAM shows the activations
    x = torch.rand(1, 3, 8, 8)
    blank = sanity_check(model, x, "conv", ["gradcam"], target=0)
    assert blank.blank["gradcam"]
    assert judge(blank, "gradcam").status == "cannot judge" and "blank" in judge(blank, "gradcam").reason

    result = sanity_check(model, x, "conv", ["gradcam"], target=1)
    assert not result.blank["gradcam"]
    untrained = judge(result, "gradcam", trained=False)
    assert untrained.status == "cannot judge" and "random weights" in untrained.reason
    short = sanity_check(model, x, "conv", ["gradcam"], target=1, max_steps=1)
    assert judge(short, "gradcam").status == "cannot judge" and "at least 2" in judge(short, "gradcam").reason


def test_verdict_reads_the_whole_cascade_and_the_seeds():
    def result(values_per_seed: list[list[float]], blank_after: float = 0.0) -> SanityResult:
        measures = {m: values_per_seed for m in MEASURES}
        steps = tuple((f"unit{i}",) for i in range(len(values_per_seed[0])))
        return SanityResult(steps, {"m": measures}, 0, seeds=(0, 1), blank_after={"m": blank_after})

    # One step dips below the threshold, the cascade does not: the map stays.
    stays = judge(result([[0.9, 0.9, 0.1, 0.9], [0.9, 0.9, 0.9, 0.9]]), "m")
    assert stays.status == "stays" and stays.overall["ssim"] == pytest.approx(0.8)
    # One seed is high, the mean over seeds is not.
    changes = judge(result([[0.2, 0.1, 0.0, 0.1], [0.6, 0.3, 0.2, 0.1]]), "m")
    assert changes.status == "changes" and changes.overall["hog"] == pytest.approx(0.2)
    blank = judge(result([[0.0, 0.0], [0.0, 0.0]], blank_after=0.75), "m")
    assert blank.status == "cannot judge" and "75%" in blank.reason


# --- the lesson: holds, fails, not measurable ----------------------------------------------------


class ScaledStack(nn.Module):
    """GapLinear under four positive scales: the lesson's four steps leave every map as it was."""

    def __init__(self) -> None:
        super().__init__()
        self.body = GapLinear(channels=6, classes=4)
        self.scales = nn.Sequential(*(PositiveScale() for _ in range(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scales(self.body(x))


def test_sanity_lesson_holds_on_the_trained_default_model(lite0):
    lesson = sanity_lesson(lite0)
    assert lesson.holds, lesson.verdict
    assert lesson.measurements["SSIM, Grad-CAM"] < 0.5 < lesson.measurements["SSIM, guided backprop"]
    assert f"{lesson.measurements['HOG similarity, Grad-CAM']:.2f}" in lesson.verdict
    assert "as claimed" in lesson.verdict


def test_sanity_lesson_fails_when_no_map_depends_on_the_randomised_layers():
    torch.manual_seed(0)
    preprocessing = Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    zoo = wrap_model("scaled", ScaledStack(), preprocessing, ("a", "b", "c", "d"), "body.conv")
    lesson = sanity_lesson(zoo)
    assert not lesson.holds
    assert "Not as claimed here: Grad-CAM stays close to the original" in lesson.verdict
    assert lesson.measurements["Spearman ρ (absolute), Grad-CAM"] == pytest.approx(1.0)


def test_sanity_lesson_is_not_measurable_on_random_weights():
    torch.manual_seed(0)
    lesson = sanity_lesson(load_model("efficientnet_lite0", weights=None, device="cpu"))
    assert lesson.holds is None  # cannot judge, shown as such on the page
    assert "random weights" in lesson.verdict
    assert "as claimed" not in lesson.verdict and not lesson.measurements
