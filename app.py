"""CAM Explorer: the Streamlit page. UI only: `explainers.services.service` computes, this file draws.

Run with `streamlit run app.py`. The sidebar functions draw widgets and return the choices;
the render functions draw results. Models are cached per server process, explanations by their
inputs, so returning to an earlier choice is instant and display changes never recompute.
"""

from __future__ import annotations

import os
import sys

# Idle OpenMP threads sleep instead of spinning. With several sessions computing on a few cores,
# spinning threads take the cores from the ones with work: on 2 cores under load, the default
# policy cost 1.3 CPU-seconds per explanation, this one 0.4. Set before PyTorch loads (below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import astuple
from functools import partial
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.delta_generator import DeltaGenerator

# A fresh server's first visit imports PyTorch, torchvision and the explainers here: seconds on a
# small machine, with a blank page unless this says so (for every visitor who comes meanwhile, too:
# their runs wait for the same import). Later runs find the import done and skip the spinner, which
# would start a thread of its own on every run of every session.
if not getattr(sys.modules.get("app_cache"), "IMPORTED", False):
    with st.spinner("Starting CAM Explorer: loading PyTorch and the explainers (first visit only)…"):
        import app_cache  # noqa: F401  (everything heavy comes in through it)

import app_teach
from app_cache import (
    CUSTOM_PREFIX,
    FOLDER_PREFIX,
    LANES,
    get_explanation,
    get_faithfulness,
    get_figure,
    get_first_predictions,
    get_image,
    get_model,
    get_picture,
    get_scorecam_plan,
    get_sweep,
    get_top_classes,
    load_custom,
    occlusion_results,
    scorecam_results,
)
from app_requests import CustomUpload, Display, ExplainRequest, ImageChoice, ModelRequest
from explainers import ExplainerInputError
from explainers.errors import Cancelled
from explainers.methods.occlusion import BASELINES
from explainers.services import service
from explainers.services.figures import curves_figure, heatmap_figure, predictions_figure
from explainers.services.formats import signed
from explainers.services.render import COLORMAPS, overlay
from explainers.services.samples import list_samples
from explainers.services.service import ExplanationResult, FaithfulnessScore, OcclusionSettings, Prediction
from explainers.services.view_link import OCCLUSION_WINDOW, ViewLink
from models_zoo import ZooModel, list_zoo
from models_zoo.custom import architectures
from models_zoo.folder import list_folder_models, models_dir

ICON = Path(__file__).parent / "assets" / "icon.png"  # the favicon, served by the app itself
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]
WEIGHT_TYPES = ["safetensors", "pt", "pth", "bin", "pt2"]
LABEL_TYPES = ["txt", "json"]
UPLOAD_HINT_WRAPS = (
    "<style>[data-testid='stFileUploaderDropzoneInstructions'] span"
    " {white-space: normal; overflow: visible}</style>"
)
CUSTOM = "Custom (upload)"  # the classifier choice that reveals the uploaders
# Upload limits in MB. The server's cap (server.maxUploadSize in .streamlit/config.toml) is the
# weights limit; each uploader states its own, and images are checked again here, since the
# browser enforces a widget's limit but the server only its cap.
IMAGE_LIMIT_MB, WEIGHTS_LIMIT_MB = 20, 1024

RANDOM_WEIGHTS_BANNER = (
    "Random weights: this model has learned nothing; its maps show what an untrained network "
    "attends to, for the sanity check."
)
PANELS_PER_ROW = 4
OTHER_CLASS = -1  # the "another class" choice of the class radio
SCORECAM, OCCLUSION = "scorecam", "occlusion"
SLOW = (SCORECAM, OCCLUSION)
LINK_PAGE_OPENED = "link_page_opened"  # in st.session_state: the page a link named was opened  # drawn last, in their own slots, with a progress bar
OCCLUSION_BASELINES = {"zero": "mean colour", "blur": "blurred image"}
# Score-CAM's run request and stop, in st.session_state: the Run button's click asks for a run
# (it survives reruns caused by other widgets, which restart it); Stop withdraws it.
SCORECAM_REQUEST, SCORECAM_STOPPED = "scorecam_request", "scorecam_stopped"

# Widgets whose options depend on the model (layers) or on the image and model (the top 5) carry
# that context in their key: a new context gets a fresh widget on its defaults (the recommended
# layer, the predicted class), and an earlier one comes back as it was left. One key with
# changing options would keep a stale selection the new options do not contain.


# ----------------------------------------------------------------------------- sidebar


def sidebar_image() -> ImageChoice:
    st.sidebar.header("Image")
    upload = st.sidebar.file_uploader(
        f"Upload an image (up to {IMAGE_LIMIT_MB} MB)",
        type=UPLOAD_TYPES,
        key="upload",
        max_upload_size=IMAGE_LIMIT_MB,
    )
    samples = list_samples()
    sample = st.sidebar.selectbox(
        "…or pick a sample",
        list(samples),
        key="sample",
        disabled=upload is not None,
        help="Remove the uploaded file (×) to pick a sample again.",
    )
    if upload is not None and upload.size > IMAGE_LIMIT_MB * 1024 * 1024:
        st.sidebar.error(
            f"{upload.name} is {upload.size / 2**20:.0f} MB; images must be {IMAGE_LIMIT_MB} MB or smaller."
        )
        upload = None
    if upload is not None:
        data = upload.getvalue()
        return ImageChoice(upload.name, data, service.content_hash(data))
    data = samples[sample].read_bytes()
    return ImageChoice(sample, data, service.content_hash(data))


def sidebar_model() -> ModelRequest:
    st.sidebar.header("Model")
    zoo = list_zoo()
    folder = [FOLDER_PREFIX + name for name in list_folder_models()]
    options = [zoo[0], *folder, *zoo[1:], CUSTOM]  # your own models right after the default
    name = st.sidebar.selectbox(
        "Classifier",
        options,
        key="model",
        format_func=lambda option: (
            f"{option.removeprefix(FOLDER_PREFIX)} (models folder)"
            if option.startswith(FOLDER_PREFIX)
            else option
        ),
        help=f"Models of the models folder ({models_dir()}) are listed after the default; "
        "set CAM_MODELS_DIR to use another folder.",
    )
    if name == CUSTOM:
        return ModelRequest(CUSTOM, False, sidebar_custom())
    if name.startswith(FOLDER_PREFIX):
        return ModelRequest(name, False)
    # One toggle per model (the key carries its name): a model chosen again comes back trained,
    # not with the switch another model left on.
    random_weights = st.sidebar.toggle(
        "Random weights (sanity check)",
        key=f"random_weights:{name}",
        help="Untrained weights: a faithful method's maps should turn to noise (Adebayo et al. 2018).",
    )
    if random_weights:
        st.sidebar.caption(f":orange[**On:** {name} with random weights, untrained.]")
    return ModelRequest(name, random_weights)


def sidebar_custom() -> CustomUpload | None:
    names = architectures(include_timm=True)
    architecture = st.sidebar.selectbox(
        "Architecture",
        names,
        index=names.index("resnet18") if "resnet18" in names else 0,
        key="custom_architecture",
        help="The torchvision name your weights were trained with, or timm/<name> for a timm model. "
        "Ignored for an exported program (.pt2), which carries its own.",
    )
    weights = st.sidebar.file_uploader(
        f"Weights: safetensors, state_dict or exported .pt2 (up to {WEIGHTS_LIMIT_MB // 1024} GB)",
        type=WEIGHT_TYPES,
        key="custom_weights",
        max_upload_size=WEIGHTS_LIMIT_MB,
        help="On your own machine, the models folder avoids the upload: see the README.",
    )
    labels = st.sidebar.file_uploader(
        "Class names (one per line, or a JSON list)", type=LABEL_TYPES, key="custom_labels", max_upload_size=1
    )
    preprocessing = sidebar_preprocessing()
    if weights is None or labels is None or preprocessing is None:
        return None
    data = weights.getvalue()  # one copy of a file that may be 1 GB
    digests = st.session_state.setdefault("custom_weights_digests", {})
    if weights.file_id not in digests:  # hash a large file once per upload, not on every rerun
        digests.clear()
        digests[weights.file_id] = service.content_hash(data)
    return CustomUpload(architecture, data, labels.getvalue(), preprocessing, digests[weights.file_id])


def sidebar_preprocessing() -> tuple[tuple[str, object], ...] | None:
    """Changes to the architecture's preprocessing (empty: its own); None when a field is wrong."""
    with st.sidebar.expander("Preprocessing (as in training)"):
        own = st.toggle(
            "The architecture's own",
            value=True,
            key="custom_pre_own",
            help="torchvision's or timm's preprocessing for the architecture (ImageNet statistics).",
        )
        if own:
            return ()
        size = st.number_input("Input size (px)", 16, 4096, 224, key="custom_pre_size")
        grayscale = st.toggle("Grayscale (1-channel input)", key="custom_pre_gray")
        policy = st.radio(
            "Resize",
            ["crop", "squash"],
            format_func=lambda p: (
                "short side, then centre crop" if p == "crop" else "whole image to size×size"
            ),
            key="custom_pre_policy",
            horizontal=True,
        )
        mean = st.text_input(
            "Mean (one value, or one per channel)", "0.485, 0.456, 0.406", key="custom_pre_mean"
        )
        std = st.text_input(
            "Std (one value, or one per channel)", "0.229, 0.224, 0.225", key="custom_pre_std"
        )
    try:
        values = {
            key: [float(v) for v in text.replace(",", " ").split()]
            for key, text in (("mean", mean), ("std", std))
        }
    except ValueError:
        st.sidebar.error("Mean and std must be numbers separated by commas, e.g. 0.5, 0.5, 0.5.")
        return None
    return (
        ("size", int(size)),
        ("channels", 1 if grayscale else 3),
        ("policy", policy),
        ("mean", tuple(values["mean"])),
        ("std", tuple(values["std"])),
    )


def sidebar_layer(zoo_model: ZooModel) -> str:
    layers = zoo_model.layers()
    names = [layer.name for layer in layers]
    labels = {layer.name: layer.label for layer in layers}
    # Defaults go into the session state rather than the widget, so that a link's value set there
    # (app_teach.read_link) meets no competing default (Streamlit logs a warning for that).
    st.session_state.setdefault(f"layer:{zoo_model.name}", zoo_model.default_layer)
    return st.sidebar.selectbox(
        "Target layer",
        names,
        format_func=lambda name: labels[name] + (" ★" if name == zoo_model.default_layer else ""),
        key=f"layer:{zoo_model.name}",
        help="★ the recommended target: the final feature map, the rectified map the classifier head "
        "pools, where the CAM formulas are derived. Then the end of each resolution stage, deep "
        "(coarse maps) to shallow (fine), then every layer by name (`:relu` = its rectified output).",
    )


def sidebar_class(predictions: list[Prediction], labels: tuple[str, ...], context: str) -> tuple[int, bool]:
    st.sidebar.header("Class")
    names = {p.index: f"{p.label} ({p.probability:.1%})" for p in predictions}
    linked = app_teach.take_pending("class")  # a class the link named, now that the model is known
    if linked is not None and linked < len(labels):
        st.session_state[f"class:{context}"] = linked if linked in names else OTHER_CLASS
        if linked not in names:
            st.session_state[f"other_class:{context}"] = linked
    elif linked is not None:
        app_teach.link_warning(
            f"Link parameter “class”: {linked} is out of range (the model has {len(labels)} classes, 0 to "
            f"{len(labels) - 1}); the predicted class is used."
        )
    pick = st.sidebar.radio(
        "Class to explain",
        [*names, OTHER_CLASS],
        format_func=lambda index: "another class…" if index == OTHER_CLASS else names[index],
        key=f"class:{context}",
        help="The predicted class first, then the rest of the top 5.",
    )
    if pick == OTHER_CLASS:
        st.session_state.setdefault(f"other_class:{context}", predictions[0].index)
        pick = st.sidebar.selectbox(
            "Any class (type to search)",
            range(len(labels)),
            format_func=lambda index: f"{labels[index]} ({index})",  # ImageNet repeats some names
            key=f"other_class:{context}",
        )
    counterfactual = st.sidebar.toggle(
        "Counterfactual", key="counterfactual", help="Show what lowers the class score instead."
    )
    return pick, counterfactual


def sidebar_methods() -> list[str]:
    st.sidebar.header("Methods")
    # Pills wrap and show every method, chosen or not; a multiselect hid its last chips in a
    # scrolling box.
    st.session_state.setdefault("methods", service.default_methods())
    return st.sidebar.pills(
        "Methods",
        service.method_options(),
        selection_mode="multi",
        format_func=service.method_title,
        key="methods",
        label_visibility="collapsed",
    )


def sidebar_scorecam(methods: list[str]) -> int | None:
    """Score-CAM's channel limit: None scores every channel (exact), else an approximation."""
    if SCORECAM not in methods:
        return None
    approximate = st.sidebar.toggle(
        "Score-CAM approximation",
        value=True,
        key="scorecam_approximation",
        help="Score only the channels with the largest Grad-CAM weights: far fewer forward passes, "
        "but the map is an approximation of Score-CAM.",
    )
    if not approximate:
        return None
    return st.sidebar.slider("Channels scored (approximation)", 8, 256, 32, 8, key="scorecam_channels")


def sidebar_occlusion(methods: list[str]) -> OcclusionSettings | None:
    """Occlusion's window, stride and baseline, when it is chosen (in pixels of the model's crop)."""
    if OCCLUSION not in methods:
        return None
    st.session_state.setdefault(app_teach.OCCLUSION_WINDOW, 32)
    low, high, step = OCCLUSION_WINDOW
    window = st.sidebar.slider(
        "Occlusion window (px)",
        low,
        high,
        step=step,
        key=app_teach.OCCLUSION_WINDOW,
        help="The side of the square that covers the image; larger windows hide whole parts, smaller "
        "ones details (more passes).",
    )
    st.session_state.setdefault(app_teach.OCCLUSION_STRIDE, max(1, window // 2))
    if st.session_state[app_teach.OCCLUSION_STRIDE] > window:
        st.session_state[app_teach.OCCLUSION_STRIDE] = max(1, window // 2)
    stride = st.sidebar.slider(
        "Occlusion stride (px)",
        1,
        window,
        key=app_teach.OCCLUSION_STRIDE,
        help="How far the window moves each step; at most the window, so that every pixel is covered.",
    )
    baseline = st.sidebar.selectbox(
        "Occlusion fills the window with",
        list(BASELINES),
        format_func=OCCLUSION_BASELINES.get,
        key=app_teach.OCCLUSION_BASELINE,
        help="Mean colour: the training set's mean colour (the model's input 0), as in Captum. Blurred "
        "image: the window's own pixels blurred, which removes detail but keeps colour.",
    )
    return OcclusionSettings(int(window), int(stride), baseline)


def sidebar_scores() -> bool:
    return st.sidebar.toggle(
        "Faithfulness scores",
        key="faithfulness",
        help="Under each CAM: Average Drop and Increase in Confidence (Grad-CAM++ paper, here in the "
        "model's normalised input space as in the grad-cam package) and the deletion/insertion AUC "
        "(RISE), each with the direction that means the map works; under Counterfactual they read the "
        "other way. Costs about 30 forward passes per map, batched.",
    )


def sidebar_display() -> Display:
    st.sidebar.header("Display")
    colormap = st.sidebar.selectbox("Colormap", list(COLORMAPS), key="colormap")
    st.session_state.setdefault("opacity", 0.5)
    opacity = st.sidebar.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="opacity")
    return Display(colormap, opacity)


# ----------------------------------------------------------------------------- loading, with errors shown


def open_image(choice: ImageChoice) -> Image.Image | None:
    try:
        return get_image(choice.digest, choice.data)
    except ExplainerInputError as error:
        st.error(f"Cannot use {choice.name}: {error}")
        st.caption("Upload another image, or remove this one (× in the sidebar) to pick a sample.")
        return None


def open_model(request: ModelRequest) -> tuple[tuple[str, bool], ZooModel] | None:
    """The model's cache name and random-weights flag, and the model; None (with a message) on failure."""
    try:
        if request.name != CUSTOM:
            return (request.name, request.random_weights), get_model(request.name, request.random_weights)
        if request.custom is None:
            st.info("Upload your model's weights and its class names in the sidebar (Model).")
            return None
        upload = request.custom
        name = load_custom(
            upload.architecture, upload.weights, upload.labels, upload.preprocessing, upload.weights_digest
        )
        return (name, False), get_model(name, False)
    except ExplainerInputError as error:
        st.error(str(error).splitlines()[0])
        return None


def first_predictions(
    choice: ImageChoice, model: tuple[str, bool], layer: str, image: Image.Image
) -> list[Prediction]:
    """The top 5 of the image. A new image's come with the explanation of its top-1 class, which the
    page asks for next, with the methods and counterfactual the sidebar holds (their widgets are
    drawn below the class choice, which needs the top 5)."""
    methods = st.session_state.get("methods", service.default_methods())
    quick = tuple(m for m in methods if m not in SLOW)
    if st.session_state.get(app_teach.LINK_PENDING, {}).get("class") is not None:
        quick = ()  # a link names the class to explain: its top-1 explanation would go unshown
    counterfactual = bool(st.session_state.get("counterfactual", False))
    return get_first_predictions(choice.digest, *model, layer, quick, counterfactual, image)


def explain(request: ExplainRequest, image: Image.Image, methods: list[str]) -> ExplanationResult | None:
    try:
        return get_explanation(
            request.digest,
            request.model,
            request.random_weights,
            request.layer,
            request.target,
            tuple(methods),
            request.counterfactual,
            image,
        )
    except ExplainerInputError as error:
        st.error(str(error))
        return None


def scores_of(
    request: ExplainRequest, image: Image.Image, result: ExplanationResult, key: tuple
) -> dict[str, FaithfulnessScore]:
    methods = tuple(result.methods("cam"))
    if not methods:
        return {}
    bar = st.empty()  # filled only while scores are computed (a cached result comes at once)

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Scoring faithfulness: {done} of {total} forward passes")

    try:
        return get_faithfulness(key, request.model, request.random_weights, methods, image, result, progress)
    except ExplainerInputError as error:
        st.error(str(error))
        return {}
    finally:
        bar.empty()


# ----------------------------------------------------------------------------- rendering


def render_panels(
    result: ExplanationResult | None,
    result_key: tuple,
    view: np.ndarray,
    image_name: str,
    model_name: str,
    display: Display,
    scores: dict[str, FaithfulnessScore],
    slow: list[str],
) -> dict[str, DeltaGenerator]:
    """The input and one overlay per CAM; returns the empty slots of the slow methods (Score-CAM,
    occlusion), filled last."""
    height, width = view.shape[:2]
    panels: list[tuple[str, str]] = [("input", f"{image_name} as {model_name} sees it ({width}×{height})")]
    if result is not None:
        panels += [(name, result.caption(name)) for name in result.methods("cam")]
    panels += [(name, "") for name in slow]
    slots = {}
    for start in range(0, len(panels), PANELS_PER_ROW):
        columns = st.columns(PANELS_PER_ROW)
        for column, (name, caption) in zip(columns, panels[start : start + PANELS_PER_ROW], strict=False):
            if name in slow:
                slots[name] = column.empty()
                continue
            if result is None:  # Score-CAM alone: nothing cached to draw from
                picture = view
            else:
                picture = get_picture(result_key, name, display.colormap, display.opacity, result)
            column.image(picture, caption=caption, width="stretch", output_format="JPEG")
            if name in scores:
                column.caption(scores[name].summary())
    if result is not None:
        render_guided(result, result_key)
    return slots


def render_guided(result: ExplanationResult, result_key: tuple) -> None:
    guided = result.methods("guided")
    if guided:
        st.subheader("Guided maps")
        columns = st.columns(PANELS_PER_ROW)
        for index, name in enumerate(guided):
            picture = get_picture(result_key, name, "", 0.0, result)  # no colormap: an RGB map
            column = columns[index % PANELS_PER_ROW]
            column.image(picture, caption=result.caption(name), width="stretch", output_format="JPEG")
    for name, message in result.errors.items():
        st.warning(f"{service.method_title(name)}: {message}")


def render_curves(scores: dict[str, FaithfulnessScore], class_name: str) -> None:
    curves = {name: score.curves for name, score in scores.items() if score.curves}
    if not curves:
        return
    with st.expander("Deletion and insertion curves"):
        st.caption(
            "Pixels ranked by each map are deleted (left) or inserted into a blurred image (right), "
            "most salient first; the curve is the class probability. A faithful map drops fast "
            f"when deleting and rises fast when inserting ({service.FAITHFULNESS_STEPS} steps)."
            + (
                " These are counterfactual maps (what lowers the class): one that works does the "
                "reverse, rising when deleting and staying low when inserting."
                if any(score.counterfactual for score in scores.values())
                else ""
            )
        )
        st.plotly_chart(curves_figure(curves, class_name), width="stretch", key="curves_chart")


# ----------------------------------------------------------------------------- Score-CAM, with progress


def _ask_scorecam(key: tuple) -> None:
    st.session_state[SCORECAM_REQUEST] = key
    st.session_state[SCORECAM_STOPPED] = None


def _stop_scorecam(key: tuple) -> None:
    # Runs at the start of the rerun the click causes: that rerun has already interrupted the
    # running script (at its next progress update), so only the request is left to withdraw.
    st.session_state[SCORECAM_REQUEST] = None
    st.session_state[SCORECAM_STOPPED] = key


def render_scorecam(
    slot: DeltaGenerator,
    request: ExplainRequest,
    image: Image.Image,
    max_channels: int | None,
    display: Display,
    show_scores: bool,
) -> ExplanationResult | None:
    """Score-CAM's panel: its cost first, then a run with a progress bar and a Stop button."""
    if request.counterfactual:
        slot.warning("Score-CAM has no counterfactual variant (it uses no gradients).")
        return None
    key = scorecam_key(request, max_channels)
    result = scorecam_results().get(key)
    if result is None:
        result = run_scorecam(slot, key, request, image, max_channels)
    if result is None:
        return None
    slot.empty()  # the progress bar and Stop button of a run that just finished would linger
    with slot.container():
        picture = service.render_panel(result, SCORECAM, display.colormap, display.opacity)
        st.image(picture, caption=result.caption(SCORECAM), width="stretch")
        if show_scores:
            scores = scores_of(request, image, result, (*key, SCORECAM))
            if SCORECAM in scores:
                st.caption(scores[SCORECAM].summary())
    return result


def run_scorecam(
    slot: DeltaGenerator, key: tuple, request: ExplainRequest, image: Image.Image, max_channels: int | None
) -> ExplanationResult | None:
    """Say what Score-CAM will cost; run it when asked, with progress; None until it is done."""
    try:
        plan = get_scorecam_plan(
            request.digest,
            request.model,
            request.random_weights,
            request.layer,
            request.target,
            max_channels,
            image,
        )
    except ExplainerInputError as error:
        slot.error(f"Score-CAM: {error}")
        return None
    with slot.container():
        kind = f"approximation: {max_channels} channels" if max_channels else "exact"
        st.markdown(f"**Score-CAM** ({kind})")
        st.caption(f"Score-CAM will take {plan.passes} forward passes (batches of {plan.batch_size}).")
        if st.session_state.get(SCORECAM_REQUEST) != key:
            if st.session_state.get(SCORECAM_STOPPED) == key:
                st.info("Score-CAM stopped.")
            st.button("Run Score-CAM", key="scorecam_run", on_click=_ask_scorecam, args=(key,))
            return None
        bar = st.progress(0.0, text="Score-CAM: starting…")
        st.button("Stop Score-CAM", key="scorecam_stop", on_click=_stop_scorecam, args=(key,))

    def progress(done: int, total: int) -> bool:
        # Drawing the bar is also where Streamlit interrupts this run when Stop is clicked.
        bar.progress(done / total if total else 1.0, text=f"Score-CAM: {done} of {total} forward passes")
        return st.session_state.get(SCORECAM_REQUEST) == key

    if LANES.long.running >= LANES.long.slots:
        bar.progress(0.0, text="Score-CAM: waiting for another long job on the server to finish…")
    try:
        with LANES.long.slot():  # long jobs take turns; quick explanations go on meanwhile
            result = service.run_scorecam(
                get_model(request.model, request.random_weights),
                image,
                request.layer,
                request.target,
                max_channels,
                progress,
            )
    except Cancelled:
        _stop_scorecam(key)
        st.rerun()  # redraw the panel as stopped: its cost, the message and the Run button
    except ExplainerInputError as error:
        st.session_state[SCORECAM_REQUEST] = None
        slot.error(f"Score-CAM: {error}")
        return None
    st.session_state[SCORECAM_REQUEST] = None
    scorecam_results().put(key, result)
    return result


# ----------------------------------------------------------------------------- occlusion, with progress


def render_occlusion(
    slot: DeltaGenerator,
    request: ExplainRequest,
    image: Image.Image,
    settings: OcclusionSettings,
    display: Display,
    show_scores: bool,
    cams: dict[str, np.ndarray],
) -> tuple[ExplanationResult | None, dict[str, float]]:
    """Occlusion's panel: run with a progress bar (its cost is known and bounded), then the map and
    its Spearman correlation with each CAM on this image. Returns its result and those correlations."""
    key = occlusion_key(request, settings)
    result = occlusion_results().get(key)
    if result is None:
        zoo_model = get_model(request.model, request.random_weights)
        passes = service.occlusion_cost(zoo_model, settings)
        with slot.container():
            st.markdown(f"**Occlusion** ({passes} forward passes)")
            bar = st.progress(0.0, text=f"Occlusion: 0 of {passes} forward passes")

        def progress(done: int, total: int) -> None:
            # Drawing the bar is also where Streamlit stops this run when a widget changes.
            bar.progress(done / total if total else 1.0, text=f"Occlusion: {done} of {total} forward passes")

        try:
            result = service.run_occlusion(
                zoo_model, image, request.layer, request.target, request.counterfactual, settings, progress
            )
        except ExplainerInputError as error:
            slot.error(f"Occlusion: {error}")
            return None, {}
        occlusion_results().put(key, result)
    slot.empty()
    agreement = service.spearman_with(result.maps[OCCLUSION], cams)
    with slot.container():
        picture = service.render_panel(result, OCCLUSION, display.colormap, display.opacity)
        st.image(picture, caption=result.caption(OCCLUSION), width="stretch")
        if agreement:
            st.caption(
                "Spearman ρ with "
                + " · ".join(f"{service.method_title(m)} {signed(r)}" for m, r in agreement.items())
                + " (rank correlation over the pixels, measured now on this image)"
            )
        if show_scores:
            scores = scores_of(request, image, result, (*key, OCCLUSION))
            if OCCLUSION in scores:
                st.caption(scores[OCCLUSION].summary())
    return result, agreement


# ----------------------------------------------------------------------------- many classes, many layers


def render_top_classes(
    request: ExplainRequest, image: Image.Image, methods: list[str], display: Display
) -> None:
    expander = st.expander("Top-5 classes", key="top5_open", on_change="rerun")
    with expander:
        if not expander.open:  # computed only once opened: the default page stays fast
            return
        cams = [m for m in methods if m in service.sweep_methods()]
        method = cams[0] if cams else "gradcam"
        try:
            maps = get_top_classes(
                request.digest,
                request.model,
                request.random_weights,
                request.layer,
                method,
                request.counterfactual,
                image,
            )
        except ExplainerInputError as error:
            st.error(str(error))
            return
        st.caption(
            f"{service.method_title(method)} for each of the top {len(maps.classes)} classes, from one "
            f"forward pass and one batched backward pass ({maps.seconds:.2f} s)."
        )
        columns = st.columns(len(maps.classes))
        for column, prediction, values in zip(columns, maps.classes, maps.maps, strict=True):
            picture = overlay(maps.image, values, display.colormap, display.opacity)
            column.image(
                picture, caption=f"{prediction.label} · {prediction.probability:.1%}", width="stretch"
            )


def render_sweep(request: ExplainRequest, image: Image.Image, display: Display) -> None:
    expander = st.expander("Layer sweep: coarse versus fine", key="sweep_open", on_change="rerun")
    with expander:
        if not expander.open:
            return
        options = service.sweep_methods()
        left, right = st.columns([1, 2])
        method = left.selectbox(
            "Method",
            options,
            index=options.index("gradcam") if "gradcam" in options else 0,
            format_func=service.method_title,
            key="sweep_method",
            help="LayerCAM keeps its detail at shallow layers; Grad-CAM's averaged gradients blur there.",
        )
        fuse = right.toggle("Add the fused map (LayerCAM's fusion of all layers)", key="sweep_fuse")
        try:
            sweep = get_sweep(
                request.digest,
                request.model,
                request.random_weights,
                method,
                request.target,
                request.counterfactual,
                fuse,
                image,
            )
        except ExplainerInputError as error:
            st.error(str(error))
            return
        st.caption(
            f"{service.method_title(method)} for {sweep.target.label} at the end of each stage, shallow "
            f"to deep, from one forward and one backward pass ({sweep.seconds:.2f} s): shallow layers "
            "give fine maps, deep ones coarse but class-specific."
        )
        panels = [
            (f"{title} · {h}×{w}", values)
            for title, (h, w), values in zip(sweep.titles, sweep.sizes, sweep.maps, strict=True)
        ]
        if sweep.fused is not None:
            panels.append(("fused (all layers)", sweep.fused))
        columns = st.columns(len(panels))
        for column, (caption, values) in zip(columns, panels, strict=True):
            picture = overlay(sweep.image, values, display.colormap, display.opacity)
            column.image(picture, caption=caption, width="stretch")


def render_predictions(predictions: list[Prediction], target: int, result_key: tuple) -> None:
    st.subheader("Top-5 predictions")
    figure = get_figure(("top5", *result_key), lambda: predictions_figure(predictions, highlight=target))
    st.plotly_chart(figure, width="stretch", key="top5_chart")


@st.fragment  # choosing another map reruns this section only, not the page
def render_inspector(result: ExplanationResult, result_key: tuple, display: Display) -> None:
    st.subheader("Inspect a map")
    method = st.selectbox("Map", list(result.maps), format_func=service.method_title, key="inspect")
    if result.kind(method) == "guided":
        st.caption("A guided map: each pixel's largest absolute gradient over R, G, B, scaled to [0, 1].")
    figure = get_figure(
        ("heatmap", *result_key, method, display.colormap),
        lambda: heatmap_figure(
            service.inspect_values(result, method), display.colormap, result.caption(method)
        ),
    )
    st.plotly_chart(figure, width="stretch", key="heatmap")
    render_downloads(result, result_key, method, display)


def render_downloads(result: ExplanationResult, result_key: tuple, method: str, display: Display) -> None:
    stem = f"{result.model}_{result.layer}_{method}_class{result.target}".replace("+", "pp")
    picture = get_picture(result_key, method, display.colormap, display.opacity, result, kind="PNG")
    left, middle, right = st.columns(3)
    left.download_button("Overlay (PNG)", picture, f"{stem}.png", "image/png", on_click="ignore")
    middle.download_button(
        "Map (.npy)", partial(service.to_npy, result.maps[method]), f"{stem}.npy", on_click="ignore"
    )
    # Compressing every map takes a noticeable part of the first view: done on click, not per run.
    right.download_button(
        "All maps (.npz)",
        partial(service.to_npz, result),
        f"{stem.rsplit('_', 2)[0]}_maps.npz",
        on_click="ignore",
    )


def render_status(result: ExplanationResult) -> None:
    st.caption(
        f"{result.model} · layer {result.layer} · last explanation: "
        f"**{result.seconds:.2f} s** on **{result.device}**"
    )


def explore() -> None:
    """The Explore page: one image, one model, the maps side by side."""
    st.set_page_config(page_title="CAM Explorer", layout="wide")
    st.title("CAM Explorer")
    st.caption(
        "What does the network look at? Warm colours mark the regions that raise the score of the "
        "explained class; the guided maps below show the fine detail it responds to."
    )
    notices = st.container()  # what the link that opened the page got wrong, once the view is known
    samples = list_samples()
    models = [*list_zoo(), *(FOLDER_PREFIX + name for name in list_folder_models())]
    app_teach.read_link(samples, models, service.method_options(), list(COLORMAPS))

    choice = sidebar_image()
    model_request = sidebar_model()
    image = open_image(choice)
    opened = open_model(model_request)
    model, zoo_model = opened if opened else (None, None)
    if zoo_model is not None and not zoo_model.trained:
        st.warning(RANDOM_WEIGHTS_BANNER)
    if zoo_model is not None:
        app_teach.apply_link_layer(
            [layer.name for layer in zoo_model.layers()], f"layer:{zoo_model.name}", zoo_model.resolve_layer
        )
    layer = sidebar_layer(zoo_model) if zoo_model else None
    predictions = first_predictions(choice, model, layer, image) if zoo_model and image else None
    context = f"{choice.digest[:16]}:{model[0]}:{model[1]}" if model else ""
    target, counterfactual = (
        sidebar_class(predictions, zoo_model.labels, context) if predictions else (None, False)
    )
    methods = sidebar_methods()
    max_channels = sidebar_scorecam(methods)
    occlusion = sidebar_occlusion(methods)
    show_scores = sidebar_scores()
    display = sidebar_display()
    if predictions is None:
        app_teach.show_link_warnings(notices, {})
        return
    if not methods:
        st.info("Choose at least one method in the sidebar.")
        app_teach.show_link_warnings(notices, {})
        return
    request = ExplainRequest(choice.digest, *model, layer, target, counterfactual)
    # Score-CAM and occlusion run apart from the cached explanation: they show a progress bar.
    others = [m for m in methods if m not in SLOW]
    result = explain(request, image, others) if others else None
    if others and result is None:
        return
    scores = scores_of(request, image, result, (*astuple(request), *others)) if show_scores and result else {}
    view = result.image if result else service.model_view(zoo_model, image)
    result_key = astuple(request)  # a map does not depend on which other methods are shown
    slow = [m for m in SLOW if m in methods]
    slots = render_panels(result, result_key, view, choice.name, zoo_model.name, display, scores, slow)
    if model[0].startswith((FOLDER_PREFIX, CUSTOM_PREFIX)):
        st.caption(f"Preprocessing, as your model sees it: {zoo_model.preprocess.describe()}.")
    edit = None
    if result is not None:
        render_status(result)
        render_curves(scores, result.target_label)
        left, right = st.columns([2, 3])
        with left:
            render_predictions(predictions, result.target, result_key)
        with right:
            if result.maps:  # empty when every chosen method was refused (see the warnings)
                render_inspector(result, result_key, display)
    # Score-CAM's and occlusion's results as far as they are stored: a run that computes one reruns
    # the page (below), so that the sections here show it too.
    extra = stored_slow(request, methods, max_channels, occlusion)
    cams = {m: result.maps[m] for m in result.methods("cam")} if result else {}
    cams.update({m: r.maps[m] for m, r in extra if m == SCORECAM})
    occluded = dict(extra).get(OCCLUSION)
    agreement = service.spearman_with(occluded.maps[OCCLUSION], cams) if occluded else {}
    entries = [(m, result) for m in result.methods("cam")] if result else []
    app_teach.render_steps(entries + extra, display.colormap, display.opacity, zoo_model.preprocess.mean)
    if result is not None:
        edit = app_teach.render_edit(
            request, image, result, others, predictions, display.colormap, display.opacity
        )
    render_top_classes(request, image, methods, display)
    render_sweep(request, image, display)
    link = current_link(
        choice, model_request, layer, target, counterfactual, methods, display, edit, occlusion
    )
    url = app_teach.write_link(link, list_samples())
    app_teach.show_link_warnings(notices, link.query(samples))
    parts = app_teach.ViewParts(
        title=f"CAM Explorer · {choice.name} · {zoo_model.name} · {zoo_model.labels[target]}",
        settings=view_settings(choice, zoo_model, layer, target, counterfactual, methods, display, edit),
        predictions=predictions,
        result=result,
        input_view=view,
        input_caption=f"{choice.name} as {zoo_model.name} sees it",
        colormap=display.colormap,
        opacity=display.opacity,
        scores=scores,
        extra=extra,
        agreement=agreement,
        edit=edit,
        link=url,
        uploaded=is_upload(choice),
        notes=[
            f"{service.method_title(m)}: {message}"
            for m, message in (result.errors if result else {}).items()
        ],
    )
    stem = f"{Path(choice.name).stem}_{zoo_model.name}_class{target}".replace(" ", "_")
    app_teach.render_share(url, is_upload(choice), partial(app_teach.view_report, parts), f"{stem}_view.html")
    # Last: the rest of the page is drawn while Score-CAM or occlusion runs.
    stored = dict(extra)
    fresh, scored = False, None
    if SCORECAM in slots:
        scored = render_scorecam(slots[SCORECAM], request, image, max_channels, display, show_scores)
        fresh |= scored is not None and SCORECAM not in stored
    if OCCLUSION in slots:
        cams.update({SCORECAM: scored.maps[SCORECAM]} if scored is not None else {})
        occluded, _ = render_occlusion(
            slots[OCCLUSION], request, image, occlusion, display, show_scores, cams
        )
        fresh |= occluded is not None and OCCLUSION not in stored
    if fresh:  # draw the step view, the link and the download with the new map
        st.rerun()


def stored_slow(
    request: ExplainRequest, methods: list[str], max_channels: int | None, occlusion: OcclusionSettings | None
) -> list[tuple[str, ExplanationResult]]:
    """The chosen slow methods' results already in their stores, as (method, result)."""
    found = []
    if SCORECAM in methods and not request.counterfactual:
        found.append((SCORECAM, scorecam_results().get(scorecam_key(request, max_channels))))
    if OCCLUSION in methods:
        found.append((OCCLUSION, occlusion_results().get(occlusion_key(request, occlusion))))
    return [(method, result) for method, result in found if result is not None]


def scorecam_key(request: ExplainRequest, max_channels: int | None) -> tuple:
    return (
        request.digest,
        request.model,
        request.random_weights,
        request.layer,
        request.target,
        max_channels,
    )


def occlusion_key(request: ExplainRequest, settings: OcclusionSettings) -> tuple:
    return (
        request.digest,
        request.model,
        request.random_weights,
        request.target,
        request.counterfactual,
        settings,
    )


def is_upload(choice: ImageChoice) -> bool:
    return choice.name not in list_samples()


def current_link(
    choice: ImageChoice,
    request: ModelRequest,
    layer: str,
    target: int,
    counterfactual: bool,
    methods: list[str],
    display: Display,
    edit: app_teach.EditOutcome | None,
    occlusion: OcclusionSettings | None,
) -> ViewLink:
    """The view as a link: what a URL can carry (an uploaded image or model cannot travel)."""
    linkable = request.name != CUSTOM
    return ViewLink(
        page="explore",
        sample=None if is_upload(choice) else choice.name,
        model=request.name if linkable else None,
        random_weights=request.random_weights,
        layer=layer if linkable else None,
        target=target if linkable else None,
        methods=tuple(methods),
        counterfactual=counterfactual,
        colormap=display.colormap,
        opacity=display.opacity,
        edit=edit.edit if edit else None,
        occlusion=None if occlusion is None else (occlusion.window, occlusion.stride, occlusion.baseline),
    )


def view_settings(
    choice: ImageChoice,
    zoo_model: ZooModel,
    layer: str,
    target: int,
    counterfactual: bool,
    methods: list[str],
    display: Display,
    edit: app_teach.EditOutcome | None,
) -> list[tuple[str, str]]:
    rows = [
        ("Image", choice.name + (" (uploaded)" if is_upload(choice) else " (bundled sample)")),
        ("Model", zoo_model.name + ("" if zoo_model.trained else " (random weights)")),
        ("Target layer", layer),
        ("Class", f"{zoo_model.labels[target]} ({target})"),
        ("Counterfactual", "yes" if counterfactual else "no"),
        ("Methods", ", ".join(service.method_title(m) for m in methods)),
        ("Display", f"colormap {display.colormap}, opacity {display.opacity:g}"),
    ]
    if edit is not None:
        rows.append(("Edit", edit.edit.describe()))
    return rows


def main() -> None:
    # Named pages: without st.navigation the sidebar would list this page by its file name, "app".
    # The other pages live in app_pages/, not pages/: a pages/ folder would switch on Streamlit's
    # automatic page discovery, which serves a deep link (/Lessons) without this navigation.
    # The favicon is set before the navigation: otherwise the browser takes the page's material
    # icon as favicon and fetches it from fonts.gstatic.com (fails offline). In the sidebar the
    # material icons come from a font Streamlit serves itself. The pages set no icon of their own.
    st.set_page_config(page_icon=str(ICON))
    # Every page's uploader cuts its hint ("20MB per file • PNG, JPG, WEBP, B…") to one line; let it wrap.
    st.html(UPLOAD_HINT_WRAPS)
    pages = [
        st.Page(explore, title="Explore", icon=":material/image_search:", default=True),
        st.Page("app_pages/1_Trust.py", title="Trust & bias", icon=":material/balance:", url_path="Trust"),
        st.Page("app_pages/2_Lessons.py", title="Lessons", icon=":material/school:", url_path="Lessons"),
    ]
    page = st.navigation(pages)
    # A link may name another page (?page=lessons): open it once, as if it had been clicked.
    linked = {"trust": pages[1], "lessons": pages[2]}.get(str(st.query_params.get("page", "")).lower())
    if linked is not None and page is pages[0] and not st.session_state.get(LINK_PAGE_OPENED):
        st.session_state[LINK_PAGE_OPENED] = True
        st.switch_page(linked)
    page.run()


if __name__ == "__main__":
    main()
