"""Regenerate the bundled sample images in assets/samples/ from package sample data.

Dev-time only: needs scikit-image and matplotlib, which the app itself does not. The sources,
credits and licences are listed in assets/samples/README.md. Run from the repository root:

    python scripts/make_samples.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.cbook
import numpy as np
import skimage.data
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "assets" / "samples"
QUALITY = 90
CANVAS = 448  # collages are square so the model's centre crop keeps both objects
# Resize(256) + CenterCrop(224) drops 1/16 of a square on each side: keep objects out of it.
MARGIN = CANVAS // 16
GAP = 8
# The ImageNet mean colour: (near) zero after the models' normalisation, so padding adds little
# evidence of its own.
FILL = (124, 116, 104)

# (left, top, right, bottom) portrait crops around each object in the original images.
CAT_FACE = (95, 0, 375, 300)  # chelsea: both eyes, nose and an ear
CUP = (150, 0, 450, 400)  # coffee: the cup, spoon and part of the saucer


def save(image: Image.Image, name: str) -> None:
    """Save an RGB image as an optimised baseline JPEG and report its size."""
    path = OUT / name
    image.save(path, "JPEG", quality=QUALITY, optimize=True)
    print(f"{name}: {image.width}x{image.height}, {path.stat().st_size / 1024:.0f} KB")


def collage(left: Image.Image, right: Image.Image) -> Image.Image:
    """Place two portrait images side by side, each fitted into its half of a square canvas."""
    canvas = Image.new("RGB", (CANVAS, CANVAS), FILL)
    box_w, box_h = (CANVAS - 2 * MARGIN - GAP) // 2, CANVAS - 2 * MARGIN
    for i, part in enumerate((left, right)):
        scale = min(box_w / part.width, box_h / part.height)
        part = part.resize((round(part.width * scale), round(part.height * scale)), Image.LANCZOS)
        x0 = MARGIN + i * (box_w + GAP) + (box_w - part.width) // 2
        canvas.paste(part, (x0, (CANVAS - part.height) // 2))
    return canvas


def main() -> None:
    """Write the four single images and the two collages."""
    OUT.mkdir(parents=True, exist_ok=True)
    chelsea = Image.fromarray(skimage.data.chelsea())  # 451x300, shipped as PNG
    coffee = Image.fromarray(skimage.data.coffee())  # 600x400, shipped as PNG
    save(chelsea, "chelsea.jpg")
    save(coffee, "coffee.jpg")
    # Already small JPEGs: copied byte for byte, so no second lossy pass and checksums match.
    rocket = Path(skimage.data.__file__).with_name("rocket.jpg")  # 640x427
    hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # 512x600
    for source in (rocket, Path(hopper)):
        shutil.copyfile(source, OUT / source.name)
        print(f"{source.name}: copied, {source.stat().st_size / 1024:.0f} KB")

    cat = chelsea.crop(CAT_FACE)
    save(collage(cat, coffee.crop(CUP)), "cat_and_coffee.jpg")
    # The packages ship one cat photo. The second instance is the whole photo, mirrored and at a
    # smaller scale: a mirror image of the same crop would make every map symmetric, and the
    # Grad-CAM++ lesson would have nothing to show.
    whole = Image.fromarray(np.ascontiguousarray(np.asarray(chelsea)[:, ::-1]))
    save(collage(cat, whole), "two_cats.jpg")


if __name__ == "__main__":
    main()
