"""What the app calls: read an image, predict, explain, and turn results into pictures and files.

Computing (a forward and backward pass, seconds on a CPU) and rendering (blending a map over
the image, milliseconds) are separate calls: `run_explanation` returns plain numpy arrays that
can be cached and pickled, and `render_panel` draws them with any colormap and opacity, so a
display change never recomputes. Nothing here imports Streamlit.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image

from explainers.errors import ExplainerInputError, MethodError, TargetError
from explainers.methods.batch import BatchEvidence
from explainers.methods.core import METHODS, Evidence, check_methods, get_method, method_title
from explainers.methods.metrics import faithfulness, spearman
from explainers.methods.multi import explain_classes, fuse_layers, sweep
from explainers.methods.occlusion import OcclusionRun, occlusion_passes
from explainers.methods.score import Progress, default_batch_size, scorecam_passes
from explainers.methods.steps import MapSteps, map_steps
from explainers.services.edits import ImageEdit, apply_edit
from explainers.services.images import content_hash, load_image
from explainers.services.render import picture, to_numpy
from models_zoo import ZooModel

# Models see crops of a few hundred pixels; a larger working copy only costs memory and time.
MAX_WORKING_SIDE = 1024

# What a first-time visitor sees: the classic trio of CAMs and the two best-known guided maps.
DEFAULT_METHODS = ("gradcam", "gradcam++", "layercam", "guided_backprop", "guided_gradcam")

__all__ = [
    "DEFAULT_METHODS",
    "ClassMaps",
    "ExplanationResult",
    "FaithfulnessScore",
    "ImageRequest",
    "LayerMaps",
    "OcclusionGrid",
    "OcclusionSettings",
    "Prediction",
    "ScorePlan",
    "content_hash",
    "default_methods",
    "device_name",
    "inspect_values",
    "method_options",
    "method_title",
    "occlusion_cost",
    "predict",
    "prepare_image",
    "render_panel",
    "run_explanation",
    "run_explanations",
    "run_occlusion",
    "run_scorecam",
    "scorecam_plan",
    "score_faithfulness",
    "spearman_with",
    "top_classes",
    "top_predictions",
    "layer_sweep",
    "to_npy",
    "to_npz",
    "to_jpeg",
    "to_png",
]


class Prediction(NamedTuple):
    """One class the model predicts, with its softmax probability."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class ExplanationResult:
    """One explanation, CPU numpy only (picklable, cacheable).

    Attributes:
        model: the model's registry name.
        layer: the target layer.
        target: the explained class index.
        target_label: its class name.
        target_probability: its softmax probability on the image.
        counterfactual: whether the gradients were negated.
        image: the crop the model saw, (H, W, 3) uint8.
        top: the five most probable classes, most probable first.
        maps: method -> shown map at the input's resolution: (H, W) in [0, 1] for kind "cam",
            the raw input gradient (H, W, 3) for kind "guided".
        raw: method -> the map at the layer's resolution before normalisation.
        errors: method -> why it does not apply here (e.g. CAM at a layer not followed by GAP).
        seconds: wall time of the computation.
        device: where it ran, "CPU" or the GPU's name.
        notes: method -> a remark shown in its caption, e.g. that Score-CAM's map is an approximation.
        steps: CAM method -> how its map was made (`explainers.methods.steps.MapSteps`), read from the
            same passes; the methods share one bounded record of the layer's activations and
            gradients.
        occlusion: the window positions and score drops behind an occlusion map, or None.
        edit: the edit applied to the image before the model saw it, or None.
    """

    model: str
    layer: str
    target: int
    target_label: str
    target_probability: float
    counterfactual: bool
    image: np.ndarray
    top: list[Prediction]
    maps: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "CPU"
    notes: dict[str, str] = field(default_factory=dict)
    steps: dict[str, MapSteps] = field(default_factory=dict)
    occlusion: OcclusionGrid | None = None
    edit: ImageEdit | None = None

    def kind(self, method: str) -> str:
        """How a method's map is shown: "cam" (a heat map) or "guided" (an RGB gradient)."""
        return METHODS[method].kind

    def methods(self, kind: str) -> list[str]:
        """The computed methods of one kind ("cam" or "guided"), in the order asked."""
        return [name for name in self.maps if self.kind(name) == kind]

    def caption(self, method: str) -> str:
        """Names the method, class and probability, e.g. "Grad-CAM · tabby · 45.2%"."""
        text = f"{method_title(method)} · {self.target_label} · {self.target_probability:.1%}"
        if method in self.notes:
            text = f"{text} · {self.notes[method]}"
        return f"{text} · counterfactual" if self.counterfactual else text


# No lock around the shared model: every session may run on it at once. The capture hooks act
# only on the thread that registered them, guided backprop's rectifying mode is thread-local, and
# Score-CAM's masked passes use no hooks at all (tests/test_core.py, test_guided.py and
# test_service.py check that concurrent calls give the sequential results). So a long Score-CAM
# run in one session never makes another session wait.


def prepare_image(source: bytes) -> Image.Image:
    """Decode an uploaded or bundled image to RGB, at most `MAX_WORKING_SIDE` on its long side.

    Raises:
        ImageError: corrupt, not an image, too many pixels (checked before decoding), too small.
    """
    image = load_image(source)
    image.thumbnail((MAX_WORKING_SIDE, MAX_WORKING_SIDE), Image.Resampling.LANCZOS)
    return image


def device_name(device: torch.device | str) -> str:
    """The device's display name: "CPU", or the GPU's name for a CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type.upper()


def method_options() -> list[str]:
    """Every registered method, the CAM family first, then the guided maps."""
    order = {"cam": 0, "guided": 1}
    return sorted(METHODS, key=lambda name: order.get(METHODS[name].kind, 2))


def default_methods() -> list[str]:
    """The methods a first-time visitor sees, those of `DEFAULT_METHODS` that are registered."""
    return [name for name in DEFAULT_METHODS if name in METHODS]


def top_predictions(probabilities: torch.Tensor, labels: Sequence[str], k: int = 5) -> list[Prediction]:
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [Prediction(int(i), labels[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]


def _inputs(
    zoo_model: ZooModel, image: Image.Image, edit: ImageEdit | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """The crop the model sees, (H, W, 3) uint8, and the model's input, from one resize; with an
    edit, both edited (the box is in the crop's pixels).

    Raises:
        EditError: the edit does not fit the crop.
    """
    crop, x = zoo_model.preprocess.crop_and_tensor(image)
    crop = np.asarray(crop, dtype=np.uint8)
    if edit is not None:
        crop = apply_edit(crop, edit)
        x = zoo_model.preprocess.normalise(Image.fromarray(crop))
    return crop, x


def predict(
    zoo_model: ZooModel, image: Image.Image, k: int = 5, edit: ImageEdit | None = None
) -> list[Prediction]:
    """The k most probable classes for an image (edited first, if asked): one forward pass, no
    gradients."""
    x = (_inputs(zoo_model, image, edit)[1] if edit else zoo_model.preprocess(image)).to(zoo_model.device)
    with torch.no_grad():
        logits = zoo_model.model(x)[0].float().cpu()
    return top_predictions(logits.softmax(0), zoo_model.labels, k)


def run_explanation(
    zoo_model: ZooModel,
    image: Image.Image,
    layer: str,
    methods: Sequence[str],
    target: int | None = None,
    counterfactual: bool = False,
    options: dict[str, object] | None = None,
    edit: ImageEdit | None = None,
) -> ExplanationResult:
    """Explain one class of one image with several methods, sharing their passes.

    A method that does not apply (CAM away from a GAP + linear head) is reported in
    `errors` instead of failing the others.

    Args:
        zoo_model: a loaded model from `models_zoo.load_model`.
        image: any RGB PIL image; it is resized and cropped as the model expects.
        layer: a layer name from `zoo_model.layers()`.
        methods: names from `METHODS`.
        target: the class to explain; None explains the predicted class.
        counterfactual: explain what lowers the class score.
        options: method options, e.g. Score-CAM's ``max_channels`` and ``progress``.
        edit: fill a box of the crop before the model sees it (`explainers.services.edits`).

    The result also says how each CAM was made (``steps``), from the same passes.

    Raises:
        ExplainerInputError: no method chosen, an unknown method or layer, a class out of range,
            an edit that does not fit the crop.
        Cancelled: Score-CAM's or occlusion's progress callback returned False.
    """
    names = check_methods(methods)
    start = time.perf_counter()
    crop, x = _inputs(zoo_model, image, edit)
    targets = None if target is None else [target]
    evidence = Evidence(zoo_model.model, x, [layer], targets, counterfactual, options=options)
    evidence.prepare(names, layer)
    errors = {name: str(error) for name, error in _refused(names, lambda name: evidence.result(name, layer))}
    return _result(zoo_model, evidence, crop, layer, names, errors, edit, time.perf_counter() - start)


class ImageRequest(NamedTuple):
    """One image of a batched request: the image, its class (None: its top-1), its edit."""

    image: Image.Image
    target: int | None = None
    edit: ImageEdit | None = None


def run_explanations(
    zoo_model: ZooModel,
    requests: Sequence[ImageRequest],
    layer: str,
    methods: Sequence[str],
    counterfactual: bool = False,
) -> list[ExplanationResult | ExplainerInputError]:
    """`run_explanation` for several images at once, from one batched forward and backward pass
    (`explainers.methods.batch`): how the app serves sessions that ask at the same moment.

    Each image's result equals what `run_explanation` gives it alone (1e-5). An image whose
    request cannot be met (its class out of range, an edit that does not fit) gets its error in
    its place, and the others their results.
    """
    names = check_methods(methods)
    start = time.perf_counter()
    results: list[ExplanationResult | ExplainerInputError | None] = [None] * len(requests)
    prepared: list[tuple[int, np.ndarray, torch.Tensor]] = []  # (request index, crop, input)
    for index, request in enumerate(requests):
        try:
            check_target(request.target, len(zoo_model.labels))
            prepared.append((index, *_inputs(zoo_model, request.image, request.edit)))
        except ExplainerInputError as error:
            results[index] = error
    if not prepared:
        return results
    targets = [requests[index].target for index, _, _ in prepared]
    x = torch.cat([x for _, _, x in prepared])
    batch = BatchEvidence(zoo_model.model, x, layer, targets, counterfactual)
    try:
        batch_refused = dict(_refused(names, lambda name: get_method(name).prepare_batch(batch, layer)))
        errors = []
        for view in batch.views:
            rest = [name for name in names if name not in batch_refused]
            refused = batch_refused | dict(_refused(rest, lambda name, view=view: view.result(name, layer)))
            errors.append({name: str(error) for name, error in refused.items()})
        seconds = (time.perf_counter() - start) / len(prepared)  # each image's share of the batch
        for (index, crop, _), view, refused in zip(prepared, batch.views, errors):
            results[index] = _result(
                zoo_model, view, crop, layer, names, refused, requests[index].edit, seconds
            )
    finally:
        batch.release()  # a cycle holding the batch's autograd graph (see `BatchEvidence.release`)
    return results


def check_target(target: int | None, num_classes: int) -> None:
    """Raise `TargetError` for a class index outside the model's classes."""
    if target is not None and not 0 <= target < num_classes:
        raise TargetError(
            f"Class {target} is out of range: the model has {num_classes} classes (0 to {num_classes - 1})."
        )


def _refused(names: Sequence[str], run: Callable[[str], object]) -> list[tuple[str, MethodError]]:
    """Run each method; the ones that do not apply here, with why (the others go on)."""
    refused = []
    for name in names:
        try:
            run(name)
        except MethodError as error:
            refused.append((name, error))
    return refused


def _result(
    zoo_model: ZooModel,
    evidence: Evidence,
    crop: np.ndarray,
    layer: str,
    names: Sequence[str],
    errors: dict[str, str],
    edit: ImageEdit | None,
    seconds: float,
) -> ExplanationResult:
    """The `ExplanationResult` of an image's evidence, whose methods have run (except ``errors``)."""
    maps: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}
    for name in names:
        if name not in errors:
            raw_k, map_k = evidence.result(name, layer)
            raw[name], maps[name] = to_numpy(raw_k[0]), to_numpy(map_k[0])
    probabilities = evidence.logits.detach().float().cpu().softmax(0)
    chosen = int(evidence.targets[0])
    steps = map_steps(evidence, list(maps), layer)  # arithmetic on the passes above, none of its own
    run = evidence.extras.get("occlusion")
    return ExplanationResult(
        model=zoo_model.name,
        layer=layer,
        target=chosen,
        target_label=zoo_model.labels[chosen],
        target_probability=float(probabilities[chosen]),
        counterfactual=evidence.counterfactual,
        image=crop,
        top=top_predictions(probabilities, zoo_model.labels),
        maps=maps,
        raw=raw,
        errors=errors,
        seconds=seconds,
        device=device_name(evidence.device),
        notes=_notes(evidence, layer, list(maps)),
        steps=steps,
        occlusion=OcclusionGrid.from_run(run)
        if isinstance(run, OcclusionRun) and "occlusion" in maps
        else None,
        edit=edit,
    )


@dataclass(frozen=True)
class OcclusionGrid:
    """The window positions and score drops behind an occlusion map (CPU numpy, cacheable).

    Attributes:
        window, stride: in pixels of the crop.
        rows, cols: the windows' top and left edges; window (r, c) covers
            [rows[r], rows[r] + window) × [cols[c], cols[c] + window), cut at the border.
        drops: (len(rows), len(cols)) the class score on the image minus with the window covered
            (the other way round for a counterfactual).
        base: the class score on the image.
        baseline: what filled the window, in words.
        baseline_kind: "zero" (the model input's zero), "blur", "value" or "tensor".
        score: "probability" or "logit".
        passes: occluded images scored.
    """

    window: int
    stride: int
    rows: list[int]
    cols: list[int]
    drops: np.ndarray
    base: float
    baseline: str
    baseline_kind: str
    score: str
    passes: int

    @classmethod
    def from_run(cls, run: OcclusionRun) -> OcclusionGrid:
        return cls(
            run.window,
            run.stride,
            list(run.rows),
            list(run.cols),
            to_numpy(run.drops[0]),
            float(run.base[0]),
            run.baseline,
            run.baseline_kind,
            run.score,
            run.passes,
        )

    def largest(self, k: int = 4) -> list[tuple[int, int, float]]:
        """The k windows whose cover lowers the score most: (left, top, drop), largest first."""
        order = np.argsort(-self.drops, axis=None, kind="stable")[:k]
        return [
            (self.cols[c], self.rows[r], float(self.drops[r, c]))
            for r, c in (np.unravel_index(i, self.drops.shape) for i in order)
        ]

    def covered(self, crop: np.ndarray, left: int, top: int, mean: Sequence[float]) -> np.ndarray:
        """The crop (H, W, 3) uint8 as the model saw it with the window at (left, top) covered:
        by the training mean colour ``mean`` (in [0, 1], the model input's zero) or the blurred
        crop (blurring commutes with the per-channel normalisation). Other baselines are drawn grey.
        """
        shown = np.array(crop, dtype=np.uint8, copy=True)
        box = (slice(top, top + self.window), slice(left, left + self.window))
        if self.baseline_kind == "zero":
            colour = np.asarray(mean, dtype=np.float64).reshape(-1)
            shown[box] = np.uint8(np.clip(np.resize(colour, 3) * 255, 0, 255).round())
        elif self.baseline_kind == "blur":
            kernel = 2 * max(1, self.window // 2) + 1
            shown[box] = cv2.GaussianBlur(crop, (kernel, kernel), self.window / 4)[box]
        else:
            shown[box] = 128
        return shown


# Why a gradient CAM is blank when the class score does not depend on the layer's positions.
NO_GRADIENT = (
    "blank: no gradient reaches this layer from the class score (e.g. after ViT's last attention "
    "only the class token feeds the head); choose an earlier layer"
)


def _notes(evidence: Evidence, layer: str, methods: list[str]) -> dict[str, str]:
    notes = {}
    if "_gradients" in vars(evidence) and not evidence.gradients(layer).any():
        notes = {name: NO_GRADIENT for name in methods if METHODS[name].reads_gradient}
    run = evidence.extras.get("scorecam", {}).get(layer)
    if run is not None and run.approximation is not None:
        notes["scorecam"] = f"approximation ({run.channels} of {run.layer_channels} channels)"
    occluded = evidence.extras.get("occlusion")
    if occluded is not None and "occlusion" in methods:
        notes["occlusion"] = f"window {occluded.window} px, stride {occluded.stride} px"
    return notes


def render_panel(
    result: ExplanationResult, method: str, colormap: str = "jet", opacity: float = 0.5
) -> np.ndarray:
    """The picture of one method's map: a heat-map overlay for a CAM, the guided map itself.

    Returns:
        (H, W, 3) uint8.
    """
    return picture(result.kind(method), result.maps[method], result.image, colormap, opacity)


def inspect_values(result: ExplanationResult, method: str) -> np.ndarray:
    """Per-pixel values to inspect, (H, W): the CAM itself, or a guided map's gradient size
    (the largest absolute value over the colour channels, scaled to [0, 1])."""
    values = result.maps[method]
    if values.ndim == 3:
        values = np.abs(values).max(axis=2)
        peak = values.max()
        values = values / peak if peak > 0 else values
    return values.astype(np.float32)


def to_png(image: np.ndarray) -> bytes:
    """An RGB uint8 image (H, W, 3) as PNG bytes."""
    return _encode(image, ".png", [])


def to_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """An RGB uint8 image (H, W, 3) as JPEG bytes: what the page shows (a fifth of the PNG's
    size, and the quality Streamlit itself would encode an array at)."""
    return _encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])


def _encode(image: np.ndarray, suffix: str, parameters: list[int]) -> bytes:
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), parameters)
    if not ok:
        raise ExplainerInputError(f"Could not encode the image as {suffix[1:].upper()}.")
    return encoded.tobytes()


def to_npy(array: np.ndarray) -> bytes:
    """An array in NumPy's .npy format, for `np.load`."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def to_npz(result: ExplanationResult) -> bytes:
    """Every map of a result in one .npz: `<method>` at input resolution, `<method>_raw` at the
    layer's resolution, and `image`, the crop the model saw."""
    arrays = {"image": result.image}
    for name in result.maps:
        arrays[name] = result.maps[name]
        arrays[f"{name}_raw"] = result.raw[name]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- Score-CAM, with progress


class ScorePlan(NamedTuple):
    """What a Score-CAM request will cost, told to the user before it starts."""

    passes: int  # masked images to score (forward passes of one image each)
    batch_size: int  # masked images per batched forward pass


def _score_options(max_channels: int | None, progress: Progress | None = None) -> dict[str, object]:
    return {"max_channels": max_channels, "progress": progress}


def scorecam_plan(
    zoo_model: ZooModel, image: Image.Image, layer: str, target: int, max_channels: int | None = None
) -> ScorePlan:
    """How many forward passes Score-CAM will take on this image, layer and class.

    Costs one forward pass (and a backward pass to the layer with ``max_channels``).
    """
    x = zoo_model.preprocess(image)
    passes = scorecam_passes(zoo_model.model, x, layer, target, options=_score_options(max_channels))
    batch = default_batch_size(x.to(zoo_model.device))
    return ScorePlan(passes, batch)


def run_scorecam(
    zoo_model: ZooModel,
    image: Image.Image,
    layer: str,
    target: int,
    max_channels: int | None = None,
    progress: Progress | None = None,
    edit: ImageEdit | None = None,
) -> ExplanationResult:
    """Score-CAM alone, reporting progress: its masked passes take seconds to minutes on a CPU.

    Args:
        zoo_model, image, layer, target: as for `run_explanation`.
        max_channels: score only this many channels (an approximation, said so in the caption).
        progress: called as progress(done, total) after each batch; returning False stops.

    Raises:
        Cancelled: ``progress`` returned False.
    """
    return run_explanation(
        zoo_model,
        image,
        layer,
        ["scorecam"],
        target,
        options=_score_options(max_channels, progress),
        edit=edit,
    )


# ----------------------------------------------------------------------------- occlusion, with progress


@dataclass(frozen=True)
class OcclusionSettings:
    """Occlusion's settings in the app: window and stride in crop pixels (None: the defaults,
    a seventh of the side and half of that), and the baseline (`explainers.methods.occlusion.BASELINES`)."""

    window: int | None = None
    stride: int | None = None
    baseline: str = "zero"

    def options(self, progress: Progress | None = None) -> dict[str, object]:
        return {
            "occlusion_window": self.window,
            "occlusion_stride": self.stride,
            "occlusion_baseline": self.baseline,
            "progress": progress,
        }


def occlusion_cost(zoo_model: ZooModel, settings: OcclusionSettings) -> int:
    """How many forward passes occlusion will take on this model's input (no pass needed to know)."""
    size = (zoo_model.preprocess.crop, zoo_model.preprocess.crop)
    return occlusion_passes(size, settings.window, settings.stride)


def run_occlusion(
    zoo_model: ZooModel,
    image: Image.Image,
    layer: str,
    target: int,
    counterfactual: bool = False,
    settings: OcclusionSettings | None = None,
    progress: Progress | None = None,
    edit: ImageEdit | None = None,
) -> ExplanationResult:
    """Occlusion sensitivity alone (Zeiler & Fergus 2014), reporting progress: one forward pass per
    window position, batched. ``layer`` is only captured on the way (occlusion reads no layer).

    Raises:
        Cancelled: ``progress`` returned False.
        ExplainerInputError: a window larger than the input, a stride larger than the window.
    """
    options = (settings or OcclusionSettings()).options(progress)
    return run_explanation(zoo_model, image, layer, ["occlusion"], target, counterfactual, options, edit)


def spearman_with(reference: np.ndarray, maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Spearman's rank correlation of a (H, W) map with each of several maps of the same size
    (`explainers.methods.metrics.spearman`; a constant map correlates 0)."""
    ours = torch.from_numpy(np.array(reference))  # a copy: cached results are read-only
    return {name: spearman(ours, torch.from_numpy(np.array(values))) for name, values in maps.items()}


# ----------------------------------------------------------------------------- many classes, many layers


@dataclass(frozen=True)
class ClassMaps:
    """One method's maps for several classes of one image (from one forward + one backward).

    Attributes:
        method: the method's name.
        image: the crop the model saw, (H, W, 3) uint8.
        classes: the explained classes, most probable first.
        maps: one (H, W) map in [0, 1] per class.
        seconds: wall time of the computation.
    """

    method: str
    image: np.ndarray
    classes: list[Prediction]
    maps: list[np.ndarray]
    seconds: float


def top_classes(
    zoo_model: ZooModel, image: Image.Image, layer: str, method: str, k: int = 5, counterfactual: bool = False
) -> ClassMaps:
    """A CAM for each of the k most probable classes, from one forward and one batched backward."""
    k = min(k, len(zoo_model.labels))
    crop, x = _inputs(zoo_model, image)
    explanations = explain_classes(zoo_model.model, x, layer, [method], k, counterfactual)
    probabilities = explanations[0].probabilities
    classes = [
        Prediction(e.target, zoo_model.labels[e.target], float(probabilities[e.target])) for e in explanations
    ]
    maps = [to_numpy(e.maps[method]) for e in explanations]
    return ClassMaps(method, crop, classes, maps, explanations[0].seconds)


@dataclass(frozen=True)
class LayerMaps:
    """One method's maps of one class at several layers, shallow to deep (one sweep).

    Attributes:
        method: the method's name.
        image: the crop the model saw, (H, W, 3) uint8.
        target: the explained class.
        layers: target names, shallow to deep.
        titles: what each is for people: "stage 1", ..., "final feature map".
        sizes: each layer's feature-map size (h, w).
        maps: one (H, W) map in [0, 1] per layer.
        fused: LayerCAM's fusion of all layers' raw maps (Jiang et al. 2021), or None.
        seconds: wall time of the computation.
    """

    method: str
    image: np.ndarray
    target: Prediction
    layers: list[str]
    titles: list[str]
    sizes: list[tuple[int, int]]
    maps: list[np.ndarray]
    fused: np.ndarray | None
    seconds: float


def layer_sweep(
    zoo_model: ZooModel,
    image: Image.Image,
    method: str,
    target: int | None = None,
    counterfactual: bool = False,
    fuse: bool = False,
) -> LayerMaps:
    """One method's map at the end of every resolution stage (`ZooModel.stages`), from one sweep."""
    crop, x = _inputs(zoo_model, image)
    start = time.perf_counter()
    stages = {layer.name: layer.title for layer in zoo_model.stages()}
    results = sweep(zoo_model.model, x, list(stages), method, target, counterfactual)
    first = next(iter(results.values()))
    chosen = first.target
    fused = to_numpy(fuse_layers(results, method)) if fuse else None
    return LayerMaps(
        method=method,
        image=crop,
        target=Prediction(chosen, zoo_model.labels[chosen], float(first.probabilities[chosen])),
        layers=list(results),
        titles=[stages[layer] for layer in results],
        sizes=[tuple(e.raw[method].shape[-2:]) for e in results.values()],
        maps=[to_numpy(e.maps[method]) for e in results.values()],
        fused=fused,
        seconds=time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------- faithfulness

# Steps of the deletion/insertion curves in the app: 2 x 15 forward passes per map on a CPU, plus
# 3 shared by all maps and one masked image per map.
FAITHFULNESS_STEPS = 16


@dataclass(frozen=True)
class FaithfulnessScore:
    """The faithfulness scores of one map, plain numbers and numpy curves (cacheable).

    For a counterfactual map (what lowers the class) each score reads the other way: a map that
    works keeps what lowers the class, so masking the image with it drops the confidence (high
    Average Drop) and deleting its pixels first raises the class (high deletion AUC, low
    insertion AUC). `expected` and `summary` say so.

    Attributes:
        drop: Average Drop % on this image: max(0, Y - O) / Y · 100, in the model's normalised
            input space (as the `grad-cam` package; the paper used pixel space); NaN when the
            class has probability 0 (nothing to drop from).
        increase: Increase in Confidence: whether O > Y.
        deletion_auc: NaN when the curves were left out (see ``note``).
        insertion_auc: NaN when the curves were left out.
        curves: `explainers.methods.metrics.Curves` with numpy arrays, for `curves_figure`; empty when
            left out.
        counterfactual: whether the map is a counterfactual one.
        note: why a score was left out, or None.
    """

    drop: float
    increase: bool
    deletion_auc: float
    insertion_auc: float
    curves: dict[str, object]
    counterfactual: bool = False
    note: str | None = None

    @property
    def expected(self) -> dict[str, str]:
        """Which way each score reads for a map that works: "higher" or "lower" (or, for
        Increase in Confidence, "yes" or "no")."""
        if self.counterfactual:
            return {"drop": "higher", "increase": "no", "deletion_auc": "higher", "insertion_auc": "lower"}
        return {"drop": "lower", "increase": "yes", "deletion_auc": "lower", "insertion_auc": "higher"}

    def summary(self) -> str:
        """One caption line, e.g. "Avg drop 12.3% (lower is better) · conf. increase no · ..."."""
        better = self.expected
        if math.isnan(self.drop) and self.note:
            return f"Not scored: {self.note}"
        drop = (
            "Avg drop not measurable (the class has probability 0)"
            if math.isnan(self.drop)
            else f"Avg drop {self.drop:.1f}% ({better['drop']} is better)"
        )
        parts = [drop, f"conf. increase {'yes' if self.increase else 'no'} ({better['increase']} is better)"]
        if math.isnan(self.deletion_auc):
            parts.append(
                f"deletion/insertion left out: {self.note}" if self.note else "no deletion/insertion"
            )
        else:
            parts += [
                f"deletion AUC {self.deletion_auc:.3f} ({better['deletion_auc']} is better)",
                f"insertion AUC {self.insertion_auc:.3f} ({better['insertion_auc']} is better)",
            ]
        text = " · ".join(parts)
        if self.counterfactual:
            return f"Counterfactual map, so the scores read the other way: {text}"
        return text


def score_faithfulness(
    zoo_model: ZooModel,
    image: Image.Image,
    result: ExplanationResult,
    methods: Sequence[str] | None = None,
    steps: int | None = None,
    progress: Progress | None = None,
) -> dict[str, FaithfulnessScore]:
    """Average Drop, Increase in Confidence and deletion/insertion AUC of a result's maps.

    All maps are scored in one set of batched forward passes (`explainers.methods.metrics.faithfulness`).
    Guided maps get Average Drop and Increase in Confidence on their 99th-percentile scale and no
    curves, with a note. A counterfactual result's scores say that they read the other way.

    Args:
        methods: which maps; default every CAM of the result.
        steps: intervals of the deletion/insertion curves (2·(steps - 1) forward passes per map,
            plus a few shared); default `FAITHFULNESS_STEPS`.
        progress: called as progress(done, total) with the forward passes done; returning False
            stops the work (`Cancelled`).
    """
    names = list(methods) if methods is not None else result.methods("cam")
    if not names:
        return {}
    x = zoo_model.preprocess(image)
    maps = {
        name: torch.from_numpy(np.array(result.maps[name])) for name in names
    }  # copies: cached results are read-only
    scores = faithfulness(
        zoo_model.model, x, maps, result.target, steps=steps or FAITHFULNESS_STEPS, progress=progress
    )
    return {
        name: FaithfulnessScore(
            drop=score.drop,
            increase=score.increase,
            deletion_auc=score.deletion_auc,
            insertion_auc=score.insertion_auc,
            curves={
                key: value.numpy() if isinstance(value, torch.Tensor) else value
                for key, value in (score.curves or {}).items()
            },
            counterfactual=result.counterfactual,
            note=score.note,
        )
        for name, score in scores.items()
    }


def sweep_methods() -> list[str]:
    """The CAMs offered for a layer sweep: gradient CAMs, which apply at any layer
    (CAM needs GAP + linear right after the layer; Score-CAM is too slow for five layers;
    occlusion reads no layer)."""
    return [
        name
        for name in method_options()
        if METHODS[name].kind == "cam" and name not in ("cam", "scorecam", "occlusion")
    ]


def model_view(zoo_model: ZooModel, image: Image.Image) -> np.ndarray:
    """The crop the model sees, (H, W, 3) uint8: the input panel when no explanation is at hand."""
    return np.asarray(zoo_model.preprocess.crop_image(image), dtype=np.uint8)
