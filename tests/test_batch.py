"""Batched explanation and scores (explain_batch, faithfulness_batch): each image's result equals
its own `explain` / `faithfulness` call."""

from __future__ import annotations

import collections
import math
import threading

import pytest
import torch
import torchvision
from conftest import assert_untouched, frozen, module_state
from torch import nn

from explainers import METHODS, LayerError, MethodError, TargetError, explain, explain_batch
from explainers.errors import Cancelled, ExplainerInputError
from explainers.methods.core import Method, cam_from_sum, register
from explainers.methods.metrics import (
    CPU_PARALLEL_SCORE_BATCH_SIZES,
    CPU_SCORE_BATCH_SIZES,
    faithfulness,
    faithfulness_batch,
)
from explainers.services.samples import augmented_samples

# Score-CAM scores 8 channels per image (its masked passes run per image in both paths).
SCORE_OPTIONS = {"max_channels": 8}
# Occlusion on the random ResNet scores the logit: untrained, every class's probability is near
# 1/1000 and an occluded window moves it by about 1e-6, so the probability drops (raw) would pass
# any absolute tolerance; the logit's drops are near 0.01-0.04.
RANDOM_MODEL_OPTIONS = SCORE_OPTIONS | {"occlusion_score": "logit"}
# Float32 results of batched and one-image kernels differ by rounding, and which kernels run
# depends on the batch size and the CPU: on an AVX-512 CPU Lite0's deconvnet map moved by up to
# 1.2e-4 between the batched and the one-image pass, and from one run to the next (on an AVX2 CPU
# under 1e-5; a one-image call on 1 thread instead of 2 moves it by 9e-5). A batching mistake
# (another image's gradient, a wrong target) moves a map by tenths.
TOLERANCE = 3e-4


def assert_same(batched, single) -> None:
    """One image's batched explanation against its own `explain` call."""
    assert batched.target == single.target
    assert batched.layer == single.layer and batched.counterfactual == single.counterfactual
    assert set(batched.maps) == set(single.maps)
    assert (batched.logits - single.logits).abs().max() <= TOLERANCE
    for name in single.maps:
        raw_scale = max(1.0, float(single.raw[name].abs().max()))
        peak = float(single.raw[name].clamp(min=0).max())
        # The map divides raw by its peak, so raw's tolerance grows by raw's scale over that peak:
        # the random ResNet's counterfactual occlusion has positive drops of 2e-3 against 3.5e-2
        # overall, and 1.2e-7 of rounding in raw moved its map by 1.5e-4 (AVX-512).
        map_scale = max(1.0, raw_scale / peak) if peak > 0 else 1.0
        for kind, scale in (("maps", map_scale), ("raw", raw_scale)):
            ours, theirs = getattr(batched, kind)[name], getattr(single, kind)[name]
            assert ours.shape == theirs.shape, (name, kind)
            difference = float((ours - theirs).abs().max())
            assert difference <= TOLERANCE * scale, (name, kind, difference, scale)


@pytest.fixture(scope="module")
def images(lite0) -> torch.Tensor:
    """Eight varied inputs: the six bundled samples, then two augmented (mirrored, rotated, darker)."""
    return torch.cat([lite0.preprocess.crop_and_tensor(image)[1] for image in augmented_samples(8)])


@pytest.fixture(scope="module")
def small(images) -> torch.Tensor:
    """The same inputs at 112 x 112, for the tests that are about batching rather than models."""
    return images[..., ::2, ::2].contiguous()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(18)
    return frozen(torchvision.models.resnet18(weights=None))


def methods_for(model_name: str, layer: str, counterfactual: bool) -> list[str]:
    """Every registered method that applies to the case."""
    names = [n for n in METHODS if not (counterfactual and n == "scorecam")]  # no counterfactual variant
    if model_name == "lite0" or layer != "final":
        names.remove("cam")  # CAM needs GAP + one linear layer right after the layer (ResNet's final)
    return names


CASES = [
    # (model, layer, number of images, counterfactual); the first three run by default.
    pytest.param("lite0", "final", 3, False, id="lite0-final-3"),
    pytest.param("resnet18", "layer2", 3, True, id="resnet18-layer2-3-counterfactual"),
    pytest.param("resnet18", "final", 1, False, id="resnet18-final-1"),
    pytest.param("lite0", "final", 3, True, id="lite0-final-3-counterfactual", marks=pytest.mark.slow),
    pytest.param("lite0", "final", 1, False, id="lite0-final-1", marks=pytest.mark.slow),
    pytest.param("lite0", "final", 1, True, id="lite0-final-1-counterfactual", marks=pytest.mark.slow),
    pytest.param("resnet18", "final", 3, False, id="resnet18-final-3", marks=pytest.mark.slow),
    pytest.param("resnet18", "final", 3, True, id="resnet18-final-3-counterfactual", marks=pytest.mark.slow),
    pytest.param("resnet18", "final", 1, True, id="resnet18-final-1-counterfactual", marks=pytest.mark.slow),
    pytest.param("resnet18", "layer2", 3, False, id="resnet18-layer2-3", marks=pytest.mark.slow),
    pytest.param("resnet18", "layer2", 1, False, id="resnet18-layer2-1", marks=pytest.mark.slow),
    pytest.param("resnet18", "layer2", 1, True, id="resnet18-layer2-1-counterfactual", marks=pytest.mark.slow),
]  # fmt: skip


@pytest.mark.parametrize(("model_name", "layer", "count", "counterfactual"), CASES)
def test_every_method_equals_per_image_explain(request, images, model_name, layer, count, counterfactual):
    model = request.getfixturevalue(model_name)
    model = model.model if model_name == "lite0" else model
    x = images[:count] if count == 1 else images[[0, 4, 7]]  # a sample, a mirrored one, a rotated one
    targets = [None] if count == 1 else [None, 281, None]  # some given, some each image's top-1
    names = methods_for(model_name, layer, counterfactual)
    state, weights = module_state(model), {k: v.clone() for k, v in model.state_dict().items()}
    options = SCORE_OPTIONS if model_name == "lite0" else RANDOM_MODEL_OPTIONS

    results = explain_batch(model, x, layer, names, targets, counterfactual, options=options)

    assert len(results) == count
    for i, result in enumerate(results):
        single = explain(model, x[i : i + 1], layer, names, targets[i], counterfactual, options=options)
        assert_same(result, single)
    if count > 1:
        assert results[1].target == 281
        assert results[0].target == int(results[0].logits.argmax())
    assert_untouched(model, state, weights)


def test_chunks_give_the_same_results_as_one_batch(resnet18, small):
    """batch_size splits the images; every split gives each image its own `explain` result."""
    names = ["gradcam", "gradcam++", "layercam", "guided_gradcam"]
    x = small[:5]
    targets = [3, None, 7, None, 3]
    whole = explain_batch(resnet18, x, "layer3", names, targets)
    for size in (1, 3):
        parts = explain_batch(resnet18, x, "layer3", names, targets, options={"batch_size": size})
        for ours, theirs in zip(parts, whole, strict=True):
            assert_same(ours, theirs)
    for i, result in enumerate(whole):
        assert_same(result, explain(resnet18, x[i : i + 1], "layer3", names, targets[i]))


def test_eigen_smooth_equals_per_image(resnet18, small):
    x = small[2:5]
    results = explain_batch(resnet18, x, "layer2", ["gradcam", "layercam"], [1, 2, None], eigen_smooth=True)
    for i, result in enumerate(results):
        assert_same(result, explain(resnet18, x[i : i + 1], "layer2", ["gradcam", "layercam"], [1, 2, None][i], eigen_smooth=True))  # fmt: skip


class Counted(nn.Module):
    """Identity whose backward calls are counted, per instance."""

    def __init__(self) -> None:
        super().__init__()
        self.backward_calls = [0]

    def forward(self, x):
        return _CountedFn.apply(x, self.backward_calls)


class _CountedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, calls):
        ctx.calls = calls
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.calls[0] += 1
        return grad, None


def test_one_forward_and_one_backward_per_batch():
    torch.manual_seed(4)
    before, after = Counted(), Counted()
    model = frozen(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), before, nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(), after, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
        )
    )  # fmt: skip
    x = torch.randn(6, 3, 10, 10)
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, inputs: forwards.append(inputs[0].shape[0]))
    try:
        cams = explain_batch(model, x, "4", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
        assert forwards == [6]  # one forward pass for the six images
        assert before.backward_calls == [0] and after.backward_calls == [1]  # one backward, to the layer
        forwards.clear()
        guided = explain_batch(model, x, "4", ["guided_backprop", "deconvnet", "guided_gradcam"], [0] * 6)
        assert forwards == [6]  # one pass from the input serves the capture and both rules
        assert before.backward_calls == [2]  # one rectified backward per rule, for the batch
        assert after.backward_calls == [4]  # and the CAM's backward to the layer, under the plain rule
        forwards.clear()
        explain_batch(model, x, "4", ["gradcam"], options={"batch_size": 4})
        assert forwards == [4, 2]
    finally:
        handle.remove()
    for i in range(6):
        assert_same(cams[i], explain(model, x[i : i + 1], "4", list(cams[i].maps)))
        assert_same(guided[i], explain(model, x[i : i + 1], "4", list(guided[i].maps), 0))


def test_a_method_registered_later_works_on_batches_unchanged(resnet18, small):
    """A new method that reads the shared passes and runs a pass of its own needs no batch code."""

    class GradientTimesInput(Method):
        name = "test_gradient_x_input"
        kind = "cam"

        def compute(self, evidence, layer):
            extra = evidence.memo("test:own-pass", lambda: evidence.model(evidence.x.flip(-1)).detach())
            weighted = evidence.gradients(layer) * evidence.activations(layer)
            raw, shown = cam_from_sum(weighted.sum(1) * extra.softmax(1).amax(), evidence.input_size)
            return raw, shown

    register(GradientTimesInput)
    try:
        x = small[1:4]
        results = explain_batch(resnet18, x, "layer3", ["test_gradient_x_input", "gradcam"], [5, None, 9])
        for i, result in enumerate(results):
            single = explain(
                resnet18, x[i : i + 1], "layer3", ["test_gradient_x_input", "gradcam"], [5, None, 9][i]
            )
            assert_same(result, single)
            assert result.maps["test_gradient_x_input"].amax() > 0
    finally:
        del METHODS["test_gradient_x_input"]


def test_a_target_out_of_range_names_its_image(resnet18, images):
    x = images[:4]
    with pytest.raises(TargetError, match=r"Image 2: class 1000 is out of range.*1000 classes"):
        explain_batch(resnet18, x, "layer4", ["gradcam"], [None, 3, 1000, None])
    # Checked for every image after the first batch's forward pass, before any other work.
    with pytest.raises(TargetError, match=r"Image 3: class -1"):
        explain_batch(resnet18, x, "layer4", ["gradcam"], [None, 3, 4, -1], options={"batch_size": 2})


def test_bad_arguments_are_refused(resnet18, images):
    x = images[:2]
    with pytest.raises(ExplainerInputError, match="3 targets for 2 images"):
        explain_batch(resnet18, x, "layer4", ["gradcam"], [1, 2, 3])
    with pytest.raises(ExplainerInputError, match="batch_size"):
        explain_batch(resnet18, x, "layer4", ["gradcam"], options={"batch_size": 0})
    with pytest.raises(ExplainerInputError, match="shape"):
        explain_batch(resnet18, x[0], "layer4", ["gradcam"])
    with pytest.raises(MethodError):
        explain_batch(resnet18, x, "layer4", ["gradcamm"])
    with pytest.raises(MethodError, match="counterfactual"):
        explain_batch(resnet18, x, "layer4", ["scorecam"], counterfactual=True)
    assert explain_batch(resnet18, x[:0], "layer4", ["gradcam"]) == []


def test_no_hook_is_left_after_errors(images):
    torch.manual_seed(5)
    model = frozen(torchvision.models.resnet18(weights=None))
    state, weights = module_state(model), {k: v.clone() for k, v in model.state_dict().items()}
    x = images[:3]
    with pytest.raises(LayerError, match="layer4"):  # a layer that does not exist
        explain_batch(model, x, "layer5", ["gradcam"])
    assert_untouched(model, state, weights)
    with pytest.raises(LayerError):  # not a feature map: raised inside a hook, mid forward
        explain_batch(model, x, "fc", ["gradcam", "guided_backprop"])
    assert_untouched(model, state, weights)

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = frozen(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), Boom()))
    state = module_state(broken)
    with pytest.raises(RuntimeError, match="boom"):  # raised inside the forward, after the capture
        explain_batch(broken, x, "1", ["gradcam", "guided_backprop"])
    assert module_state(broken) == state


def test_concurrent_batches_match_sequential_ones(resnet18, small):
    model = resnet18
    jobs = [(slice(0, 3), [None, 281, None]), (slice(3, 6), None), (slice(5, 8), [1, None, 2])]
    names = ["gradcam", "gradcam++", "guided_backprop"]
    expected = [explain_batch(model, small[s], "layer3", names, t) for s, t in jobs]
    results: dict[int, list[list]] = {}
    errors = []

    def worker(index: int) -> None:
        try:
            s, t = jobs[index]
            results.setdefault(index, []).append(explain_batch(model, small[s], "layer3", names, t))
        except Exception as error:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i % len(jobs),)) for i in range(2 * len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in range(len(jobs)):
        assert len(results[index]) == 2
        for run in results[index]:
            for ours, theirs in zip(run, expected[index], strict=True):
                assert_same(ours, theirs)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


# ----------------------------------------------------------------------------- batched scores
def assert_same_scores(batched: dict, single: dict) -> None:
    """One image's `faithfulness_batch` scores against its own `faithfulness` call."""
    assert list(batched) == list(single)
    for name, theirs in single.items():
        ours = batched[name]
        assert ours.note == theirs.note, name
        assert abs(ours.original - theirs.original) <= TOLERANCE
        if theirs.note is not None:  # left out: NaN scores and no curves, in both
            assert math.isnan(ours.drop) and ours.curves is None
            continue
        assert abs(ours.masked - theirs.masked) <= TOLERANCE
        assert abs(ours.drop - theirs.drop) <= 100 * TOLERANCE / max(theirs.original, 1e-3)  # a percentage
        assert ours.increase == theirs.increase or abs(ours.masked - ours.original) <= TOLERANCE
        if theirs.curves is None:
            assert ours.curves is None
            continue
        torch.testing.assert_close(ours.curves["fractions"], theirs.curves["fractions"], rtol=0, atol=0)
        for key in ("deletion", "insertion"):
            assert (ours.curves[key] - theirs.curves[key]).abs().max() <= TOLERANCE, (name, key)
        assert abs(ours.deletion_auc - theirs.deletion_auc) <= TOLERANCE
        assert abs(ours.insertion_auc - theirs.insertion_auc) <= TOLERANCE


def test_faithfulness_batch_equals_per_image_faithfulness(lite0, images):
    """N images x M maps in shared batches: every score equals the image's own `faithfulness`."""
    x = images[[0, 3, 6]]
    explanations = explain_batch(lite0.model, x, "final", ["gradcam", "gradcam++"])
    maps = [dict(e.maps) for e in explanations]
    for image_maps in maps:  # a guided (H, W, 3) map is left out, with its note
        image_maps["guided_backprop"] = torch.randn(224, 224, 3, generator=torch.Generator().manual_seed(2))
    maps[1]["blank"] = torch.zeros(224, 224)  # and so is a blank one
    targets = [e.target for e in explanations]
    seen = []
    # 7 images per pass: batches mix the images of different inputs.
    scores = faithfulness_batch(
        lite0.model, x, maps, targets, steps=4, batch_size=7, progress=lambda *a: seen.append(a)
    )
    assert len(scores) == 3
    for i in range(3):
        single = faithfulness(lite0.model, x[i : i + 1], maps[i], targets[i], steps=4)
        assert_same_scores(scores[i], single)
        assert scores[i]["gradcam"].curves is not None and "scattered" in scores[i]["guided_backprop"].note
    # x, 2 masked, blurred, 2 x 2 x 3 inner steps per image, and the shared all-baseline image once
    total = 3 * (1 + 2 + 1 + 2 * 2 * 3) + 1
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(b - a <= 7 for (a, _), (b, _) in zip(seen, seen[1:]))


def test_faithfulness_batch_shares_batches_and_the_baseline(gap_linear):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 16, 16, generator=generator)
    maps = [{f"m{k}": torch.rand(16, 16, generator=generator) for k in range(2)} for _ in range(5)]
    targets = [0, 1, 2, 1, 0]
    calls = []
    handle = gap_linear.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        scores = faithfulness_batch(gap_linear, x, maps, targets, steps=6, blur=1.0, batch_size=16)
    finally:
        handle.remove()
    per_image = 3 + 2 + 2 * 2 * 5  # x, baseline, blurred, 2 masked, inner steps
    assert sum(calls) == 5 * (per_image - 1) + 1  # the all-baseline image is scored once for all five
    assert calls[:-1] == [16] * (len(calls) - 1)  # full batches across images
    for i in range(5):
        assert_same_scores(
            scores[i], faithfulness(gap_linear, x[i : i + 1], maps[i], targets[i], steps=6, blur=1.0)
        )
    assert not scores[0]["m0"].curves["deletion"].is_inference()  # plain tensors, free to modify
    for size in (1, 5, 200):  # any batch size: the same scores
        again = faithfulness_batch(gap_linear, x, maps, targets, steps=6, blur=1.0, batch_size=size)
        for ours, theirs in zip(again, scores, strict=True):
            assert_same_scores(ours, theirs)
    only_drop = faithfulness_batch(gap_linear, x, maps, targets, steps=0)
    for i in range(5):
        assert_same_scores(only_drop[i], faithfulness(gap_linear, x[i : i + 1], maps[i], targets[i], steps=0))
        assert only_drop[i]["m0"].curves is None


def test_faithfulness_batch_times_batch_sizes_on_a_cpu_and_keeps_the_fastest(gap_linear):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 16, 16, generator=generator)
    maps = [{f"m{k}": torch.rand(16, 16, generator=generator) for k in range(2)} for _ in range(6)]
    targets = [0, 1, 2, 0, 1, 2]
    calls = []
    handle = gap_linear.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        scores = faithfulness_batch(gap_linear, x, maps, targets, steps=12, blur=1.0)
    finally:
        handle.remove()
    trials = [*CPU_SCORE_BATCH_SIZES] * 2
    assert calls[: len(trials)] == trials  # each candidate twice, on the real work
    chosen = calls[len(trials) : -1]
    assert chosen and len(set(chosen)) == 1 and chosen[0] in CPU_SCORE_BATCH_SIZES
    assert sum(calls) == 6 * (3 + 2 + 2 * 2 * 11 - 1) + 1
    for i in range(6):
        assert_same_scores(
            scores[i], faithfulness(gap_linear, x[i : i + 1], maps[i], targets[i], steps=12, blur=1.0)
        )


def test_faithfulness_batch_checks_its_arguments_and_can_be_stopped(gap_linear):
    x = torch.randn(2, 3, 8, 8)
    maps = [{"m": torch.rand(8, 8)}, {"m": torch.rand(8, 8)}]
    with pytest.raises(ExplainerInputError, match="2 images"):
        faithfulness_batch(gap_linear, x, maps[:1], [0, 1])
    with pytest.raises(ExplainerInputError, match="differ in size"):
        faithfulness_batch(gap_linear, x, [maps[0], {"m": torch.rand(4, 4)}], [0, 1])
    with pytest.raises(ExplainerInputError, match="batch_size"):
        faithfulness_batch(gap_linear, x, maps, [0, 1], batch_size=0)
    with pytest.raises(Cancelled):
        faithfulness_batch(
            gap_linear, x, maps, [0, 1], steps=4, batch_size=3, progress=lambda done, total: done < 3
        )
    assert faithfulness_batch(gap_linear, x[:0], [], []) == []


def test_faithfulness_batch_with_workers_scores_the_same_in_parallel_passes(lite0, images):
    """Two workers: passes run side by side on one Torch thread each, the sizes on trial are the
    parallel ones, every score equals the one-pass-at-a-time result, and Torch's threads are back."""
    x = images[[0, 3, 6, 1]]
    explanations = explain_batch(lite0.model, x, "final", ["gradcam", "gradcam++"])
    maps = [dict(e.maps) for e in explanations]
    targets = [e.target for e in explanations]
    threads_before = torch.get_num_threads()
    calls, threads_seen = [], set()

    def note(module, inputs, output):
        calls.append(inputs[0].shape[0])
        threads_seen.add((threading.current_thread().name.startswith("score"), torch.get_num_threads()))

    handle = lite0.model.register_forward_hook(note)
    try:
        parallel = faithfulness_batch(lite0.model, x, maps, targets, steps=6, workers=2)
    finally:
        handle.remove()
    sequential = faithfulness_batch(lite0.model, x, maps, targets, steps=6, batch_size=5)
    for ours, theirs in zip(parallel, sequential, strict=True):
        assert_same_scores(ours, theirs)
    trials = [*CPU_PARALLEL_SCORE_BATCH_SIZES] * 2
    # Two at a time, so they may finish in either order: each size on trial ran at least twice.
    assert not collections.Counter(trials) - collections.Counter(calls)
    assert threads_seen == {(True, 1)}  # every pass on a pool thread, Torch on one thread
    assert torch.get_num_threads() == threads_before
    assert sum(calls) == 4 * (3 + 2 + 2 * 2 * 5 - 1) + 1


def test_faithfulness_batch_with_workers_stops_and_restores_the_threads(gap_linear):
    x = torch.randn(3, 3, 8, 8)
    maps = [{"m": torch.rand(8, 8)} for _ in range(3)]
    threads_before = torch.get_num_threads()
    with pytest.raises(Cancelled):
        faithfulness_batch(
            gap_linear, x, maps, [0, 1, 2], steps=4, workers=2, progress=lambda done, total: done < 4
        )
    assert torch.get_num_threads() == threads_before
    assert not [t for t in threading.enumerate() if t.name.startswith("score")]
    with pytest.raises(ExplainerInputError, match="workers"):
        faithfulness_batch(gap_linear, x, maps, [0, 1, 2], workers=0)
