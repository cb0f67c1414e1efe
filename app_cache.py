"""Streamlit caches shared by every page of the app: models per server process, results by input.

The model cache is shared by every browser session; explanations never modify a model, so
sessions cannot interfere.

Results are kept in `SizedCache`s: one store per server process, bounded in bytes (not only in
entries: an explanation at an early layer is fifty times one at the final map), least recently
used first out. Unlike `st.cache_data`, a hit costs no copy: every session gets the same object,
so its arrays are made read-only when stored. Two sessions asking for the same result at once
compute it once. The bounds (MB, see `CACHE_BUDGETS_MB`) keep the server's memory level however
many photos a class uploads.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from contextlib import nullcontext
from typing import Any, Generic, TypeVar

import numpy as np
import streamlit as st
import torch
from PIL import Image
from plotly.basedatatypes import BaseFigure

from explainers import ExplainerInputError
from explainers.services import service
from explainers.services.edits import ImageEdit
from explainers.services.service import (
    ClassMaps,
    ExplanationResult,
    FaithfulnessScore,
    ImageRequest,
    LayerMaps,
    Prediction,
    ScorePlan,
)
from explainers.services.serving import Coalescer, Lane, apply_thread_budget, keep_freed_memory, make_lanes
from models_zoo import ZooModel, load_custom_model, load_model
from models_zoo.folder import fingerprint, load_folder_model

CUSTOM_PREFIX = "custom:"  # model names of uploaded models, e.g. "custom:resnet18:<hashes>"
FOLDER_PREFIX = "folder:"  # model names of the models folder's models, e.g. "folder:nurse_doctor"

# Memory bounds of the result caches, in MB (their sum is what results can hold, models aside).
# Sized for a class: 32 students with two or three photos each keep every explanation, so a
# student who goes back to a photo gets it at once (with the explanations at 96 MB, 16 sessions'
# second photos pushed out their first ones, and each "cached" rerun cost a fresh one).
CACHE_BUDGETS_MB = {
    "images": 96,  # decoded uploads, at most 1024 px on the long side (up to 3 MB each)
    "predictions": 4,
    "explanations": 192,  # 2.3 MB each for the default page at the final map: about 80
    "scorecam_plans": 1,
    "top_classes": 24,
    "sweeps": 24,
    "faithfulness": 8,
    "pictures": 24,  # rendered overlays, JPEG for the page and PNG for downloads
    "scorecam": 24,
    "occlusion": 16,
    "figures": 32,  # plotly charts: a heat map to inspect is 0.2 MB at 224 x 224, a top-5 chart 7 KB
}

V = TypeVar("V")

_TRACE_ARRAYS = ("x", "y", "z", "customdata", "text")  # where a plotly trace keeps its data

# Torch's threads per job and the lanes jobs wait in (see explainers.services.serving): quick
# jobs (predictions, explanations, top-5) never wait behind long ones (sweeps, faithfulness
# curves, Score-CAM), and no more jobs compute at once than the cores can take.
LANES = make_lanes()
apply_thread_budget(LANES)
keep_freed_memory()  # batched passes reuse freed activations instead of faulting fresh pages in


def footprint(value: object, _seen: dict[int, int] | None = None) -> int:
    """Roughly how many bytes ``value`` holds: its arrays, tensors, images and byte strings, each
    counted once (a guided map is both an explanation's map and its raw map: one array)."""
    seen: dict[int, int] = {} if _seen is None else _seen
    if isinstance(value, (np.ndarray, torch.Tensor)):
        # Arrays that start at the same address (views, a tensor and its numpy view) count once,
        # as the largest of them: a prefix view met first must not hide its larger base.
        address = value.__array_interface__["data"][0] if isinstance(value, np.ndarray) else value.data_ptr()
        size = value.nbytes if isinstance(value, np.ndarray) else value.element_size() * value.nelement()
        counted = seen.get(address, 0)
        seen[address] = max(counted, size)
        return max(0, size - counted)
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if isinstance(value, BaseFigure):  # a plotly chart: its traces' arrays
        return 64 + sum(
            footprint(getattr(trace, name, None), seen) for trace in value.data for name in _TRACE_ARRAYS
        )
    if isinstance(value, dict):
        return 64 + sum(footprint(k, seen) + footprint(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 64 + sum(footprint(item, seen) for item in value)
    if dataclasses.is_dataclass(value):
        return 64 + sum(footprint(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return 64


def freeze(value: object) -> object:
    """Make the arrays inside ``value`` read-only: a cached result is shared by every session."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, dict):
        for item in value.values():
            freeze(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            freeze(item)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            freeze(getattr(value, f.name))
    return value


class BoundedStore(Generic[V]):
    """A thread-safe dict that forgets its least recently used entries beyond `size` entries
    or `max_bytes` bytes (an entry larger than `max_bytes` is not kept).

    For results that cannot come from a cached function (Score-CAM draws a progress bar while it
    runs; uploaded models are built from files), shared by every session.
    """

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: V) -> None:
        size = footprint(value) if self._max_bytes is not None else 0
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if self._max_bytes is not None and size > self._max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > self._size or (
                self._max_bytes is not None and self._bytes > self._max_bytes
            ):
                self._bytes -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class SizedCache:
    """A function's results by argument, in a `BoundedStore` of ``max_mb``, shared by sessions.

    As with `st.cache_data`, arguments whose name starts with "_" are not part of the key (large
    or unhashable inputs named by another argument, such as an image by its digest).
    """

    def __init__(
        self, fn: Callable[..., V], max_mb: float, spinner: str | None, lane: Lane | None = None
    ) -> None:
        self.fn = fn
        self.spinner = spinner
        self.lane = lane
        self.store: BoundedStore[V] = BoundedStore(10**9, int(max_mb * 2**20))
        self._signature = inspect.signature(fn)
        self._locks: weakref.WeakValueDictionary[Hashable, threading.Lock] = weakref.WeakValueDictionary()
        self._locks_lock = threading.Lock()
        functools.update_wrapper(self, fn)

    def key(self, *args: Any, **kwargs: Any) -> Hashable:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple((name, value) for name, value in bound.arguments.items() if not name.startswith("_"))

    def __call__(self, *args: Any, **kwargs: Any) -> V:
        return self.fetch(
            self.key(*args, **kwargs), lambda: self.fn(*args, **kwargs), self.spinner, self.lane
        )

    def fetch(
        self, key: Hashable, compute: Callable[[], V], spinner: str | None = None, lane: Lane | None = None
    ) -> V:
        """The value stored under ``key`` (see `key`), else ``compute()``'s, stored: the cache filled
        another way than by its function (the top-5 of an explanation already on its way)."""
        value = self.store.get(key)
        if value is not None:
            return value
        with self._locks_lock:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
        with lock:  # a second session asking for the same result waits for the first's
            value = self.store.get(key)
            if value is None:
                with st.spinner(spinner) if spinner else nullcontext():
                    with lane.slot() if lane else nullcontext():
                        value = freeze(compute())
                self.store.put(key, value)
        return value


SIZED_CACHES: dict[str, SizedCache] = {}


def sized_cache(
    budget: str, spinner: str | None = None, lane: Lane | None = None
) -> Callable[[Callable[..., V]], SizedCache]:
    """Decorator: cache a function's results in the named budget of `CACHE_BUDGETS_MB`,
    computing them in ``lane`` (None: no lane, for work that does not run the model)."""

    def decorate(fn: Callable[..., V]) -> SizedCache:
        cache = SizedCache(fn, CACHE_BUDGETS_MB[budget], spinner, lane)
        SIZED_CACHES[budget] = cache
        return cache

    return decorate


def clear_caches() -> None:
    """Forget every cached result (the models stay loaded)."""
    for cache in SIZED_CACHES.values():
        cache.store.clear()
    scorecam_results().clear()
    occlusion_results().clear()
    figures().clear()


def cache_usage() -> dict[str, tuple[int, int]]:
    """Budget name -> (entries, bytes) now held."""
    return {name: (len(cache.store), cache.store.bytes) for name, cache in SIZED_CACHES.items()}


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


@sized_cache("images")
def get_image(digest: str, _data: bytes) -> Image.Image:
    return service.prepare_image(_data)


@sized_cache("predictions", lane=LANES.quick)
def get_predictions(
    digest: str, model: str, random_weights: bool, _image: Image.Image, edit: ImageEdit | None = None
) -> list[Prediction]:
    return LANES.quick.compute(service.predict, get_model(model, random_weights), _image, edit=edit)


def _explain_together(key: tuple, requests: Sequence[ImageRequest]) -> list[ExplanationResult | Exception]:
    model, random_weights, layer, methods, counterfactual = key
    zoo_model = get_model(model, random_weights)  # a Streamlit cache: on the script's thread
    # The coalescer holds a slot of LANES.quick while this runs.
    return LANES.quick.compute(service.run_explanations, zoo_model, requests, layer, methods, counterfactual)


# Sessions asking for explanations with the same model, layer, methods and counterfactual at the
# same moment share one batched pass; each gets what it would have got alone. On a CPU a batch of
# more than 8 costs more an image, not less: at 224 px Lite0's largest activations pass glibc's
# 32 MB mmap limit, and each pass maps and zeroes them afresh (one core: 0.071 CPU-s an image at
# 4, 0.072 at 8, 0.091 and 11,000 page faults an image at 16). A GPU gains from larger batches.
EXPLANATIONS: Coalescer[ImageRequest, ExplanationResult] = Coalescer(
    _explain_together, LANES.quick, window_s=0.005, max_batch=16 if torch.cuda.is_available() else 8
)


@sized_cache("explanations", spinner="Computing the explanation…")  # in LANES.quick, batched
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
    key = (model, random_weights, layer, methods, counterfactual)
    return EXPLANATIONS.submit(key, ImageRequest(_image, target, edit))


def get_first_predictions(
    digest: str,
    model: str,
    random_weights: bool,
    layer: str,
    methods: tuple[str, ...],
    counterfactual: bool,
    _image: Image.Image,
) -> list[Prediction]:
    """`get_predictions` for the Explore page, which explains the top-1 class of a new image: on a
    miss, the top 5 come from that explanation's forward pass, and the explanation is stored for
    the request that follows (`get_explanation` with the top-1 class), so a fresh upload costs one
    forward pass, not two. Without methods, or when the explanation cannot be made (its error
    shows when the page asks for it), a plain prediction."""
    if not methods:
        return get_predictions(digest, model, random_weights, _image)

    def from_explanation() -> list[Prediction]:
        try:
            result = EXPLANATIONS.submit(
                (model, random_weights, layer, methods, counterfactual), ImageRequest(_image)
            )
        except ExplainerInputError:
            zoo_model = get_model(model, random_weights)
            with LANES.quick.slot():
                return LANES.quick.compute(service.predict, zoo_model, _image)
        key = get_explanation.key(
            digest, model, random_weights, layer, result.target, methods, counterfactual, _image
        )
        get_explanation.store.put(key, freeze(result))
        return list(result.top)

    key = get_predictions.key(digest, model, random_weights, _image)
    return get_predictions.fetch(key, from_explanation, get_explanation.spinner)


@sized_cache("scorecam_plans", spinner="Counting Score-CAM's forward passes…", lane=LANES.quick)
def get_scorecam_plan(
    digest: str,
    model: str,
    random_weights: bool,
    layer: str,
    target: int,
    max_channels: int | None,
    _image: Image.Image,
) -> ScorePlan:
    zoo_model = get_model(model, random_weights)
    return LANES.quick.compute(service.scorecam_plan, zoo_model, _image, layer, target, max_channels)


@st.cache_resource
def scorecam_results() -> BoundedStore[ExplanationResult]:
    # Score-CAM runs outside st.cache_data (it draws a progress bar); its results land here,
    # keyed like the explanations, plus max_channels.
    return BoundedStore(32, CACHE_BUDGETS_MB["scorecam"] * 2**20)


@st.cache_resource
def occlusion_results() -> BoundedStore[ExplanationResult]:
    # Occlusion runs outside the cached functions too (a progress bar); keyed like Score-CAM's
    # results, plus its window, stride and baseline.
    return BoundedStore(32, CACHE_BUDGETS_MB["occlusion"] * 2**20)


@sized_cache("top_classes", spinner="Explaining the top classes…", lane=LANES.quick)
def get_top_classes(
    digest: str,
    model: str,
    random_weights: bool,
    layer: str,
    method: str,
    counterfactual: bool,
    _image: Image.Image,
) -> ClassMaps:
    zoo_model = get_model(model, random_weights)
    return LANES.quick.compute(service.top_classes, zoo_model, _image, layer, method, 5, counterfactual)


@sized_cache("sweeps", spinner="Sweeping the layers…", lane=LANES.long)
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
    return LANES.long.compute(service.layer_sweep, zoo_model, _image, method, target, counterfactual, fuse)


@sized_cache("faithfulness", lane=LANES.long)  # the page shows a progress bar, not a spinner
def get_faithfulness(
    key: tuple,
    model: str,
    random_weights: bool,
    methods: tuple[str, ...],
    _image: Image.Image,
    _result: ExplanationResult,
    _progress: Callable[[int, int], object] | None = None,
) -> dict[str, FaithfulnessScore]:
    # `key` names the explanation `_result` came from (its cache key).
    return service.score_faithfulness(
        get_model(model, random_weights), _image, _result, methods, progress=_progress
    )


@sized_cache("pictures")
def get_picture(
    key: tuple, method: str, colormap: str, opacity: float, _result: ExplanationResult, kind: str = "JPEG"
) -> bytes:
    """One panel of an explanation, encoded once: a rerun sends the same bytes again (Streamlit
    passes JPEG bytes through to the browser as they are). "JPEG" for the page, "PNG" for the
    download; `key` names the explanation `_result` (its cache key); method "input" is the crop."""
    picture = _result.image if method == "input" else service.render_panel(_result, method, colormap, opacity)
    return service.to_png(picture) if kind == "PNG" else service.to_jpeg(picture)


@st.cache_resource
def figures() -> BoundedStore[object]:
    # Plotly figures by (kind, explanation key, …): building one validates every property, which
    # costs more than drawing it. Bounded in bytes: 48 entries, as before, were fewer than 16
    # sessions' two photos' two charts, and every "cached" rerun rebuilt them.
    return BoundedStore(10**9, CACHE_BUDGETS_MB["figures"] * 2**20)


def get_figure(key: Hashable, build: Callable[[], V]) -> V:
    """The figure stored under ``key``, built once by ``build``; shared, never modified."""
    store = figures()
    figure = store.get(key)
    if figure is None:
        figure = build()
        store.put(key, figure)
    return figure


def settle_heap() -> None:
    """Exempt everything alive now (the imported libraries: about 400,000 objects) from Python's
    garbage collector, which finds no cycles among them.

    A full collection walks every object: with PyTorch, torchvision and plotly loaded it took
    0.25-0.5 CPU-seconds, and Streamlit ran one after every script run (``runner.postScriptGC``,
    now off in .streamlit/config.toml): three quarters of what a cached rerun of the Explore page
    cost the server. Frozen, Python's own collections walk only what came later (sessions,
    results, models). Only the libraries are frozen: frozen objects that later became cyclic
    garbage would never be freed.
    """
    gc.collect()
    gc.freeze()


settle_heap()  # at import: the first script run of a server process, once

IMPORTED = True  # last: app.py shows its start-up spinner until a first import has got this far
