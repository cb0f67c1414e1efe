"""What the Explore page's computations are keyed by: the image, the model, the request and the display.

They live apart from app.py because Streamlit executes app.py afresh on every rerun: a dataclass
defined there is built again each time (1-2 ms apiece, a tenth of what a cached rerun costs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageChoice:
    """The image to explain: its name, its file's bytes and their hash (the cache key)."""

    name: str
    data: bytes
    digest: str


@dataclass(frozen=True)
class CustomUpload:
    """A user's fine-tuned classifier: an architecture, weights and class-name files, and the
    changes to the architecture's preprocessing as (key, value) pairs."""

    architecture: str
    weights: bytes
    labels: bytes
    preprocessing: tuple[tuple[str, object], ...] = ()
    weights_digest: str = ""


@dataclass(frozen=True)
class ModelRequest:
    """The sidebar's model choice: a zoo name, or `CUSTOM` with its uploads (None until both are in)."""

    name: str
    random_weights: bool
    custom: CustomUpload | None = None


@dataclass(frozen=True)
class ExplainRequest:
    """What every computation on this page is keyed by; `model` is the cache name of the model."""

    digest: str
    model: str
    random_weights: bool
    layer: str
    target: int
    counterfactual: bool


@dataclass(frozen=True)
class Display:
    """How maps are drawn; changing it re-renders without recomputing."""

    colormap: str
    opacity: float
