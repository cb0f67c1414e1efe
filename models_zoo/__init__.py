"""Model knowledge for CAM Explorer: which classifiers exist, how to load and preprocess them."""

from models_zoo.zoo import (
    DEFAULT_MODEL,
    REGISTRY,
    LayerInfo,
    ModelError,
    ModelSpec,
    Preprocessing,
    WeightsUnavailableError,
    ZooModel,
    list_zoo,
    load_model,
    probe_layers,
    register_model,
    wrap_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "LayerInfo",
    "ModelError",
    "ModelSpec",
    "Preprocessing",
    "WeightsUnavailableError",
    "ZooModel",
    "list_zoo",
    "load_model",
    "probe_layers",
    "register_model",
    "wrap_model",
]
