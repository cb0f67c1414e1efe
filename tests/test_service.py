"""The app's service layer: explanations as plain numpy, rendering, files, figures, threads."""

from __future__ import annotations

import io
import math
import pickle
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from explainers import METHODS, ExplainerInputError, MethodError
from explainers.services.figures import heatmap_figure, predictions_figure
from explainers.services.service import (
    MAX_WORKING_SIDE,
    ExplanationResult,
    default_methods,
    device_name,
    inspect_values,
    method_options,
    predict,
    prepare_image,
    render_panel,
    run_explanation,
    to_npy,
    to_npz,
    to_png,
)

CAMS = ["gradcam", "gradcam++", "layercam"]


@pytest.fixture(scope="module")
def result(lite0, chelsea) -> ExplanationResult:
    return run_explanation(lite0, chelsea, lite0.default_layer, CAMS + ["cam"])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_result_is_plain_numpy_at_input_size(result, lite0):
    assert result.image.dtype == np.uint8 and result.image.shape == (*lite0.input_size, 3)
    assert set(result.maps) == {*CAMS, "cam"} == set(result.raw)  # CAM applies at the final map
    for name in CAMS:
        values = result.maps[name]
        assert isinstance(values, np.ndarray) and values.shape == lite0.input_size
        assert 0.0 <= values.min() and values.max() <= 1.0
    assert result.device == "CPU" and result.seconds > 0


def test_a_method_that_does_not_apply_is_reported_not_fatal(lite0, chelsea):
    # CAM needs GAP + one linear layer right after the layer; EfficientNet-Lite0's _bn1 is
    # followed by ReLU6 first, so CAM is refused while the gradient CAMs still come back.
    result = run_explanation(lite0, chelsea, "_bn1", CAMS + ["cam"])
    assert "cam" in result.errors and "Grad-CAM" in result.errors["cam"]
    assert set(result.maps) == set(CAMS)


def test_target_defaults_to_the_prediction_and_top5_is_sorted(result, lite0, chelsea):
    assert result.target == result.top[0].index
    assert result.target_label == lite0.labels[result.target]
    probabilities = [p.probability for p in result.top]
    assert len(result.top) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert predict(lite0, chelsea) == result.top
    assert result.caption("gradcam") == f"Grad-CAM · {result.target_label} · {probabilities[0]:.1%}"


def test_explicit_target_and_counterfactual(lite0, chelsea):
    other = run_explanation(lite0, chelsea, lite0.default_layer, ["gradcam"], target=1, counterfactual=True)
    assert other.target == 1 and other.target_label == lite0.labels[1]
    assert other.caption("gradcam").endswith("· counterfactual")


def test_bad_requests_raise_user_errors(lite0, chelsea):
    with pytest.raises(MethodError):
        run_explanation(lite0, chelsea, lite0.default_layer, [])
    with pytest.raises(MethodError):
        run_explanation(lite0, chelsea, lite0.default_layer, ["no-such-method"])
    with pytest.raises(ExplainerInputError):
        run_explanation(lite0, chelsea, lite0.default_layer, ["gradcam"], target=5000)


def test_result_survives_pickling(result):
    # st.cache_data pickles what it stores.
    copy = pickle.loads(pickle.dumps(result))
    assert copy.caption("gradcam") == result.caption("gradcam")
    np.testing.assert_array_equal(copy.maps["gradcam"], result.maps["gradcam"])


def test_render_panel_blends_with_the_display_settings(result):
    plain = render_panel(result, "gradcam", "jet", 0.0)
    np.testing.assert_array_equal(plain, result.image)
    assert render_panel(result, "gradcam", "viridis", 1.0).shape == result.image.shape
    assert not np.array_equal(render_panel(result, "gradcam", "jet", 0.5), plain)


def test_guided_maps_render_as_pictures():
    gradient = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
    fake = ExplanationResult("m", "l", 0, "c", 0.5, False, np.zeros((8, 8, 3), np.uint8), [], {}, {})
    guided = [name for name in METHODS if METHODS[name].kind == "guided"]
    for name in guided:
        fake.maps[name] = gradient
        picture = render_panel(fake, name)
        assert picture.dtype == np.uint8 and picture.shape == (8, 8, 3)
        values = inspect_values(fake, name)
        assert values.shape == (8, 8) and values.max() == pytest.approx(1.0)


def test_default_methods_give_cams_and_guided_maps(lite0, chelsea):
    both = run_explanation(lite0, chelsea, lite0.default_layer, default_methods())
    assert both.methods("cam") and both.methods("guided") and not both.errors
    for name in both.methods("guided"):
        assert both.maps[name].shape == (*lite0.input_size, 3)
        assert render_panel(both, name).shape == (*lite0.input_size, 3)


def test_files_round_trip(result):
    picture = render_panel(result, "gradcam")
    decoded = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(to_png(picture), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    np.testing.assert_array_equal(decoded, picture)
    np.testing.assert_array_equal(np.load(io.BytesIO(to_npy(result.maps["gradcam"]))), result.maps["gradcam"])
    archive = np.load(io.BytesIO(to_npz(result)))
    assert {"image", "gradcam", "gradcam_raw", "gradcam++"} <= set(archive.files)


def test_prepare_image_bounds_the_working_size():
    big = Image.new("RGB", (3000, 1500), (10, 200, 30))
    image = prepare_image(png_bytes(big))
    assert image.mode == "RGB" and max(image.size) == MAX_WORKING_SIDE and image.size[0] == 2 * image.size[1]


def test_method_options_put_cams_first():
    options = method_options()
    assert set(options) == set(METHODS)
    kinds = [METHODS[name].kind for name in options]
    assert kinds == sorted(kinds, key=lambda kind: kind != "cam")
    assert set(default_methods()) <= set(METHODS) and "gradcam" in default_methods()


def test_device_name():
    assert device_name("cpu") == "CPU"


def test_concurrent_explanations_match_sequential_ones(lite0, chelsea):
    # Sessions share one model; their passes must not see each other's hooks or captures.
    jobs = [(lite0.default_layer, None), (lite0.default_layer, 285), ("_blocks.10", 281)]

    def run(job: tuple[str, int | None]) -> ExplanationResult:
        return run_explanation(lite0, chelsea, job[0], ["gradcam"], job[1])

    expected = {job: run(job) for job in jobs}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, jobs * 2))
    for job, got in zip(jobs * 2, results, strict=True):
        np.testing.assert_allclose(got.maps["gradcam"], expected[job].maps["gradcam"], atol=1e-5)


def test_figures(result):
    chart = predictions_figure(result.top, highlight=result.top[1].index)
    bar = chart.data[0]
    assert list(bar.y)[-1].strip() == result.top[0].label  # most probable drawn on top
    assert len(set(bar.marker.color)) == 2
    heat = heatmap_figure(result.maps["gradcam"], "viridis", "title")
    assert heat.data[0].z.shape == result.maps["gradcam"].shape
    assert "%{z" in heat.data[0].hovertemplate


def test_scorecam_tells_its_cost_reports_progress_and_can_be_cancelled(lite0, chelsea):
    from explainers.errors import Cancelled
    from explainers.services.service import run_scorecam, scorecam_plan

    plan = scorecam_plan(lite0, chelsea, lite0.default_layer, 281, max_channels=8)
    assert 1 <= plan.passes <= 8 and plan.batch_size >= 1  # blank channels need no pass
    reports = []
    result = run_scorecam(lite0, chelsea, lite0.default_layer, 281, 8, lambda d, t: reports.append((d, t)))
    n = plan.passes
    assert reports[0] == (0, n) and reports[-1] == (n, n)
    assert result.caption("scorecam").endswith("approximation (8 of 1280 channels)")
    assert result.maps["scorecam"].shape == lite0.input_size
    with pytest.raises(Cancelled, match=f"stopped after 0 of {n}"):
        run_scorecam(lite0, chelsea, lite0.default_layer, 281, 8, lambda d, t: False)


def test_top_classes_sweep_and_faithfulness(lite0, chelsea, result):
    from explainers.services.service import layer_sweep, score_faithfulness, top_classes

    classes = top_classes(lite0, chelsea, lite0.default_layer, "gradcam")
    assert [c.index for c in classes.classes] == [p.index for p in result.top]
    assert len(classes.maps) == 5 and all(m.shape == lite0.input_size for m in classes.maps)
    sweep = layer_sweep(lite0, chelsea, "layercam", fuse=True)
    assert len(sweep.layers) >= 3 and sweep.layers[-1] == "final"
    assert sweep.titles[0] == "stage 1" and sweep.titles[-1] == "final feature map"
    assert [h for h, _ in sweep.sizes] == sorted((h for h, _ in sweep.sizes), reverse=True)
    assert sweep.fused is not None and sweep.fused.shape == lite0.input_size
    scores = score_faithfulness(lite0, chelsea, result, ["gradcam"], steps=2)
    assert set(scores) == {"gradcam"} and 0 <= scores["gradcam"].drop <= 100
    assert "deletion AUC" in scores["gradcam"].summary() and len(scores["gradcam"].curves["deletion"]) == 3


class LeftHalfMean(torch.nn.Module):
    """Two classes; p(class 0) is the mean of channel 0 over the left half, clamped to (0, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0, :, : x.shape[-1] // 2].mean((1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([m.log(), (1 - m).log()], 1)


def test_counterfactual_scores_read_the_other_way():
    """Left half: bright top rows raise class 0, dark (negative) bottom rows lower it. The plain map
    marks the top-left quadrant, a counterfactual map that works the bottom-left one. Each scores as
    its `expected` directions say, so the caption's direction is the one a working map shows."""
    from explainers.methods.metrics import faithfulness
    from explainers.services.service import FaithfulnessScore

    x = torch.zeros(1, 3, 8, 8)
    x[:, 0, :4, :4], x[:, 0, 4:, :4] = 0.9, -0.5  # p(class 0) = mean = 0.2
    plain_map, counter_map = torch.zeros(8, 8), torch.zeros(8, 8)
    plain_map[:4, :4], counter_map[4:, :4] = 1.0, 1.0
    raw = faithfulness(LeftHalfMean(), x, {"plain": plain_map, "counter": counter_map}, 0, steps=8, blur=2.0)

    def score(name: str, counterfactual: bool) -> FaithfulnessScore:
        f = raw[name]
        return FaithfulnessScore(f.drop, f.increase, f.deletion_auc, f.insertion_auc, {}, counterfactual)

    plain, counter = score("plain", False), score("counter", True)
    assert counter.drop > 99 and plain.drop == 0  # image ⊙ map: the counterfactual keeps what lowers
    assert counter.deletion_auc > plain.deletion_auc and counter.insertion_auc < plain.insertion_auc
    assert plain.increase and not counter.increase
    assert counter.expected == {
        "drop": "higher",
        "increase": "no",
        "deletion_auc": "higher",
        "insertion_auc": "lower",
    }
    assert plain.expected == {
        "drop": "lower",
        "increase": "yes",
        "deletion_auc": "lower",
        "insertion_auc": "higher",
    }
    # The same numbers read the usual way would call the working counterfactual map the worst one.
    assert score("counter", False).summary().startswith("Avg drop 100.0% (lower is better)")


def test_counterfactual_captions_say_so(lite0, chelsea):
    from explainers.services.service import run_explanation, score_faithfulness

    # Coffee mug: at the final feature map the cat classes have no counterfactual region on
    # Chelsea (every position's evidence for them is positive), the mug has.
    plain = run_explanation(lite0, chelsea, lite0.default_layer, ["gradcam"], target=504)
    counter = run_explanation(
        lite0, chelsea, lite0.default_layer, ["gradcam"], target=504, counterfactual=True
    )
    p = score_faithfulness(lite0, chelsea, plain, steps=4)["gradcam"]
    c = score_faithfulness(lite0, chelsea, counter, steps=4)["gradcam"]
    assert c.counterfactual and not p.counterfactual
    assert c.summary().startswith("Counterfactual map, so the scores read the other way")
    assert f"Avg drop {c.drop:.1f}% (higher is better)" in c.summary()
    assert f"insertion AUC {c.insertion_auc:.3f} (lower is better)" in c.summary()
    assert f"Avg drop {p.drop:.1f}% (lower is better)" in p.summary() and "Counterfactual" not in p.summary()


def test_scores_that_cannot_be_measured_say_why():
    from explainers.services.service import FaithfulnessScore

    zero = FaithfulnessScore(math.nan, False, 0.1, 0.2, {})
    assert zero.summary().startswith("Avg drop not measurable (the class has probability 0)")
    guided = FaithfulnessScore(math.nan, False, math.nan, math.nan, {}, note="scattered pixels")
    assert guided.summary() == "Not scored: scattered pixels"


def test_guided_maps_in_the_service_are_not_scored(lite0, chelsea):
    from explainers.services.service import run_explanation, score_faithfulness

    result = run_explanation(lite0, chelsea, lite0.default_layer, ["gradcam", "guided_backprop"])
    calls = []
    scores = score_faithfulness(
        lite0, chelsea, result, ["gradcam", "guided_backprop"], steps=3, progress=lambda *a: calls.append(a)
    )
    assert scores["guided_backprop"].summary().startswith("Not scored: a guided map marks single scattered")
    assert "deletion AUC" in scores["gradcam"].summary()
    assert calls[-1] == (3 + 1 + 2 * 2, 3 + 1 + 2 * 2)  # shared ends, one masked image, inner steps
