"""Lessons: live numbers that change with the model and image, and the claims that hold here."""

from __future__ import annotations

import pytest

from explainers.images import load_image
from explainers.lessons import LESSONS, Lesson, counterfactual_lesson, watermark_lesson
from explainers.samples import list_samples


@pytest.fixture(scope="module")
def default_lessons(lite0) -> dict[str, Lesson]:
    """Every lesson on the default model and its own sample, run once for this module."""
    return {key: fn(lite0, None) for key, fn in LESSONS.items()}


def test_every_lesson_renders_on_the_default_model(default_lessons):
    for key, result in default_lessons.items():
        assert result.key == key and result.claim and result.verdict and result.panels
        assert all(panel.image.ndim == 3 and panel.image.dtype.name == "uint8" for panel in result.panels)
        assert all(isinstance(value, float) for value in result.measurements.values())


@pytest.mark.parametrize("name", list(list_samples()))
def test_watermark_shortcut_holds_on_every_sample(lite0, name):
    result = watermark_lesson(lite0, load_image(list_samples()[name]))
    assert result.holds, result.verdict
    assert result.measurements["rise (×)"] > 2
    assert result.measurements["Grad-CAM density on the band / elsewhere"] > 1.5


def test_numbers_follow_the_image(lite0):
    samples = list_samples()
    cat = counterfactual_lesson(lite0, load_image(samples["Chelsea the cat"]))
    collage = counterfactual_lesson(lite0, load_image(samples["Cat and coffee (two classes)"]))
    assert cat.measurements != collage.measurements
    assert cat.verdict != collage.verdict


def test_numbers_follow_the_model(default_lessons):
    from models_zoo import load_model

    other = load_model("resnet18", weights=None, device="cpu")
    trained, random = default_lessons["watermark"], watermark_lesson(other, None)
    assert trained.measurements != random.measurements


def test_class_discrimination_holds_on_the_collage(default_lessons):
    """Grad-CAM paper: Grad-CAM's two class maps are far apart, guided backprop's close."""
    result = default_lessons["discrimination"]
    assert result.holds, result.verdict
    assert result.measurements["Spearman, gradcam"] < 0
    assert result.measurements["Spearman, guided_backprop"] > 0.5


def test_sanity_check_separates_gradcam_from_guided_backprop(default_lessons):
    result = default_lessons["sanity"]
    assert result.holds, result.verdict
    curve = result.series["Grad-CAM, Spearman ρ (absolute)"]
    assert curve[0] == 1.0 and len(result.series_x) == len(curve)


def test_instances_lesson_reports_what_it_measures(default_lessons):
    result = default_lessons["instances"]
    shares = [v for k, v in result.measurements.items() if "share" in k]
    assert all(0 <= s <= 1 for s in shares)
    assert f"{result.measurements['Grad-CAM share, left']:.0%}" in result.verdict


def test_depth_lesson_finds_coarse_deep_and_fine_shallow_maps(default_lessons, lite0):
    result = default_lessons["depth"]
    assert result.holds, result.verdict
    assert result.series_x[-1] == lite0.default_layer  # shallow to deep
    areas = result.series["LayerCAM area above half peak"]
    assert areas[-1] > 2 * areas[0]
