"""CAM Explorer's explanation methods: Grad-CAM and its relatives, computed from shared passes.

>>> from explainers import explain, METHODS
>>> result = explain(model, x, layer="layer4", methods=["gradcam", "gradcam++"])
>>> result.maps["gradcam"]  # (H, W) in [0, 1]
>>> result = explain(model, x, layer="layer4", methods=["guided_gradcam"])
>>> guided_to_image(result.maps["guided_gradcam"])  # (H, W, 3) uint8, from the raw (H, W, 3) map

The science lives in `explainers.methods` (the methods, their shared passes, the scores), what
the pages and command-line tools call in `explainers.services`.
"""

from explainers.errors import (
    Cancelled,
    ExplainerInputError,
    ImageError,
    LayerError,
    MethodError,
    TargetError,
)
from explainers.methods import cam, guided, score  # noqa: F401  (register the method families)
from explainers.methods.batch import explain_batch
from explainers.methods.core import METHODS, Evidence, Explanation, Method, explain, get_method, register
from explainers.methods.guided import guided_to_image
from explainers.methods.multi import explain_classes, fuse_layers, stage_ends, sweep
from explainers.methods.score import ScoreOptions, scorecam_passes
from explainers.moved import install as _install_moved_paths

_install_moved_paths()  # old paths such as explainers.core and `python -m explainers.audit`

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
