"""Model knowledge for CAM Explorer: which classifiers exist, how to load and preprocess them."""

from models_zoo import bias_demo  # noqa: F401  (registers bias_demo_biased / bias_demo_unbiased)
from models_zoo.bias_demo import cue_box, demo_image, load_bias_demo
from models_zoo.custom import CustomModelError, load_custom_model
from models_zoo.folder import list_folder_models, load_folder_model, load_named, models_dir
from models_zoo.targets import FINAL, Anatomy, LayerInfo, probe
from models_zoo.zoo import (
    DEFAULT_MODEL,
    REGISTRY,
    ModelError,
    ModelSpec,
    Preprocessing,
    WeightsUnavailableError,
    ZooModel,
    list_zoo,
    load_model,
    register_model,
    wrap_model,
)

__all__ = [
    "FINAL",
    "Anatomy",
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
    "probe",
    "load_named",
    "models_dir",
    "register_model",
    "wrap_model",
]
