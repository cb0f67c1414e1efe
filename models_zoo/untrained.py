"""Untrained models that are random functions of the image, not constants.

A freshly initialised BatchNorm layer has running mean 0 and variance 1, so in eval mode it
normalises nothing. In a deep network whose convolutions shrink the signal (torchvision's
EfficientNet, MobileNet and MNASNet initialise theirs with a small fan-out variance, and their
residual branches add little), the activations then fade layer by layer and the logits of every
image end up equal to the classifier's bias: an untrained EfficientNet-Lite0 gives logits that
differ across images by about 1e-8. Such a "random model" is a constant function, and a sanity
check run on it compares maps of nothing.

`recalibrate_batchnorm` gives the BatchNorm layers the statistics they would have had in
training: a few deterministic synthetic images (smooth random fields, not photos, so no image
the app explains is seen) go through the model with the chosen BatchNorm layers in training
mode and a cumulative average (``momentum=None``); every other module stays in eval mode, and
no gradient is taken. Afterwards every layer's output has roughly zero mean and unit variance
again, as in a trained network, and the outputs depend on the image.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Synthetic images for the statistics: enough samples for the per-channel mean and variance of
# a feature map (count · h · w values), and a batch above 1 for the BatchNorm1d layers after
# pooling.
CALIBRATION_IMAGES = 8
# Side lengths of the random grids summed into one smooth image, coarse to fine; each octave
# has half the amplitude of the one before (a 1/f-like spectrum, as in natural images).
_OCTAVES = (2, 4, 8, 16, 32)


def smooth_random_images(count: int, size: tuple[int, int], seed: int = 0, channels: int = 3) -> torch.Tensor:
    """Deterministic smooth random images, (count, channels, H, W), about zero mean and unit std.

    Each image is a sum of bilinearly upsampled Gaussian grids (`_OCTAVES`), halving the
    amplitude at each finer octave, plus a random colour offset; the batch is then scaled to
    unit standard deviation, the scale of a normalised photo. The global random state is not
    used.

    Args:
        count: number of images.
        size: (H, W).
        seed: the images' seed.
        channels: colour channels of the model's input.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    images = torch.zeros(count, channels, height, width)
    amplitude = 1.0
    for side in _OCTAVES:
        grid = torch.randn(count, channels, side, side, generator=generator)
        images += amplitude * F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        amplitude /= 2
    images += 0.5 * torch.randn(count, channels, 1, 1, generator=generator)
    return (images - images.mean()) / images.std()


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer (1-d, 2-d, 3-d, SyncBatchNorm) of a model, in registration order."""
    return [module for module in model.modules() if isinstance(module, _BatchNorm)]


def recalibrate_batchnorm(
    model: nn.Module,
    input_size: tuple[int, int],
    seed: int = 0,
    layers: Iterable[nn.Module] | None = None,
    count: int = CALIBRATION_IMAGES,
    channels: int = 3,
) -> int:
    """Reset and re-estimate BatchNorm running statistics from `smooth_random_images`, in place.

    The chosen layers run in training mode with a cumulative average (``momentum=None``) over
    one batch of synthetic images; every other module (the other BatchNorm layers, dropout,
    stochastic depth) stays in eval mode. Parameters are not touched and no gradient is
    computed. Afterwards the whole model is in eval mode and the layers have their own
    momentum back.

    Args:
        model: the model to recalibrate (for an explanation's shared model: a deep copy).
        input_size: (H, W) of the model's input.
        seed: the synthetic images' seed; the global random state is not used.
        layers: the BatchNorm layers to recalibrate (others in it are ignored); None: all.
        count: synthetic images in the batch.
        channels: colour channels of the model's input.

    Returns:
        The number of BatchNorm layers recalibrated (0 leaves the model as it was, in eval mode).
    """
    chosen = batchnorm_layers(model) if layers is None else [m for m in layers if isinstance(m, _BatchNorm)]
    model.eval()
    if not chosen:
        return 0
    device = next(model.parameters()).device
    images = smooth_random_images(count, input_size, seed, channels).to(device)
    momenta = [layer.momentum for layer in chosen]
    try:
        for layer in chosen:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average: the statistics of exactly these images
            layer.train()
        with torch.no_grad():
            model(images)
    finally:
        for layer, momentum in zip(chosen, momenta, strict=True):
            layer.momentum = momentum
        model.eval()
    return len(chosen)


def redraw_zero_layers(model: nn.Module, seed: int = 0) -> int:
    """Give linear and convolutional layers initialised to zero their default random weights.

    torchvision zero-initialises ViT's classifier head (a fine-tuning convention), so an untrained
    ViT returns its bias for every image: a constant, like the BatchNorm case above. Redrawn with
    the layer's own ``reset_parameters`` under a fixed seed (the global random state is restored).

    Returns:
        The number of layers redrawn.
    """
    zero = [
        module
        for module in model.modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not module.weight.detach().any()
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for module in zero:
                module.reset_parameters()
    return len(zero)


def make_untrained(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> nn.Module:
    """A freshly built model made a random function of the image: zero-initialised layers redrawn
    (`redraw_zero_layers`), then BatchNorm statistics re-estimated (`recalibrate_batchnorm`)."""
    redraw_zero_layers(model)
    recalibrate_batchnorm(model, input_size, channels=channels)
    return model
