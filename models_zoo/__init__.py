"""Model knowledge for CAM Explorer: which classifiers exist, how to load and preprocess them."""

from models_zoo import bias_demo  # noqa: F401  (registers bias_demo_biased / bias_demo_unbiased)
from models_zoo.bias_demo import cue_box, demo_image, load_bias_demo
from models_zoo.custom import CustomModelError, load_custom_model
from models_zoo.folder import list_folder_models, load_folder_model, load_named, models_dir
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
    "CustomModelError",
    "REGISTRY",
    "LayerInfo",
    "ModelError",
    "ModelSpec",
    "Preprocessing",
    "WeightsUnavailableError",
    "ZooModel",
    "bias_demo",
    "cue_box",
    "demo_image",
    "list_folder_models",
    "list_zoo",
    "load_bias_demo",
    "load_custom_model",
    "load_folder_model",
    "load_model",
    "load_named",
    "models_dir",
    "probe_layers",
    "register_model",
    "wrap_model",
]
