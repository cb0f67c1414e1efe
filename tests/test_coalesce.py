"""Sessions explained together: a batched request gives each image what it gets alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explainers import TargetError
from explainers.services import service
from explainers.services.edits import ImageEdit
from explainers.services.service import ImageRequest, run_explanation, run_explanations
from explainers.services.serving import Coalescer, Lane

SAMPLES = Path(__file__).parents[1] / "assets" / "samples"
METHODS = ("gradcam", "gradcam++", "layercam", "guided_backprop", "guided_gradcam")


def sample(name: str) -> Image.Image:
    return Image.open(SAMPLES / name).convert("RGB")


def assert_same(batched: service.ExplanationResult, alone: service.ExplanationResult) -> None:
    assert batched.target == alone.target
    assert [p.index for p in batched.top] == [p.index for p in alone.top]
    assert [p.probability for p in batched.top] == pytest.approx([p.probability for p in alone.top], abs=1e-6)
    assert batched.target_probability == pytest.approx(alone.target_probability, abs=1e-6)
    assert list(batched.maps) == list(alone.maps) and batched.errors == alone.errors
    for name in alone.maps:
        np.testing.assert_allclose(batched.maps[name], alone.maps[name], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(batched.raw[name], alone.raw[name], atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(batched.image, alone.image)
    assert batched.notes == alone.notes and batched.edit == alone.edit
    assert list(batched.steps) == list(alone.steps)


def test_batched_results_equal_each_image_alone(lite0) -> None:
    layer = lite0.default_layer
    requests = [
        ImageRequest(sample("chelsea.jpg")),
        ImageRequest(sample("coffee.jpg"), target=281),
        ImageRequest(sample("rocket.jpg"), edit=ImageEdit(box=(40, 40, 120, 120), fill="grey")),
    ]
    batched = run_explanations(lite0, requests, layer, METHODS, counterfactual=False)
    for request, result in zip(requests, batched):
        alone = run_explanation(lite0, request.image, layer, METHODS, request.target, edit=request.edit)
        assert_same(result, alone)


def test_a_bad_request_fails_alone_and_the_others_are_explained(lite0) -> None:
    requests = [ImageRequest(sample("chelsea.jpg")), ImageRequest(sample("coffee.jpg"), target=5000)]
    good, bad = run_explanations(lite0, requests, lite0.default_layer, ("gradcam",))
    assert isinstance(bad, TargetError) and "out of range" in str(bad)
    assert_same(good, run_explanation(lite0, requests[0].image, lite0.default_layer, ("gradcam",)))


def test_concurrent_sessions_share_a_pass_and_get_their_own_results(lite0) -> None:
    layer = lite0.default_layer
    images = [sample(name) for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "two_cats.jpg")]
    key = ("efficientnet_lite0", layer, METHODS, True)
    coalescer = Coalescer(
        lambda key, requests: run_explanations(lite0, requests, key[1], key[2], key[3]),
        Lane("quick", 1),
        window_s=0.05,
    )
    with ThreadPoolExecutor(len(images)) as pool:
        results = list(pool.map(lambda image: coalescer.submit(key, ImageRequest(image)), images))
    assert max(coalescer.batch_sizes) > 1, "the sessions were not batched"
    for image, result in zip(images, results):
        assert_same(result, run_explanation(lite0, image, layer, METHODS, counterfactual=True))


def test_a_batch_leaves_no_cyclic_garbage_holding_its_passes(lite0, chelsea):
    """The app runs no garbage collection after each script run (`.streamlit/config.toml`): a
    batch's evidence and views referenced each other, so each explanation left its forward pass's
    autograd graph (tens of MB) to the collector. Reference counting alone must free it."""
    import gc

    import torch

    from explainers import explain_batch
    from explainers.methods.batch import BatchEvidence, ImageEvidence

    def batch_garbage() -> list[str]:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found = [
                type(o).__name__
                for o in gc.garbage
                if isinstance(o, (BatchEvidence, ImageEvidence, torch.Tensor))
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        return found

    gc.collect()
    gc.disable()
    try:
        results = run_explanations(
            lite0,
            [ImageRequest(chelsea), ImageRequest(chelsea, 281)],
            "final",
            ["gradcam", "guided_backprop"],
        )
        assert all(not isinstance(r, Exception) for r in results)
        del results
        explain_batch(lite0.model, torch.rand(2, 3, 224, 224), "final", ["gradcam", "gradcam++"])
        assert batch_garbage() == []
    finally:
        gc.enable()
