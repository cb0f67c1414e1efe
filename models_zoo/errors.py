"""User-facing errors shared by the model registry and the explainers: one clear line each,
shown by the CLI (exit 2) and the app (st.error). `explainers.errors` re-exports them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """ " Did you mean 'a', 'b'?" naming up to three close matches, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class ExplainerInputError(ValueError):
    """Bad input from a user: an unreadable image, an unknown model, layer or method, a bad target."""


class LayerError(ExplainerInputError):
    """The target layer does not exist, is not a feature map, or runs more than once."""
