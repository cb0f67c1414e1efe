"""The app's result caches: bounded in bytes, shared without copies, computed once per key."""

from __future__ import annotations

import gc
import threading
import time
import tomllib
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import app_cache
from app_cache import CACHE_BUDGETS_MB, SIZED_CACHES, BoundedStore, SizedCache, footprint


def test_store_keeps_its_byte_budget_least_recently_used_first() -> None:
    store = BoundedStore(100, max_bytes=3_000)
    for i in range(3):
        store.put(i, np.zeros(1_000, np.uint8))
    store.get(0)  # now the most recently used
    store.put(3, np.zeros(1_000, np.uint8))
    assert store.get(1) is None, "the least recently used entry goes first"
    assert store.get(0) is not None and store.get(3) is not None
    assert store.bytes <= 3_000
    store.put("huge", np.zeros(10_000, np.uint8))
    assert store.get("huge") is None, "an entry over the whole budget is not kept"
    assert store.bytes <= 3_000


def test_store_replaces_an_entry_without_counting_it_twice() -> None:
    store = BoundedStore(10, max_bytes=10_000)
    store.put("a", np.zeros(1_000, np.uint8))
    store.put("a", np.zeros(2_000, np.uint8))
    assert len(store) == 1 and store.bytes == 2_000


def test_footprint_counts_arrays_inside_results() -> None:
    result = {"maps": [np.zeros((224, 224), np.float32) for _ in range(2)], "png": b"x" * 1000}
    assert 2 * 224 * 224 * 4 + 1000 <= footprint(result) < 2 * 224 * 224 * 4 + 2000


def test_cached_results_are_shared_and_read_only() -> None:
    calls = []
    cache = SizedCache(lambda digest, _image: calls.append(digest) or {"map": np.ones(4)}, 1, None)
    first = cache("a", _image=object())
    second = cache("a", _image=object())  # "_" arguments are not part of the key
    assert first is second and calls == ["a"]
    with pytest.raises(ValueError):
        first["map"][0] = 0


def test_concurrent_requests_for_one_key_compute_once() -> None:
    calls = []

    def slow(key: str) -> np.ndarray:
        calls.append(key)
        time.sleep(0.2)
        return np.zeros(3)

    cache = SizedCache(slow, 1, None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache("k"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["k"] and len(results) == 4 and all(r is results[0] for r in results)


def test_an_exception_is_not_cached() -> None:
    attempts = []

    def flaky(key: str) -> int:
        attempts.append(key)
        if len(attempts) == 1:
            raise RuntimeError("first time")
        return 7

    cache = SizedCache(flaky, 1, None)
    with pytest.raises(RuntimeError):
        cache("k")
    assert cache("k") == 7 and len(attempts) == 2


def test_every_page_cache_has_a_budget() -> None:
    assert set(SIZED_CACHES) <= set(CACHE_BUDGETS_MB)
    assert {"images", "explanations", "predictions"} <= set(SIZED_CACHES)
    app_cache.clear_caches()
    assert all(entries == 0 for entries, _ in app_cache.cache_usage().values())


def test_the_libraries_are_frozen_out_of_the_garbage_collector_and_no_full_collection_per_run() -> None:
    """A full collection walks every object: with Torch and plotly loaded it cost 0.25-0.5 CPU-s,
    most of a cached rerun. The libraries are frozen at import, and Streamlit's collection after
    every run is off (Python's own generational collector still frees cycles)."""

    assert gc.get_freeze_count() > 100_000  # the imported libraries (about 400,000 objects)
    assert gc.isenabled()
    config = tomllib.loads((Path(app_cache.__file__).parent / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


def test_a_cycle_made_after_the_freeze_is_still_collected() -> None:

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    gc.collect()
    assert alive() is None


def test_footprint_counts_shared_memory_once() -> None:
    """A guided map is both an explanation's map and its raw map: one array, counted once."""
    grads = np.zeros((224, 224, 3), np.float32)
    tensor = torch.zeros(1000)
    assert footprint({"maps": grads, "raw": grads}) == 64 + len("maps") + len("raw") + grads.nbytes
    assert footprint([tensor, tensor.numpy(), tensor[:10]]) == 64 + 4000
    assert footprint([grads, grads.copy()]) == 64 + 2 * grads.nbytes
    # A prefix view met before its base does not hide the base's other bytes.
    assert footprint([tensor[:10], tensor]) == 64 + 4000
    assert footprint([grads[:1], grads]) == 64 + grads.nbytes


def test_a_new_image_gets_its_top5_and_its_explanation_from_one_forward_pass(chelsea) -> None:
    from explainers.services import service

    app_cache.clear_caches()
    zoo = app_cache.get_model("efficientnet_lite0", False)
    methods = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam")
    forwards = []
    handle = zoo.model.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    try:
        top = app_cache.get_first_predictions(
            "chelsea", "efficientnet_lite0", False, "final", methods, False, chelsea
        )
        assert forwards == [1]
        # The page then asks for the top-1 class's explanation: it is there, with nothing computed.
        result = app_cache.get_explanation(
            "chelsea", "efficientnet_lite0", False, "final", top[0].index, methods, False, chelsea
        )
        assert forwards == [1]
        assert (
            app_cache.get_first_predictions(
                "chelsea", "efficientnet_lite0", False, "final", methods, False, chelsea
            )
            is top
        )
    finally:
        handle.remove()
    alone = service.predict(zoo, chelsea)
    assert [p.index for p in top] == [p.index for p in alone]
    np.testing.assert_allclose([p.probability for p in top], [p.probability for p in alone], atol=1e-5)
    expected = service.run_explanation(zoo, chelsea, "final", methods, target=top[0].index)
    assert result.target == expected.target == top[0].index
    for name in methods:
        np.testing.assert_allclose(result.maps[name], expected.maps[name], rtol=1e-4, atol=1e-6)


def test_an_explanation_that_cannot_be_made_still_gives_the_top5(chelsea) -> None:
    app_cache.clear_caches()
    top = app_cache.get_first_predictions(
        "chelsea", "efficientnet_lite0", False, "no_such_layer", ("gradcam",), False, chelsea
    )
    assert len(top) == 5 and top[0].label
    assert (
        app_cache.get_first_predictions("chelsea", "efficientnet_lite0", False, "final", (), False, chelsea)
        is top
    )


def test_the_figure_store_keeps_a_classes_charts_and_counts_their_arrays() -> None:
    from explainers.services.figures import heatmap_figure, predictions_figure
    from explainers.services.service import Prediction

    heat = heatmap_figure(np.random.default_rng(0).random((224, 224), dtype=np.float32))
    top5 = predictions_figure([Prediction(i, f"class {i}", 0.1) for i in range(5)], highlight=0)
    assert 224 * 224 * 4 <= footprint(heat) < 224 * 224 * 4 + 4096
    assert footprint(top5) < 4096
    store = app_cache.figures()
    store.clear()
    for session in range(32):  # 32 students, two photos each: a heat map and a top-5 chart per photo
        for photo in range(2):
            store.put(("heatmap", session, photo), heat)
            store.put(("top5", session, photo), top5)
    assert len(store) == 128 and store.bytes <= CACHE_BUDGETS_MB["figures"] * 2**20
    store.clear()
