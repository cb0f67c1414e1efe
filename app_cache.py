"""Streamlit caches shared by every page of the app: models per server process, results by input.

The model cache is shared by every browser session; explanations never modify a model, so
sessions cannot interfere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import streamlit as st
from PIL import Image

from explainers import ExplainerInputError, service
from explainers.edits import ImageEdit
from explainers.service import (
    ClassMaps,
    ExplanationResult,
    FaithfulnessScore,
    LayerMaps,
    Prediction,
    ScorePlan,
)
from models_zoo import ZooModel, load_custom_model, load_model
from models_zoo.folder import fingerprint, load_folder_model

CUSTOM_PREFIX = "custom:"  # model names of uploaded models, e.g. "custom:resnet18:<hashes>"
FOLDER_PREFIX = "folder:"  # model names of the models folder's models, e.g. "folder:nurse_doctor"

V = TypeVar("V")


class BoundedStore(Generic[V]):
    """A thread-safe dict that forgets its least recently used entries beyond `size`.

    For results that cannot come from an `st.cache_data` function (Score-CAM draws a progress
    bar while it runs; uploaded models are built from files), shared by every session.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _zoo_model(name: str, random_weights: bool) -> ZooModel:
    # Shared by every session; explanations lock the model while they run (see service).
    return load_model(name, weights=None if random_weights else "default")


@st.cache_resource
def custom_models() -> BoundedStore[ZooModel]:
    # A few uploaded models at a time (the Trust page may hold two): each holds its weights in memory.
    return BoundedStore(4)


@st.cache_resource(max_entries=4, show_spinner="Loading your model from the models folder…")
def _folder_model(name: str, stamp: str) -> ZooModel:
    # `stamp` changes when the card or its files change on disk: the edited model is reloaded.
    return load_folder_model(name)


def get_model(name: str, random_weights: bool) -> ZooModel:
    """A zoo model by name, a models-folder one as "folder:NAME", or an uploaded one by the name
    `load_custom` gave it."""
    if name.startswith(FOLDER_PREFIX):
        folder_name = name.removeprefix(FOLDER_PREFIX)
        return _folder_model(folder_name, fingerprint(folder_name))
    if name.startswith(CUSTOM_PREFIX):
        model = custom_models().get(name)
        if model is None:
            raise ExplainerInputError("The uploaded model is no longer loaded; upload its files again.")
        return model
    return _zoo_model(name, random_weights)


def load_custom(
    architecture: str,
    weights: bytes,
    labels: bytes,
    preprocessing: tuple[tuple[str, object], ...] = (),
    weights_digest: str | None = None,
) -> str:
    """Build an uploaded model once per (architecture, files, preprocessing) and return its name.

    Args:
        preprocessing: changes to the architecture's preprocessing, as (key, value) pairs
            (see `models_zoo.custom.preprocessing_from`); empty keeps the architecture's own.
        weights_digest: the weights' content hash when the caller already has it (hashing a
            1 GB file takes seconds: once per upload, not once per rerun).

    Raises:
        CustomModelError: the files do not make a model (see `models_zoo.custom`).
    """
    digests = f"{(weights_digest or service.content_hash(weights))[:16]}:{service.content_hash(labels)[:16]}"
    name = f"{CUSTOM_PREFIX}{architecture}:{digests}:{service.content_hash(repr(preprocessing).encode())[:8]}"
    store = custom_models()
    if store.get(name) is None:
        with st.spinner("Loading your model…"):
            model = load_custom_model(
                architecture, weights, labels, preprocessing=dict(preprocessing) or None
            )
            store.put(name, model)
    return name


@st.cache_data(max_entries=16, show_spinner=False)
def get_image(digest: str, _data: bytes) -> Image.Image:
    return service.prepare_image(_data)


@st.cache_data(max_entries=256, show_spinner=False)
def get_predictions(
    digest: str, model: str, random_weights: bool, _image: Image.Image, edit: ImageEdit | None = None
) -> list[Prediction]:
    return service.predict(get_model(model, random_weights), _image, edit=edit)


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
    edit: ImageEdit | None = None,
) -> ExplanationResult:
    # `edit` (a frozen dataclass) is part of the key: an edited image is explained apart.
    zoo_model = get_model(model, random_weights)
    return service.run_explanation(zoo_model, _image, layer, methods, target, counterfactual, edit=edit)


@st.cache_data(max_entries=64, show_spinner="Counting Score-CAM's forward passes…")
def get_scorecam_plan(
    digest: str,
    model: str,
    random_weights: bool,
    layer: str,
    target: int,
    max_channels: int | None,
    _image: Image.Image,
) -> ScorePlan:
    return service.scorecam_plan(get_model(model, random_weights), _image, layer, target, max_channels)


@st.cache_resource
def scorecam_results() -> BoundedStore[ExplanationResult]:
    # Score-CAM runs outside st.cache_data (it draws a progress bar); its results land here,
    # keyed like the explanations, plus max_channels.
    return BoundedStore(32)


@st.cache_resource
def occlusion_results() -> BoundedStore[ExplanationResult]:
    # Occlusion runs outside st.cache_data too (a progress bar); keyed like Score-CAM's results,
    # plus its window, stride and baseline.
    return BoundedStore(32)


@st.cache_data(max_entries=32, show_spinner="Explaining the top classes…")
def get_top_classes(
    digest: str,
    model: str,
    random_weights: bool,
    layer: str,
    method: str,
    counterfactual: bool,
    _image: Image.Image,
) -> ClassMaps:
    return service.top_classes(get_model(model, random_weights), _image, layer, method, 5, counterfactual)


@st.cache_data(max_entries=32, show_spinner="Sweeping the layers…")
def get_sweep(
    digest: str,
    model: str,
    random_weights: bool,
    method: str,
    target: int,
    counterfactual: bool,
    fuse: bool,
    _image: Image.Image,
) -> LayerMaps:
    zoo_model = get_model(model, random_weights)
    return service.layer_sweep(zoo_model, _image, method, target, counterfactual, fuse)


@st.cache_resource
def faithfulness_results() -> BoundedStore[dict[str, FaithfulnessScore]]:
    # Not an st.cache_data function: the scoring draws a progress bar into a block the page made,
    # and st.cache_data would replay that drawing on a cache hit, into a block that no longer
    # exists (CacheReplayClosureError in the next session or rerun that asks for the same scores).
    return BoundedStore(64)


def get_faithfulness(
    key: tuple,
    model: str,
    random_weights: bool,
    methods: tuple[str, ...],
    _image: Image.Image,
    _result: ExplanationResult,
    _progress: Callable[[int, int], object] | None = None,
) -> dict[str, FaithfulnessScore]:
    """The faithfulness scores of a result's maps, computed once per (explanation, methods).

    `key` names the explanation `_result` came from (its cache key); `_progress` is called as the
    forward passes are done (the page's progress bar).
    """
    store_key = (key, model, random_weights, methods)
    scores = faithfulness_results().get(store_key)
    if scores is None:
        scores = service.score_faithfulness(
            get_model(model, random_weights), _image, _result, methods, progress=_progress
        )
        faithfulness_results().put(store_key, scores)
    return scores
