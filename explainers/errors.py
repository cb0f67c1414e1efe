"""User-facing errors: one clear line each, shown by the CLI (exit 2) and the app (st.error).

Each message names the value or file at fault and says what to do about it (the CLIs add the
file's name where the library only saw its bytes)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """ " Did you mean 'a', 'b'?" naming up to three close matches, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def reason(error: BaseException) -> str:
    """One line describing an exception, without a closing full stop (the caller ends the sentence)."""
    text = " ".join(str(error).split()).rstrip(".")
    return text or type(error).__name__


class ExplainerInputError(ValueError):
    """Bad input from a user: an unreadable image, an unknown layer or method, a bad target."""


class ImageError(ExplainerInputError):
    """The image cannot be read or is unsuitable (corrupt, too large, too small)."""


class LayerError(ExplainerInputError):
    """The target layer does not exist, is not a feature map, or runs more than once."""


class MethodError(ExplainerInputError):
    """The method is unknown or does not apply to this model and layer."""


class TargetError(ExplainerInputError):
    """The class index is out of range."""


class Cancelled(ExplainerInputError):
    """The user stopped a long computation (Score-CAM's masked passes) before it finished."""
