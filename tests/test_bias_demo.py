"""The bundled bias demo: the biased model's Grad-CAM sits on the tag, the unbiased one's does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainers import explain
from explainers.methods.metrics import energy_in_box
from models_zoo import REGISTRY, cue_box, demo_image, list_zoo, load_bias_demo
from models_zoo.bias_demo import ASSETS, LABELS


@pytest.fixture(scope="module")
def demo_models():
    return {which: load_bias_demo(which, device="cpu") for which in ("biased", "unbiased")}


def test_assets_are_small_and_registered():
    for which in ("biased", "unbiased"):
        assert (ASSETS / f"{which}_head.safetensors").stat().st_size < 100_000
        assert f"bias_demo_{which}" in REGISTRY and f"bias_demo_{which}" in list_zoo()
    assert (ASSETS / "labels.txt").read_text().split() == list(LABELS)
    with pytest.raises(ValueError, match="biased"):
        load_bias_demo("neutral")


def test_demo_images_are_reproducible_and_carry_the_tag():
    x0, y0, x1, y1 = cue_box()
    tagged, clean = np.asarray(demo_image(True)), np.asarray(demo_image(False))
    assert tagged.shape == (224, 224, 3)
    assert np.array_equal(tagged, np.asarray(demo_image(True)))
    assert (tagged[y0:y1, x0:x1] == [255, 217, 0]).all()
    # Same scene without the tag: only the box differs.
    outside = np.ones((224, 224), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(tagged[outside], clean[outside])


def test_biased_model_looks_at_the_tag(demo_models):
    energy = {}
    for which, zoo in demo_models.items():
        assert zoo.default_layer == "final" and zoo.labels == LABELS
        shares = []
        for seed in range(3):
            x = zoo.preprocess(demo_image(with_cue=True, label=0, seed=seed))
            result = explain(zoo.model, x, zoo.default_layer, ["gradcam"], target=0)
            shares.append(energy_in_box(result.maps["gradcam"], cue_box()))
        energy[which] = sum(shares) / len(shares)
    assert energy["biased"] > 0.2  # the box is 4.6 % of the image
    assert energy["biased"] >= 2 * energy["unbiased"] + 0.1


def test_without_the_tag_only_the_unbiased_model_sees_stripes(demo_models):
    x = torch.cat([demo_models["biased"].preprocess(demo_image(False, 0, seed)) for seed in range(3)])
    with torch.inference_mode():
        stripes = {which: zoo.model(x).softmax(1)[:, 0].mean() for which, zoo in demo_models.items()}
    assert stripes["unbiased"] > 0.7 and stripes["biased"] < stripes["unbiased"] - 0.2
