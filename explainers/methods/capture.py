"""Capture feature maps during one forward pass, leaving the model untouched.

Where a model's feature maps are (target names, the final feature map, stage ends) is model
knowledge and lives in `models_zoo.targets`; this module names its pieces for the explainers.
"""

from models_zoo.targets import (
    FINAL,
    Captured,
    capture_targets,
    check_target,
    model_device,
    parse_target,
)
from models_zoo.targets import resolve_module as resolve_layer

__all__ = [
    "FINAL",
    "Captured",
    "capture_targets",
    "check_target",
    "model_device",
    "parse_target",
    "resolve_layer",
]
