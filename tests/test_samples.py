"""explainers.services.samples: the bundled images are present, small, listed and loadable."""

from __future__ import annotations

import pytest

from explainers.services.images import load_image
from explainers.services.samples import SAMPLES_DIR, list_samples


def test_all_samples_listed_cat_first() -> None:
    samples = list_samples()
    assert next(iter(samples)) == "Chelsea the cat"
    assert {p.name for p in samples.values()} == {p.name for p in SAMPLES_DIR.glob("*.jpg")}
    assert len(samples) == 6


@pytest.mark.parametrize("name", list(list_samples()))
def test_sample_loads_and_is_small(name: str) -> None:
    path = list_samples()[name]
    assert path.stat().st_size < 150_000
    image = load_image(path)
    assert image.mode == "RGB" and min(image.size) >= 300


def test_collages_are_square() -> None:
    for file in ("cat_and_coffee.jpg", "two_cats.jpg"):
        assert load_image(SAMPLES_DIR / file).size == (448, 448)
