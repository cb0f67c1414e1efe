"""Lessons: each verdict holds, fails or cannot judge, and each of the three is reached.

"Fails" cases use tiny hand-built models whose behaviour contradicts the claim by construction
(the same map for two classes, a deep layer that looks elsewhere, a "carton" unit that counts
ink), so they do not depend on numbers measured on a real network at today's default layer.
"Holds" cases use the bundled samples on EfficientNet-Lite0 where the margin is wide; "cannot
judge" cases use an untrained model, blank maps and images that do not fit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import GapLinear
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from explainers.services.formats import number, percent, ratio, shown, signed
from explainers.services.images import load_image
from explainers.services.lessons import (
    CARTON,
    LESSONS,
    Lesson,
    counterfactual_lesson,
    depth_lesson,
    discrimination_lesson,
    instances_lesson,
    same_object,
    watermark_lesson,
)
from explainers.services.samples import list_samples
from models_zoo import Preprocessing, ZooModel, load_model, wrap_model

# The sanity lesson is another change's; its verdicts are tested there.
MINE = [key for key in LESSONS if key != "sanity"]


def tiny(model: nn.Module, labels: tuple[str, ...], side: int = 64) -> ZooModel:
    """A hand-built model behind the zoo's interface; x = (pixel / 255 - 0.5) / 0.5, in [-1, 1]."""
    preprocessing = Preprocessing(side, side, (0.5,) * 3, (0.5,) * 3, InterpolationMode.NEAREST)
    return wrap_model("tiny", model, preprocessing, labels)


def picture(side: int = 64, background=(128, 128, 128), patches=()) -> Image.Image:
    """A flat image with rectangular patches: ((x0, y0, x1, y1), (r, g, b)), ..."""
    array = np.empty((side, side, 3), np.uint8)
    array[:] = background
    for (x0, y0, x1, y1), colour in patches:
        array[y0:y1, x0:x1] = colour
    return Image.fromarray(array)


def pointwise(weights: list[list[float]], bias: list[float] | None = None) -> nn.Conv2d:
    """A 1×1 convolution with the given (out, in) weights."""
    conv = nn.Conv2d(len(weights[0]), len(weights), 1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights)[:, :, None, None])
        if bias is not None:
            conv.bias.copy_(torch.tensor(bias))
    return conv


class PointwiseNet(nn.Module):
    """1×1 conv -> ReLU -> global average -> linear: each class a fixed mix of colour detectors."""

    def __init__(self, conv: nn.Conv2d, head: list[list[float]], bias: list[float] | None = None) -> None:
        super().__init__()
        self.conv, self.relu, self.pool = conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(len(head[0]), len(head))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(head))
            self.fc.bias.copy_(torch.tensor(bias or [0.0] * len(head)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def untrained() -> ZooModel:
    return load_model("efficientnet_lite0", weights=None, device="cpu")


@pytest.fixture(scope="module")
def default_lessons(lite0) -> dict[str, Lesson]:
    """Every lesson on the default model and its own sample, run once for this module."""
    return {key: LESSONS[key](lite0, None) for key in MINE}


def sample(name: str) -> Image.Image:
    return load_image(list_samples()[name])


def assert_consistent(result: Lesson) -> None:
    """The verdict quotes the measured numbers as the tiles show them."""
    assert result.status in ("holds", "fails", "cannot judge")
    if result.holds is None:
        return
    quoted = [result.display(name) for name in result.measurements if result.units.get(name)]
    assert quoted and all(text in result.verdict for text in quoted), (quoted, result.verdict)


# ----------------------------------------------------------------------------- every lesson


def test_every_lesson_renders_on_the_default_model(default_lessons):
    for key, result in default_lessons.items():
        assert result.key == key and result.claim and result.verdict and result.panels
        assert all(panel.image.ndim == 3 and panel.image.dtype.name == "uint8" for panel in result.panels)
        assert all(isinstance(value, float) for value in result.measurements.values())
        assert set(result.units) == set(result.measurements)
        assert_consistent(result)


@pytest.mark.parametrize("key", MINE)
def test_no_lesson_judges_an_untrained_model(untrained, key):
    result = LESSONS[key](untrained, None)
    assert result.holds is None and result.status == "cannot judge"
    assert "untrained" in result.verdict


@pytest.mark.parametrize("key", ["counterfactual", "discrimination", "instances", "depth"])
def test_a_flat_image_is_not_judged(lite0, key):
    """A flat grey upload holds no object: those lessons say so instead of reading noise."""
    result = LESSONS[key](lite0, picture(side=300, background=(127, 127, 127)))
    assert result.holds is None and "flat colour" in result.verdict


def test_numbers_follow_the_image(lite0):
    cat = counterfactual_lesson(lite0, sample("Chelsea the cat"))
    collage = counterfactual_lesson(lite0, sample("Cat and coffee (two classes)"))
    assert cat.measurements != collage.measurements
    assert cat.verdict != collage.verdict


# ----------------------------------------------------------------------------- counterfactual


def test_counterfactual_holds_on_the_collage(default_lessons):
    result = default_lessons["counterfactual"]
    assert result.holds, result.verdict
    base, removed, control, _ = result.measurements.values()
    assert (
        shown(removed, "%") >= shown(base, "%") + 0.01 and shown(removed, "%") >= shown(control, "%") + 0.01
    )
    assert "holds" in result.verdict


def counter_model() -> ZooModel:
    """class 0 = red detector − relu(1 − green): negated gradients point at the grey patch, where
    relu(1 − green) is at its baseline already; blending the image towards zero there changes
    nothing, and elsewhere it raises relu(1 − green): removing "what argues against" lowers P."""
    conv = pointwise([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], [0.0, 1.0])
    return tiny(PointwiseNet(conv, [[4.0, -4.0], [0.0, 0.0]], [2.0, 0.0]), ("red", "other"))


def test_counterfactual_fails_where_removing_the_region_lowers_the_score():
    # Background green = 0.5 (pixel 191), a grey patch (green 0), a red patch (red 1).
    image = picture(background=(128, 191, 128), patches=[((8, 8, 24, 24), (128, 128, 128)),
                                                          ((40, 40, 56, 56), (255, 191, 128))])  # fmt: skip
    result = counterfactual_lesson(counter_model(), image)
    assert result.holds is False, result.verdict
    base, removed, _, _ = result.measurements.values()
    assert removed < base
    assert "does not hold" in result.verdict and number(base, "%") in result.verdict


def test_counterfactual_cannot_judge_a_blank_map():
    # A red patch only: nothing argues against "red", so the counterfactual map is blank.
    conv = pointwise([[1.0, 0.0, 0.0]])
    zoo = tiny(PointwiseNet(conv, [[2.0], [0.0]]), ("red", "other"))
    result = counterfactual_lesson(zoo, picture(patches=[((8, 8, 24, 24), (255, 128, 128))]))
    assert result.holds is None and "blank" in result.verdict


# ----------------------------------------------------------------------------- discrimination


def test_discrimination_holds_on_the_collage(default_lessons):
    """Grad-CAM paper: Grad-CAM's two class maps are far apart, guided backprop's close."""
    result = default_lessons["discrimination"]
    assert result.holds, result.verdict
    m = result.measurements
    assert m["Spearman, Grad-CAM"] <= m["Spearman, guided backprop"] - 0.3


def test_discrimination_fails_when_both_classes_read_the_same_evidence():
    torch.manual_seed(0)
    model = GapLinear(channels=4, classes=2)
    with torch.no_grad():
        model.fc.weight.copy_(torch.ones(2, 4))  # both classes: the same positive mix of channels
        model.fc.bias.zero_()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    result = discrimination_lesson(tiny(model, ("stripes", "dots")), Image.fromarray(noise))
    assert result.holds is False, result.verdict
    assert result.measurements["Spearman, Grad-CAM"] == pytest.approx(1.0)
    assert "does not hold" in result.verdict


def test_discrimination_cannot_judge_two_names_of_one_object(lite0):
    """rocket.jpg's top two classes are "missile" and "projectile" (the logits, whatever the layer)."""
    result = discrimination_lesson(lite0, sample("Rocket launch"))
    assert result.holds is None and "name the same object" in result.verdict


def test_same_object_groups(lite0):
    index = {name: i for i, name in enumerate(lite0.labels)}
    assert same_object(lite0, index["missile"], index["projectile"])
    assert same_object(lite0, index["tabby"], index["Egyptian cat"])
    assert same_object(lite0, 151, 268)  # two dog breeds
    assert not same_object(lite0, index["Egyptian cat"], index["espresso"])
    assert not same_object(lite0, index["academic gown"], index["mortarboard"])


# ----------------------------------------------------------------------------- instances

RED, BLUE = (255, 128, 128), (128, 128, 255)


def instances_model(blue_gain: float) -> ZooModel:
    """Red and blue blobs are both instances of "blob"; the blue detector answers ``blue_gain``."""
    conv = pointwise([[2.0, 0.0, 0.0], [0.0, 0.0, blue_gain]])
    return tiny(PointwiseNet(conv, [[10.0, 10.0], [0.0, 0.0]]), ("blob", "other"))


def test_instances_hold_where_grad_cam_favours_the_stronger_instance():
    """Grad-CAM weighs both channels alike, so the weak (blue) instance gets 0.4 of the red one;
    Grad-CAM++ divides each channel's weight by 2 + w·mean(A) (eq. 19), which lifts the weak one."""
    image = picture(patches=[((4, 18, 32, 46), RED), ((44, 25, 58, 39), BLUE)])
    result = instances_lesson(instances_model(0.8), image)
    assert result.holds, result.verdict
    gc = min(v for k, v in result.measurements.items() if k.startswith("Grad-CAM density"))
    pp = min(v for k, v in result.measurements.items() if k.startswith("Grad-CAM++ density"))
    assert pp > gc + 0.2 and pp > 1
    assert_consistent(result)


def test_instances_fail_where_grad_cam_already_covers_both():
    image = picture(patches=[((4, 18, 24, 38), RED), ((40, 18, 60, 38), BLUE)])
    result = instances_lesson(instances_model(2.0), image)
    assert result.holds is False, result.verdict
    assert_consistent(result)


def test_instances_cannot_judge_one_object():
    result = instances_lesson(instances_model(0.8), picture(patches=[((4, 18, 32, 46), RED)]))
    assert result.holds is None and "needs two objects" in result.verdict
    assert all(math.isnan(v) for v in result.measurements.values())


def test_a_uniform_map_scores_chance_and_a_mask_scores_more():
    """The coverage measure does not reward blur: a uniform map gets 1.0× on any region."""
    from explainers.services.lessons import density

    region = torch.zeros(64, 64, dtype=torch.bool)
    region[10:30, 10:30] = True
    assert density(torch.ones(64, 64), region) == pytest.approx(1.0)
    assert density(region.float(), region) == pytest.approx(64 * 64 / 400)


# ----------------------------------------------------------------------------- depth


def test_depth_holds_on_two_cats(lite0):
    result = depth_lesson(lite0, sample("Two cats (two instances)"))
    assert result.holds, result.verdict
    assert_consistent(result)


class ShiftedDepth(nn.Module):
    """A red detector at 64×64, pooled to 32×32, then shifted 8 cells down and right: the deep
    layer (and so the object region) sits where the shallow evidence is not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool = pointwise([[1.0, 0.0, 0.0]]), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(1, 1, 17, padding=8, bias=False)
        with torch.no_grad():
            self.conv2.weight.zero_()
            self.conv2.weight[0, 0, 0, 0] = 1.0  # out[i, j] = in[i - 8, j - 8]
        self.relu2, self.gap, self.fc = nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[10.0], [0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(self.gap(deep).flatten(1))


def test_depth_fails_where_the_shallow_map_is_off_the_object():
    zoo = tiny(ShiftedDepth(), ("red", "other"))
    result = depth_lesson(zoo, picture(patches=[((8, 8, 20, 20), RED)]))
    assert result.holds is False, result.verdict
    on_object = [v for k, v in result.measurements.items() if k.startswith("LayerCAM density")]
    assert len(on_object) == 1 and on_object[0] < 1.0  # below chance: the shallow map is elsewhere
    assert_consistent(result)


def test_depth_cannot_judge_a_model_with_one_resolution():
    torch.manual_seed(0)
    result = depth_lesson(tiny(GapLinear(), ("a", "b", "c")), picture(patches=[((8, 8, 20, 20), RED)]))
    assert result.holds is None and "one resolution stage" in result.verdict


# ----------------------------------------------------------------------------- watermark


def test_watermark_holds_on_chelsea(default_lessons):
    result = default_lessons["watermark"]
    assert result.holds, result.verdict
    assert result.measurements["watermark over the control"] >= 1.5  # the text, not the ink
    assert_consistent(result)


def ink_counter() -> ZooModel:
    """A 'carton' unit that counts brightness: the watermark and its blurred control add the same."""
    labels = tuple("carton" if i == CARTON else f"class {i}" for i in range(1000))
    head = [[0.0]] * 1000
    head[CARTON] = [1.0]  # P(carton) about 2 %: room to rise
    return tiny(PointwiseNet(pointwise([[1.0, 1.0, 1.0]], [3.1]), head), labels, side=224)


def test_watermark_fails_for_a_model_that_counts_ink(chelsea):
    result = watermark_lesson(ink_counter(), chelsea)
    assert result.holds is False, result.verdict
    assert shown(result.measurements["watermark over the control"], "×") < 1.5
    assert "does not show" in result.verdict
    assert_consistent(result)


def test_watermark_cannot_judge_a_model_without_carton(chelsea):
    torch.manual_seed(0)
    result = watermark_lesson(tiny(GapLinear(), ("stripes", "dots", "checks")), chelsea)
    assert result.holds is None and "no ImageNet class 'carton'" in result.verdict


# ----------------------------------------------------------------------------- number formats


def test_numbers_read_one_way():
    assert [percent(v) for v in (0.173, 0.0995, 0.0377, 0.00377, 0.00028, 0.0)] == [
        "17%", "10%", "3.8%", "0.38%", "0.028%", "0%",
    ]  # fmt: skip
    assert ratio(3.874) == "3.9×" and signed(0.4206) == "+0.42" and signed(-0.5) == "-0.50"
    assert shown(0.00377, "%") == pytest.approx(0.0038) and shown(3.874, "×") == 3.9
    assert number(float("nan"), "%") == "n/a"
