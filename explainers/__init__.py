"""CAM Explorer's explanation methods: Grad-CAM and its relatives, computed from shared passes.

>>> from explainers import explain, METHODS
>>> result = explain(model, x, layer="layer4", methods=["gradcam", "gradcam++"])
>>> result.maps["gradcam"]  # (H, W) in [0, 1]
>>> result = explain(model, x, layer="layer4", methods=["guided_gradcam"])
>>> guided_to_image(result.maps["guided_gradcam"])  # (H, W, 3) uint8, from the raw (H, W, 3) map
"""

from explainers import cam, guided, score  # noqa: F401  (register the method families)
from explainers.batch import explain_batch
from explainers.core import METHODS, Evidence, Explanation, Method, explain, get_method, register
from explainers.errors import (
    Cancelled,
    ExplainerInputError,
    ImageError,
    LayerError,
    MethodError,
    TargetError,
)
from explainers.guided import guided_to_image
from explainers.multi import explain_classes, fuse_layers, stage_ends, sweep
from explainers.score import ScoreOptions, scorecam_passes

__all__ = [
    "METHODS",
    "Cancelled",
    "Evidence",
    "ExplainerInputError",
    "Explanation",
    "ImageError",
    "LayerError",
    "Method",
    "MethodError",
    "ScoreOptions",
    "TargetError",
    "explain",
    "explain_batch",
    "explain_classes",
    "fuse_layers",
    "get_method",
    "guided_to_image",
    "register",
    "scorecam_passes",
    "stage_ends",
    "sweep",
]
