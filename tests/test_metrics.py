"""Faithfulness scores, region energy and rank correlation: known arrays, then real maps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explainers import explain
from explainers.errors import Cancelled, ExplainerInputError
from explainers.methods.metrics import (
    auc,
    average_drop,
    class_scores,
    confidence,
    deletion_insertion,
    energy_in_box,
    faithfulness,
    increase_in_confidence,
    rank,
    saliency,
    scaled_saliency,
    spearman,
    summarise,
)


class LeftHalfMean(nn.Module):
    """A two-class 'model' whose class-0 probability is the mean of channel 0 over the left half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0, :, : x.shape[-1] // 2].mean((1, 2)).clamp(1e-12, 1 - 1e-12)
        return torch.stack([m.log(), (1 - m).log()], 1)


def test_rank_averages_ties():
    assert rank(torch.tensor([3.0, 1.0, 2.0, 2.0])).tolist() == [4.0, 1.0, 2.5, 2.5]


def test_spearman_known_values():
    a = torch.arange(10.0)
    assert spearman(a, a.exp()) == pytest.approx(1.0)  # any increasing transform
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.ones(10)) == 0.0  # a constant map has no ranking
    # By hand: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): Pearson = 4.5 / sqrt(4.5 * 5).
    rho = spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
    assert rho == pytest.approx(4.5 / (4.5 * 5) ** 0.5)


def test_energy_in_box():
    uniform = torch.ones(10, 20)
    assert energy_in_box(uniform, (0, 0, 10, 5)) == pytest.approx(50 / 200)
    inside = torch.zeros(10, 20)
    inside[2:4, 3:6] = 1
    assert energy_in_box(inside, (3, 2, 6, 4)) == pytest.approx(1.0)
    assert energy_in_box(inside, (0, 0, 3, 10)) == 0.0
    assert energy_in_box(uniform, (-5, -5, 100, 100)) == pytest.approx(1.0)  # clipped to the map
    assert energy_in_box(torch.zeros(4, 4), (0, 0, 2, 2)) == 0.0
    guided = torch.zeros(10, 20, 3)
    guided[0, 0] = torch.tensor([-2.0, 1.0, 1.0])
    guided[9, 19] = torch.tensor([1.0, 0.0, 0.0])
    assert energy_in_box(guided, (0, 0, 1, 1)) == pytest.approx(0.8)  # |g| summed over channels
    with pytest.raises(ExplainerInputError, match="empty or outside"):
        energy_in_box(uniform, (5, 5, 5, 8))
    with pytest.raises(ExplainerInputError, match="empty or outside"):
        energy_in_box(uniform, (30, 0, 40, 5))


def test_saliency_of_guided_map_is_normalised():
    guided = torch.tensor([[[1.0, -1.0, 0.0], [0.5, 0.0, 0.0]]])  # (1, 2, 3)
    assert saliency(guided).tolist() == [[1.0, 0.25]]


def test_average_drop_and_increase_known_numbers():
    y, o = torch.tensor([0.5, 0.8]), torch.tensor([0.25, 0.9])
    assert average_drop(y, o) == pytest.approx(25.0)  # (50 % + 0 %) / 2
    assert increase_in_confidence(y, o) == pytest.approx(50.0)
    assert average_drop(0.5, 0.25) == pytest.approx(50.0)  # one image
    assert increase_in_confidence(0.5, 0.25) == 0.0


def test_constant_map_equals_multiplying_by_that_constant(lite0, chelsea):
    x = lite0.preprocess(chelsea)
    target = 281  # tabby
    original, masked = confidence(lite0.model, x, torch.full((2, 224, 224), 0.5), target)
    by_hand = class_scores(lite0.model, torch.cat([x, 0.5 * x]), target)
    assert original == pytest.approx(float(by_hand[0]), abs=1e-5)
    assert masked.tolist() == pytest.approx([float(by_hand[1])] * 2, abs=1e-5)
    assert average_drop(original, masked[0]) == pytest.approx(
        max(0.0, float(by_hand[0] - by_hand[1])) / float(by_hand[0]) * 100, abs=1e-3
    )


def test_auc_of_known_curves():
    f = torch.linspace(0, 1, 11)
    assert auc(f, f) == pytest.approx(0.5)
    assert auc(f, 1 - f) == pytest.approx(0.5)
    assert auc(f, torch.ones(11)) == pytest.approx(1.0)
    assert auc(f, f**2) == pytest.approx(0.335)  # trapezoid rule: 1/3 + 1/(6 * 10**2)


def test_deletion_insertion_known_curves():
    model = LeftHalfMean().eval()
    x = torch.full((1, 3, 8, 8), 0.75)
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    # Deleting the left half first: the score falls linearly from 0.75 to 0 at f = 1/2.
    curves = deletion_insertion(model, x, left, target=0, steps=8, blur=0)
    assert curves["fractions"].tolist() == pytest.approx([i / 8 for i in range(9)])
    assert curves["deletion"].tolist() == pytest.approx(
        [0.75, 0.5625, 0.375, 0.1875, 0, 0, 0, 0, 0], abs=1e-6
    )
    assert curves["deletion_auc"] == pytest.approx(0.1875)
    # Insertion from a (blurred) constant image is constant.
    assert curves["insertion_auc"] == pytest.approx(0.75)
    # The wrong map deletes the right half first: the score holds until f = 1/2.
    assert deletion_insertion(model, x, 1 - left, 0, steps=8, blur=0)["deletion_auc"] == pytest.approx(0.5625)


def test_insertion_restores_pixels_into_the_blurred_image():
    model = LeftHalfMean().eval()
    x = torch.zeros(1, 3, 8, 8)
    x[..., :4] = 1.0  # bright left half: blurring spreads it, inserting puts it back
    left = torch.zeros(8, 8)
    left[:, :4] = 1
    curves = deletion_insertion(model, x, left, 0, steps=8, blur=1.0)
    assert curves["insertion"][0] < 0.99
    assert curves["insertion"][4:].tolist() == pytest.approx([1.0] * 5, abs=1e-6)


def test_deletion_insertion_batches_and_checks_sizes(gap_linear):
    calls = []
    gap_linear.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    x = torch.randn(1, 3, 16, 16)
    deletion_insertion(gap_linear, x, torch.rand(16, 16), 0, steps=20, batch_size=8)
    assert calls == [8, 8, 5, 8, 8, 5]  # 21 images per curve, in batches, not one by one
    with pytest.raises(ExplainerInputError, match="differ in size"):
        deletion_insertion(gap_linear, x, torch.rand(8, 8), 0)


def random_smooth_map(seed: int, size: int = 224) -> torch.Tensor:
    """A random map as smooth as a 7×7 CAM: the fair baseline (pixel noise deletes too fast)."""
    noise = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def real_and_random(zoo, names: list[str], seeds: int, steps: int) -> tuple[dict, dict]:
    """Mean scores of Grad-CAM and of random smooth maps over the named samples."""
    from explainers.services.images import load_image
    from explainers.services.samples import list_samples

    samples = list_samples()
    real, random = [], []
    for name in names:
        x = zoo.preprocess(load_image(samples[name]))
        result = explain(zoo.model, x, zoo.default_layer, ["gradcam"])
        maps = {"gradcam": result.maps["gradcam"]} | {
            f"random{s}": random_smooth_map(s) for s in range(seeds)
        }
        scores = faithfulness(zoo.model, x, maps, result.target, steps=steps)
        real.append(scores.pop("gradcam"))
        random += scores.values()
    return summarise(real), summarise(random)


def test_gradcam_beats_random_maps(lite0):
    real, random = real_and_random(lite0, ["Two cats (two instances)", "Cup of espresso"], seeds=2, steps=6)
    assert real["deletion_auc"] < random["deletion_auc"] - 0.05
    assert real["insertion_auc"] > random["insertion_auc"] + 0.05


@pytest.mark.slow
def test_gradcam_beats_random_maps_on_every_sample(lite0):
    from explainers.services.samples import list_samples

    real, random = real_and_random(lite0, list(list_samples()), seeds=3, steps=16)
    assert real["deletion_auc"] < random["deletion_auc"] - 0.03
    assert real["insertion_auc"] > random["insertion_auc"] + 0.03
    assert real["average_drop"] < random["average_drop"] + 20


# --- all maps in one set of batched passes; guided and blank maps -----------------------------


def test_batched_faithfulness_equals_each_maps_own_curves(gap_linear):
    """One set of passes for every map: the same curves as `deletion_insertion` map by map, and
    the same Y and O as `confidence`, with the shared curve ends scored once."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 16, 16, generator=generator)
    maps = {f"m{i}": torch.rand(16, 16, generator=generator) for i in range(3)}
    calls = []
    handle = gap_linear.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    progress = []
    scores = faithfulness(
        gap_linear, x, maps, 1, steps=6, blur=1.0, batch_size=10, progress=lambda *a: progress.append(a)
    )
    handle.remove()
    total = 3 + 3 + 2 * 3 * 5  # x, baseline, blurred; one masked image per map; inner curve steps
    assert sum(calls) == total and max(calls) == 10
    assert progress[0] == (0, total) and progress[-1] == (total, total)
    original, masked = confidence(gap_linear, x, torch.stack(list(maps.values())), 1)
    for i, (name, heatmap) in enumerate(maps.items()):
        alone = deletion_insertion(gap_linear, x, heatmap, 1, steps=6, blur=1.0)
        for key in ("deletion", "insertion"):
            torch.testing.assert_close(scores[name].curves[key], alone[key], rtol=1e-5, atol=1e-7)
        assert scores[name].deletion_auc == pytest.approx(alone["deletion_auc"], abs=1e-6)
        assert scores[name].original == pytest.approx(original, abs=1e-6)
        assert scores[name].masked == pytest.approx(float(masked[i]), abs=1e-6)
    with pytest.raises(Cancelled):
        faithfulness(gap_linear, x, maps, 1, steps=6, progress=lambda done, total: done == 0)


def test_guided_maps_are_left_out_with_a_note(lite0, chelsea):
    """The issue: divided by its maximum a guided map averages 0.01-0.06, so image ⊙ map is nearly
    black and Average Drop reads 95-98 % whatever the map shows. Scaled by its 99th percentile the
    mask is no longer nearly black, yet its scattered pixels still destroy the class: the score
    would measure the scattering, so it is left out, with the reason."""
    x = lite0.preprocess(chelsea)
    result = explain(lite0.model, x, lite0.default_layer, ["gradcam", "guided_backprop"])
    guided = result.maps["guided_backprop"]
    assert saliency(guided).mean() < 0.07  # the old scale: a nearly black mask
    fair = scaled_saliency(guided)
    assert fair.mean() > max(0.1, 2 * saliency(guided).mean())  # the 99th-percentile scale
    y, o = confidence(lite0.model, x, fair, result.target)
    assert average_drop(y, o) > 90  # still an artefact of the scattering
    scores = faithfulness(lite0.model, x, result.maps, result.target, steps=4)
    left_out = scores["guided_backprop"]
    assert math.isnan(left_out.drop) and math.isnan(left_out.deletion_auc) and left_out.curves is None
    assert "scattered pixels" in left_out.note
    assert scores["gradcam"].curves is not None and scores["gradcam"].note is None
    assert not math.isnan(scores["gradcam"].drop)


def test_blank_map_cannot_be_scored(gap_linear):
    x = torch.randn(1, 3, 8, 8)
    scores = faithfulness(gap_linear, x, {"blank": torch.zeros(8, 8), "map": torch.rand(8, 8)}, 0, steps=2)
    assert math.isnan(scores["blank"].drop) and scores["blank"].curves is None
    assert "blank" in scores["blank"].note
    assert not math.isnan(scores["map"].drop)
    assert math.isnan(average_drop(0.0, 0.0))  # no probability to drop from
