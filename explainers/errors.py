"""User-facing errors: one clear line each, shown by the CLI (exit 2) and the app (st.error).

The base class, `LayerError` and `did_you_mean` live in `models_zoo.errors` (the registry raises
them too, and does not import the explainers); they are re-exported here.

Each message names the value or file at fault and says what to do about it (the CLIs add the
file's name where the library only saw its bytes).
"""

from __future__ import annotations

from models_zoo.errors import ExplainerInputError, LayerError, did_you_mean

__all__ = [
    "Cancelled",
    "ExplainerInputError",
    "ImageError",
    "LayerError",
    "MethodError",
    "TargetError",
    "did_you_mean",
    "reason",
]


def reason(error: BaseException) -> str:
    """One line describing an exception, without a closing full stop (the caller ends the sentence)."""
    text = " ".join(str(error).split()).rstrip(".")
    return text or type(error).__name__


class ImageError(ExplainerInputError):
    """The image cannot be read or is unsuitable (corrupt, too large, too small)."""


class MethodError(ExplainerInputError):
    """The method is unknown or does not apply to this model and layer."""


class TargetError(ExplainerInputError):
    """The class index is out of range."""


class Cancelled(ExplainerInputError):
    """The user stopped a long computation (Score-CAM's masked passes) before it finished."""
