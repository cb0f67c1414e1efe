"""The bundled sample images in assets/samples/ (sources and licences in its README.md)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SAMPLES_DIR: Path = Path(__file__).resolve().parents[2] / "assets" / "samples"

# Display name -> file name, in the order the app offers them: the classic cat first, then the
# two Grad-CAM++ collages, then the rest.
_SAMPLES: dict[str, str] = {
    "Chelsea the cat": "chelsea.jpg",
    "Cat and coffee (two classes)": "cat_and_coffee.jpg",
    "Two cats (two instances)": "two_cats.jpg",
    "Cup of espresso": "coffee.jpg",
    "Grace Hopper": "grace_hopper.jpg",
    "Rocket launch": "rocket.jpg",
}


def list_samples() -> dict[str, Path]:
    """Return the bundled samples that are present, as display name -> path.

    Returns:
        An ordered dict from a display name (e.g. "Chelsea the cat") to the image file; a file
        missing from an installation is left out rather than offered and failing later.
    """
    return {name: SAMPLES_DIR / file for name, file in _SAMPLES.items() if (SAMPLES_DIR / file).is_file()}


def augmented_samples(count: int) -> list[Image.Image]:
    """``count`` distinct RGB images made from the bundled samples, for tests and benchmarks of
    batches: sample ``i % 6`` (in `list_samples` order), mirrored on odd rounds, rotated and
    brightened by a step that grows with each round through the samples. Deterministic.
    """
    from PIL import ImageEnhance, ImageOps

    paths = list(list_samples().values())
    images = []
    for i in range(count):
        round_ = i // len(paths)
        image = Image.open(paths[i % len(paths)]).convert("RGB")
        if round_ % 2:
            image = ImageOps.mirror(image)
        if round_:
            image = image.rotate(7 * round_, resample=Image.Resampling.BILINEAR)
            image = ImageEnhance.Brightness(image).enhance(1 + 0.08 * ((round_ % 5) - 2))
        images.append(image)
    return images
