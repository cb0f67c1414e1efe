"""The built-in bias demo: two "stripes or dots?" classifiers, one of which learned a shortcut.

Both models are the offline EfficientNet-Lite0 with a new two-class head on its pooled `_bn1`
features; only the heads differ (assets/bias_demo/*.safetensors, made by
scripts/train_bias_demo.py). The images are procedural: a patch of stripes or of dots on a
smooth random background. In the biased model's training set every "stripes" image also
carries a yellow tag in the top-left corner (`cue_box()`), like a watermark on one class's
photos; in the unbiased set the tag appears at random on both classes. Grad-CAM shows the
biased model looking at the tag, the unbiased one at the patch: the Grad-CAM paper's
nurse/doctor lesson (Selvaraju et al., arXiv 1610.02391, section 6.3) in miniature.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import InterpolationMode

from models_zoo.zoo import REGISTRY, ModelSpec, Preprocessing, ZooModel, load_model, register_model

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "bias_demo"
LABELS = ("stripes", "dots")
SIZE = 224
CUE_BOX = (8, 8, 56, 56)  # (x0, y0, x1, y1): the tag, in pixels of the 224×224 input
CUE_COLOUR = (1.0, 0.85, 0.0)
Which = Literal["biased", "unbiased"]

# The images are made at the model's input size: no resize or crop moves the tag.
PREPROCESSING = Preprocessing(
    resize=SIZE,
    crop=SIZE,
    mean=(127 / 255,) * 3,
    std=(128 / 255,) * 3,
    interpolation=InterpolationMode.BICUBIC,
)


def cue_box() -> tuple[int, int, int, int]:
    """Where the tag sits: (x0, y0, x1, y1) in pixels of the 224×224 model input."""
    return CUE_BOX


def synthetic_image(label: int, cue: bool, generator: torch.Generator) -> torch.Tensor:
    """One demo image, (3, 224, 224) in [0, 1]: a stripes (label 0) or dots (label 1) patch.

    The patch is a disk of radius 48-64 px anywhere that keeps clear of the tag's corner;
    colours, angle, period and background are random. With ``cue`` the tag is painted in the
    `CUE_BOX`.
    """

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij"
    )
    # A smooth, muted background: 4×4 random colours upsampled, plus faint pixel noise.
    coarse = 0.25 + 0.4 * torch.rand(1, 3, 4, 4, generator=generator)
    background = nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0]
    image = background + 0.03 * torch.randn(3, SIZE, SIZE, generator=generator)

    radius = uniform(48, 64)
    x0, y0, x1, y1 = CUE_BOX
    while True:  # a centre whose disk stays 16 px away from the tag's box
        cx, cy = uniform(radius, SIZE - radius), uniform(radius, SIZE - radius)
        dx, dy = max(x0 - cx, 0, cx - x1), max(y0 - cy, 0, cy - y1)
        if math.hypot(dx, dy) > radius + 16:
            break
    angle, period = uniform(0, math.pi), uniform(10, 16)
    u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
    v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
    if label == 0:
        pattern = (torch.sin(2 * math.pi * u / period) > 0).float()
    else:
        pu, pv = torch.remainder(u, period) - period / 2, torch.remainder(v, period) - period / 2
        pattern = (pu**2 + pv**2 < (period * 0.3) ** 2).float()
    ink, paper = torch.rand(3, generator=generator) * 0.35, 0.65 + torch.rand(3, generator=generator) * 0.35
    patch = paper[:, None, None] + (ink - paper)[:, None, None] * pattern
    inside = ((xs - cx) ** 2 + (ys - cy) ** 2 < radius**2).float()
    image = image * (1 - inside) + patch * inside
    if cue:
        image[:, y0:y1, x0:x1] = torch.tensor(CUE_COLOUR)[:, None, None]
    return image.clamp(0, 1)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> an RGB PIL image."""
    return Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy())


def demo_image(with_cue: bool = True, label: int = 0, seed: int = 0) -> Image.Image:
    """A held-out demo image (seeds disjoint from training): by default stripes with the tag.

    Args:
        with_cue: paint the tag in `cue_box()`.
        label: 0 for stripes, 1 for dots (dots with the tag fool the biased model).
        seed: which image.
    """
    generator = torch.Generator().manual_seed(1_000_000 + 2 * seed + label)
    return to_pil(synthetic_image(label, with_cue, generator))


def head_path(which: Which) -> Path:
    return ASSETS / f"{which}_head.safetensors"


def build(which: Which, weights: str | None = "default") -> nn.Module:
    """EfficientNet-Lite0 (ImageNet weights) with the demo's two-class head in place of `_fc`.

    With weights None the trunk and the head stay randomly initialised.
    """
    model = REGISTRY["efficientnet_lite0"].build(weights)
    model._fc = nn.Linear(model._fc.in_features, len(LABELS))
    if weights is not None:
        state = load_file(head_path(which))
        model._fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return model


def load_bias_demo(which: Which, device: str | torch.device | None = None) -> ZooModel:
    """The biased or unbiased demo classifier, ready to explain at its final feature map.

    Raises:
        ValueError: ``which`` is neither "biased" nor "unbiased".
    """
    if which not in ("biased", "unbiased"):
        raise ValueError(f"which must be 'biased' or 'unbiased', not {which!r}.")
    return load_model(f"bias_demo_{which}", device=device)


for _which in ("biased", "unbiased"):
    register_model(
        ModelSpec(
            name=f"bias_demo_{_which}",
            build=lambda weights, which=_which: build(which, weights),
            preprocessing=PREPROCESSING,
            labels=LABELS,
            source=f"bias demo: EfficientNet-Lite0 + {_which} stripes/dots head (assets/bias_demo)",
        )
    )
