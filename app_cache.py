"""Streamlit caches shared by every page of the app: models per server process, results by input.

The model cache is shared by every browser session; explanations never modify a model, so
sessions cannot interfere.
"""

from __future__ import annotations

import streamlit as st
from PIL import Image

from explainers import service
from explainers.service import ExplanationResult, Prediction
from models_zoo import ZooModel, load_model


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def get_model(name: str, random_weights: bool) -> ZooModel:
    # Shared by every session; explanations lock the model while they run (see service).
    return load_model(name, weights=None if random_weights else "default")


@st.cache_data(max_entries=16, show_spinner=False)
def get_image(digest: str, _data: bytes) -> Image.Image:
    return service.prepare_image(_data)


@st.cache_data(max_entries=256, show_spinner=False)
def get_predictions(digest: str, model: str, random_weights: bool, _image: Image.Image) -> list[Prediction]:
    return service.predict(get_model(model, random_weights), _image)


# A few MB per entry (one float map per method): bounded so a long demo cannot fill the memory.
@st.cache_data(max_entries=64, show_spinner="Computing the explanation…")
def get_explanation(
    digest: str,
    model: str,
    random_weights: bool,
    layer: str,
    target: int,
    methods: tuple[str, ...],
    counterfactual: bool,
    _image: Image.Image,
) -> ExplanationResult:
    zoo_model = get_model(model, random_weights)
    return service.run_explanation(zoo_model, _image, layer, methods, target, counterfactual)
