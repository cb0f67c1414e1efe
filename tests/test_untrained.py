"""Random-weight models are random functions of the image, not constants (BatchNorm recalibrated)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from explainers import explain
from models_zoo import REGISTRY, list_zoo, load_model, wrap_model
from models_zoo.untrained import batchnorm_layers, recalibrate_batchnorm, smooth_random_images

SAMPLES = Path(__file__).parents[1] / "assets" / "samples"


def four_images() -> list[Image.Image]:
    """Four images that differ in content and colour: two photos, a negative, a plain colour."""
    cat = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    rocket = Image.open(SAMPLES / "rocket.jpg").convert("RGB")
    return [cat, rocket, ImageOps.invert(cat), Image.new("RGB", (320, 320), (200, 30, 30))]


def logits_of(zoo, images: list[Image.Image]) -> torch.Tensor:
    with torch.no_grad():
        return zoo.model(torch.cat([zoo.preprocess(image) for image in images]).to(zoo.device)).float()


def spread(logits: torch.Tensor) -> float:
    """The largest difference of one logit across images."""
    return float((logits.amax(0) - logits.amin(0)).max())


def test_synthetic_images_are_deterministic_smooth_and_at_unit_scale():
    torch.manual_seed(5)
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    images = smooth_random_images(4, (64, 48), seed=3)
    assert torch.equal(torch.rand(2), expected_next)  # the global random state is not used
    assert images.shape == (4, 3, 64, 48)
    assert torch.equal(images, smooth_random_images(4, (64, 48), seed=3))
    assert not torch.equal(images, smooth_random_images(4, (64, 48), seed=4))
    assert images.mean().abs() < 1e-5 and images.std() == pytest.approx(1.0, abs=1e-5)
    # Smooth: neighbouring pixels are strongly correlated, unlike white noise (about 0).
    a, b = images[..., :, :-1].flatten(), images[..., :, 1:].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


def test_recalibration_gives_the_batch_statistics_and_restores_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.BatchNorm2d(4))
    model.eval()
    untouched = model[3]
    assert recalibrate_batchnorm(model, (16, 16), seed=1, layers=[model[1]]) == 1
    # Independently: the conv's output on the same images, its per-channel mean and unbiased variance.
    with torch.no_grad():
        features = model[0](smooth_random_images(8, (16, 16), seed=1))
    assert torch.allclose(model[1].running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, features.var((0, 2, 3), correction=1), rtol=1e-4)
    assert model[1].momentum == 0.3 and not model.training and not model[1].training
    assert torch.equal(untouched.running_mean, torch.zeros(4)) and untouched.num_batches_tracked == 0
    assert recalibrate_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3)), (8, 8)) == 0  # nothing to do
    assert batchnorm_layers(model) == [model[1], model[3]]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_random_models_depend_on_the_image(name):
    """Before recalibration these gave logits equal across images to 1e-8 and blank Grad-CAMs."""
    torch.manual_seed(0)
    zoo = load_model(name, weights=None, device="cpu")
    assert not zoo.trained
    images = four_images()
    logits = logits_of(zoo, images)
    assert spread(logits) > 1e-2  # four orders of magnitude above the 1e-6 of a constant function
    # Not one ranking for every image. (The top-1 alone may coincide: a random network's pooled
    # features share a positive mean, which favours one class; Lite0 with seed 0 gives class 737
    # on all four images, with seeds 1 to 5 two to four different classes.)
    top5 = {tuple(sorted(row.topk(5).indices.tolist())) for row in logits}
    assert len(top5) >= 2
    assert float(logits.std(0).mean()) > 0.1 * float(logits.std(1).mean())  # image matters, not a bias
    # Built without the recalibration, the same architecture is the constant function of the
    # issue: the check above can fail.
    torch.manual_seed(0)
    plain = wrap_model(name, REGISTRY[name].build(None), zoo.preprocess, zoo.labels, device="cpu")
    assert spread(logits_of(plain, images)) < 1e-6
    x = zoo.preprocess(images[0])
    cam = explain(zoo.model, x, zoo.default_layer, ["gradcam"]).maps["gradcam"]
    assert cam.max() > 0 and cam.std() > 0.05  # not blank, not flat


@pytest.mark.slow
@pytest.mark.parametrize("name", list_zoo())
def test_every_random_model_depends_on_the_image(name):
    torch.manual_seed(0)
    zoo = load_model(name, weights=None, device="cpu")
    logits = logits_of(zoo, four_images())
    assert torch.isfinite(logits).all()
    assert spread(logits) > 1e-3


def test_zero_initialised_layers_are_redrawn_deterministically():
    """torchvision's ViT head starts at zero: untrained, every image would get the bias."""
    from models_zoo.untrained import redraw_zero_layers

    head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    torch.nn.init.zeros_(head[1].weight)
    before = head[0].weight.clone()
    state = torch.random.get_rng_state()
    assert redraw_zero_layers(head, seed=3) == 1
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is kept
    assert head[1].weight.abs().sum() > 0 and torch.equal(head[0].weight, before)
    again = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    torch.nn.init.zeros_(again[1].weight)
    redraw_zero_layers(again, seed=3)
    assert torch.equal(again[1].weight, head[1].weight)
    assert redraw_zero_layers(head) == 0
