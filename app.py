"""CAM Explorer: the Streamlit page. UI only: `explainers.service` computes, this file draws.

Run with `streamlit run app.py`. The sidebar functions draw widgets and return the choices;
the render functions draw results. Models are cached per server process, explanations by their
inputs, so returning to an earlier choice is instant and display changes never recompute.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from PIL import Image

from app_cache import get_explanation, get_image, get_model, get_predictions
from explainers import ExplainerInputError, service
from explainers.figures import heatmap_figure, predictions_figure
from explainers.render import COLORMAPS
from explainers.samples import list_samples
from explainers.service import ExplanationResult, Prediction
from models_zoo import ZooModel, list_zoo

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]
PANELS_PER_ROW = 4
OTHER_CLASS = -1  # the "another class" choice of the class radio

# Widgets whose options depend on the model (layers) or on the image and model (the top 5) carry
# that context in their key: a new context gets a fresh widget on its defaults (the recommended
# layer, the predicted class), and an earlier one comes back as it was left. One key with
# changing options would keep a stale selection the new options do not contain.


@dataclass(frozen=True)
class ImageChoice:
    """The image to explain: its name, its file's bytes and their hash (the cache key)."""

    name: str
    data: bytes
    digest: str


@dataclass(frozen=True)
class Display:
    """How maps are drawn; changing it re-renders without recomputing."""

    colormap: str
    opacity: float


# ----------------------------------------------------------------------------- sidebar


def sidebar_image() -> ImageChoice:
    st.sidebar.header("Image")
    upload = st.sidebar.file_uploader("Upload an image", type=UPLOAD_TYPES, key="upload")
    samples = list_samples()
    sample = st.sidebar.selectbox(
        "…or pick a sample",
        list(samples),
        key="sample",
        disabled=upload is not None,
        help="Remove the uploaded file (×) to pick a sample again.",
    )
    if upload is not None:
        data = upload.getvalue()
        return ImageChoice(upload.name, data, service.content_hash(data))
    data = samples[sample].read_bytes()
    return ImageChoice(sample, data, service.content_hash(data))


def sidebar_model() -> tuple[str, bool]:
    st.sidebar.header("Model")
    name = st.sidebar.selectbox("Classifier", list_zoo(), key="model")
    random_weights = st.sidebar.toggle(
        "Random weights (sanity check)",
        key="random_weights",
        help="Untrained weights: a faithful method's maps should turn to noise (Adebayo et al. 2018).",
    )
    return name, random_weights


def sidebar_layer(zoo_model: ZooModel) -> str:
    layers = zoo_model.layers()
    names = [layer.name for layer in layers]
    labels = {layer.name: layer.label for layer in layers}
    return st.sidebar.selectbox(
        "Target layer",
        names,
        index=names.index(zoo_model.default_layer),
        format_func=lambda name: labels[name] + ("  ★" if name == zoo_model.default_layer else ""),
        key=f"layer:{zoo_model.name}",
        help="Feature-map size in brackets; ★ marks the recommended layer. "
        "Deep layers give coarse maps, shallow ones fine.",
    )


def sidebar_class(predictions: list[Prediction], labels: tuple[str, ...], context: str) -> tuple[int, bool]:
    st.sidebar.header("Class")
    names = {p.index: f"{p.label} ({p.probability:.1%})" for p in predictions}
    pick = st.sidebar.radio(
        "Class to explain",
        [*names, OTHER_CLASS],
        format_func=lambda index: "another class…" if index == OTHER_CLASS else names[index],
        key=f"class:{context}",
        help="The predicted class first, then the rest of the top 5.",
    )
    if pick == OTHER_CLASS:
        pick = st.sidebar.selectbox(
            "Any class (type to search)",
            range(len(labels)),
            index=predictions[0].index,
            format_func=lambda index: f"{labels[index]} ({index})",  # ImageNet repeats some names
            key=f"other_class:{context}",
        )
    counterfactual = st.sidebar.toggle(
        "Counterfactual", key="counterfactual", help="Show what lowers the class score instead."
    )
    return pick, counterfactual


def sidebar_methods() -> list[str]:
    st.sidebar.header("Methods")
    return st.sidebar.multiselect(
        "Methods",
        service.method_options(),
        default=service.default_methods(),
        format_func=service.method_title,
        key="methods",
        label_visibility="collapsed",
    )


def sidebar_display() -> Display:
    st.sidebar.header("Display")
    colormap = st.sidebar.selectbox("Colormap", list(COLORMAPS), key="colormap")
    opacity = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
    return Display(colormap, opacity)


# ----------------------------------------------------------------------------- loading, with errors shown


def open_image(choice: ImageChoice) -> Image.Image | None:
    try:
        return get_image(choice.digest, choice.data)
    except ExplainerInputError as error:
        st.error(f"Cannot use {choice.name}: {error}")
        st.caption("Upload another image, or remove this one (× in the sidebar) to pick a sample.")
        return None


def open_model(name: str, random_weights: bool) -> ZooModel | None:
    try:
        return get_model(name, random_weights)
    except ExplainerInputError as error:
        st.error(str(error))
        return None


def explain(
    choice: ImageChoice,
    image: Image.Image,
    model: tuple[str, bool],
    layer: str,
    target: int,
    methods: list[str],
    counterfactual: bool,
) -> ExplanationResult | None:
    try:
        return get_explanation(choice.digest, *model, layer, target, tuple(methods), counterfactual, image)
    except ExplainerInputError as error:
        st.error(str(error))
        return None


# ----------------------------------------------------------------------------- rendering


def render_panels(result: ExplanationResult, image_name: str, display: Display) -> None:
    height, width = result.image.shape[:2]
    cams = result.methods("cam")
    panels = [("input", f"{image_name} as {result.model} sees it ({width}×{height})")]
    panels += [(name, result.caption(name)) for name in cams]
    for start in range(0, len(panels), PANELS_PER_ROW):
        columns = st.columns(PANELS_PER_ROW)
        for column, (name, caption) in zip(columns, panels[start : start + PANELS_PER_ROW], strict=False):
            picture = (
                result.image
                if name == "input"
                else service.render_panel(result, name, display.colormap, display.opacity)
            )
            column.image(picture, caption=caption, width="stretch")
    guided = result.methods("guided")
    if guided:
        st.subheader("Guided maps")
        columns = st.columns(PANELS_PER_ROW)
        for index, name in enumerate(guided):
            columns[index % PANELS_PER_ROW].image(
                service.render_panel(result, name), caption=result.caption(name), width="stretch"
            )
    for name, message in result.errors.items():
        st.warning(f"{service.method_title(name)}: {message}")


def render_predictions(predictions: list[Prediction], target: int) -> None:
    st.subheader("Top-5 predictions")
    st.plotly_chart(predictions_figure(predictions, highlight=target), width="stretch", key="top5_chart")


def render_inspector(result: ExplanationResult, display: Display) -> None:
    st.subheader("Inspect a map")
    method = st.selectbox("Map", list(result.maps), format_func=service.method_title, key="inspect")
    values = service.inspect_values(result, method)
    if result.kind(method) == "guided":
        st.caption("A guided map: each pixel's largest absolute gradient over R, G, B, scaled to [0, 1].")
    st.plotly_chart(
        heatmap_figure(values, display.colormap, result.caption(method)), width="stretch", key="heatmap"
    )
    render_downloads(result, method, display)


def render_downloads(result: ExplanationResult, method: str, display: Display) -> None:
    stem = f"{result.model}_{result.layer}_{method}_class{result.target}".replace("+", "pp")
    picture = service.render_panel(result, method, display.colormap, display.opacity)
    left, middle, right = st.columns(3)
    left.download_button(
        "Overlay (PNG)", service.to_png(picture), f"{stem}.png", "image/png", on_click="ignore"
    )
    middle.download_button(
        "Map (.npy)", service.to_npy(result.maps[method]), f"{stem}.npy", on_click="ignore"
    )
    right.download_button(
        "All maps (.npz)", service.to_npz(result), f"{stem.rsplit('_', 2)[0]}_maps.npz", on_click="ignore"
    )


def render_status(result: ExplanationResult) -> None:
    st.caption(
        f"{result.model} · layer {result.layer} · last explanation: "
        f"**{result.seconds:.2f} s** on **{result.device}**"
    )


def main() -> None:
    st.set_page_config(page_title="CAM Explorer", page_icon="🔍", layout="wide")
    st.title("CAM Explorer")
    st.caption(
        "What does the network look at? Warm colours mark the regions that raise the score of the "
        "explained class; the guided maps below show the fine detail it responds to."
    )

    choice = sidebar_image()
    model = sidebar_model()
    image = open_image(choice)
    zoo_model = open_model(*model)
    layer = sidebar_layer(zoo_model) if zoo_model else None
    predictions = get_predictions(choice.digest, *model, image) if zoo_model and image else None
    context = f"{choice.digest[:16]}:{model[0]}:{model[1]}"
    target, counterfactual = (
        sidebar_class(predictions, zoo_model.labels, context) if predictions else (None, False)
    )
    methods = sidebar_methods()
    display = sidebar_display()
    if predictions is None:
        return
    if not methods:
        st.info("Choose at least one method in the sidebar.")
        return
    result = explain(choice, image, model, layer, target, methods, counterfactual)
    if result is None:
        return
    render_panels(result, choice.name, display)
    render_status(result)
    left, right = st.columns([2, 3])
    with left:
        render_predictions(predictions, result.target)
    with right:
        if result.maps:  # empty when every chosen method was refused (see the warnings)
            render_inspector(result, display)


if __name__ == "__main__":
    main()
