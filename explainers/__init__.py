"""CAM Explorer's explanation methods: Grad-CAM and its relatives, computed from shared passes.

    >>> from explainers import explain, METHODS
    >>> result = explain(model, x, layer="layer4", methods=["gradcam", "gradcam++"])
    >>> result.maps["gradcam"]  # (H, W) in [0, 1]
"""

from explainers import cam  # noqa: F401  (registers the CAM family)
from explainers.core import METHODS, Evidence, Explanation, Method, explain, get_method, register
from explainers.errors import (
    ExplainerInputError,
    ImageError,
    LayerError,
    MethodError,
    TargetError,
)

__all__ = [
    "METHODS",
    "Evidence",
    "ExplainerInputError",
    "Explanation",
    "ImageError",
    "LayerError",
    "Method",
    "MethodError",
    "TargetError",
    "explain",
    "get_method",
    "register",
]
