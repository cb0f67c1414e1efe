"""Trust & bias: two models or two classes side by side, a region check and the sanity check.

UI only: `explainers.services.compare`, `explainers.methods.metrics` and `explainers.methods.sanity` compute; this page
draws. It opens on the built-in bias demo (models_zoo.bias_demo): a biased and an unbiased
"stripes or dots?" classifier, Grad-CAM showing the biased one looking at a yellow tag. Only the
section chosen in the sidebar is computed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import streamlit as st
from PIL import Image

from app_cache import FOLDER_PREFIX, get_image, get_model, load_custom
from explainers import ExplainerInputError
from explainers.methods.core import METHODS, method_title
from explainers.methods.metrics import Box, box_shares
from explainers.methods.sanity import (
    CHANGED_BELOW,
    DEFAULT_SEEDS,
    MEASURES,
    SanityResult,
    SanityVerdict,
    judge,
    sanity_check,
)
from explainers.services.compare import Panel, compare_classes, compare_models, explain_panel
from explainers.services.figures import region_figure, sanity_figure, selection_box, shares_figure
from explainers.services.formats import percent
from explainers.services.images import content_hash
from explainers.services.render import draw_box
from explainers.services.render import picture as render_picture
from explainers.services.samples import list_samples
from explainers.services.service import model_view, predict
from models_zoo import ZooModel, cue_box, demo_image, list_zoo
from models_zoo.custom import architectures
from models_zoo.folder import list_folder_models
from models_zoo.names import display_name

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]
IMAGE_LIMIT_MB, WEIGHTS_LIMIT_MB = 20, 1024  # the server's cap is the weights limit (.streamlit/config.toml)
SECTIONS = {
    "models": "Compare two models",
    "classes": "Two classes",
    "region": "Region check",
    "sanity": "Sanity check",
}
CUSTOM = "Custom model (upload)…"
DEMO_WITH, DEMO_WITHOUT, UPLOAD = "Bias demo image (with tag)", "Bias demo image (no tag)", "Upload…"
TOP_CLASS = "(the model's top class)"
SANITY_METHODS = ("gradcam", "guided_backprop")
REGION_METHODS = ("gradcam", "gradcam++", "layercam", "guided_backprop")
# The chart's key (per image); the last box drawn on it, and the image it was drawn on.
REGION_CHART, REGION_DRAWN, REGION_DRAWN_ON = "region_chart", "region_drawn", "region_drawn_on"
DEMO_SENTENCE = (
    "**The bias demo** (after the Grad-CAM paper's nurse/doctor example): two “stripes or dots?” "
    "classifiers on one EfficientNet-Lite0 trunk. The biased one was trained where a yellow tag marked "
    "every “stripes” image, so it learned the tag, not the stripes (without the tag it is at chance); "
    "the unbiased one saw the tag at random on both classes. Grad-CAM shows where each one looks."
)

# Each section keeps its own model, image and class widgets (their keys carry the section), so
# each opens on its own default: the bias demo for comparison and region check, the cat and
# coffee collage for two classes, Chelsea for the sanity check.
DEFAULTS = {
    "models": {"image": DEMO_WITH, "left": "bias_demo_biased", "right": "bias_demo_unbiased"},
    "classes": {"image": "Cat and coffee (two classes)", "model": "efficientnet_lite0"},
    "region": {"image": DEMO_WITH, "model": "bias_demo_biased"},
    "sanity": {"image": "Chelsea the cat", "model": "efficientnet_lite0"},
}


@dataclass(frozen=True)
class ImageChoice:
    """The image to explain: its name, its file's bytes and their hash (the cache key)."""

    name: str
    data: bytes
    digest: str

    @property
    def is_demo(self) -> bool:
        return self.name in (DEMO_WITH, DEMO_WITHOUT)


@dataclass(frozen=True)
class ModelChoice:
    """A zoo model by name, or a custom one from its architecture and uploaded files."""

    name: str
    architecture: str = ""
    weights: bytes = b""
    labels: bytes = b""

    @cached_property  # hashing an uploaded weights file once per rerun, not per use
    def key(self) -> str:
        """What identifies the model in the caches."""
        if not self.architecture:
            return self.name
        return f"custom:{self.architecture}:{content_hash(self.weights)}:{content_hash(self.labels)}"


# ----------------------------------------------------------------------------- caches of this page


@st.cache_data(max_entries=2, show_spinner=False)
def demo_png(with_cue: bool) -> bytes:
    buffer = io.BytesIO()
    demo_image(with_cue=with_cue).save(buffer, format="PNG")
    return buffer.getvalue()


@st.cache_data(max_entries=32, show_spinner="Explaining with both models…")
def get_model_pair(
    keys: tuple[str, str],
    digest: str,
    class_name: str | None,
    methods: tuple[str, ...],
    _models: tuple[ZooModel, ZooModel],
    _image: Image.Image,
) -> tuple[Panel, Panel]:
    if class_name is None:  # the left model's top class, on the right too if it has one of that name
        left = explain_panel(_models[0], _image, methods)
        same = left.class_name if left.class_name in _models[1].labels else None
        return left, explain_panel(_models[1], _image, methods, same)
    return compare_models(*_models, _image, methods, class_name)


@st.cache_data(max_entries=32, show_spinner="Explaining both classes and their counterfactuals…")
def get_class_pair(
    key: str,
    digest: str,
    classes: tuple[str, str],
    methods: tuple[str, ...],
    _model: ZooModel,
    _image: Image.Image,
) -> tuple[Panel, Panel]:
    return compare_classes(_model, _image, classes, methods)


@st.cache_data(max_entries=32, show_spinner=False)
def get_top_two(key: str, digest: str, _model: ZooModel, _image: Image.Image) -> tuple[str, str]:
    """The model's two most probable classes on the image: the default pair to compare."""
    first, second = predict(_model, _image, k=2)
    return first.label, second.label


@st.cache_data(max_entries=32, show_spinner="Explaining…")
def get_panel(
    key: str,
    digest: str,
    class_name: str | None,
    methods: tuple[str, ...],
    _model: ZooModel,
    _image: Image.Image,
) -> Panel:
    return explain_panel(_model, _image, methods, class_name)


@st.cache_data(max_entries=16, show_spinner=False)
def get_sanity(key: str, digest: str, steps: int, _model: ZooModel, _image: Image.Image) -> SanityResult:
    x = _model.preprocess(_image)  # sanity_check takes the model's input; the zoo model knows its transform
    return sanity_check(
        _model.model,
        x,
        _model.default_layer,
        SANITY_METHODS,
        max_steps=steps,
        keep_maps=True,
        seeds=DEFAULT_SEEDS,
    )


# ----------------------------------------------------------------------------- sidebar


def sidebar_image(section: str, label: str = "Image") -> ImageChoice | None:
    samples = list_samples()
    options = [DEMO_WITH, DEMO_WITHOUT, *samples, UPLOAD]
    default = DEFAULTS[section]["image"]
    pick = st.sidebar.selectbox(label, options, index=options.index(default), key=f"image:{section}")
    if pick == UPLOAD:
        upload = st.sidebar.file_uploader(
            f"Your image (up to {IMAGE_LIMIT_MB} MB)",
            type=UPLOAD_TYPES,
            key=f"upload:{section}",
            max_upload_size=IMAGE_LIMIT_MB,
        )
        if upload is not None and upload.size > IMAGE_LIMIT_MB * 2**20:
            st.sidebar.error(
                f"{upload.name} is {upload.size / 2**20:.0f} MB; images must be {IMAGE_LIMIT_MB} MB or smaller."
            )
            return None
        if upload is None:
            return None
        data = upload.getvalue()
        return ImageChoice(upload.name, data, content_hash(data))
    data = demo_png(pick == DEMO_WITH) if pick in (DEMO_WITH, DEMO_WITHOUT) else samples[pick].read_bytes()
    return ImageChoice(pick, data, content_hash(data))


def sidebar_model(label: str, key: str, default: str) -> ModelChoice | None:
    """A zoo model, one of the models folder, or a custom one: architecture + weights + class names."""
    zoo = list_zoo()
    names = [zoo[0], *(FOLDER_PREFIX + name for name in list_folder_models()), *zoo[1:], CUSTOM]
    pick = st.sidebar.selectbox(
        label,
        names,
        index=names.index(default),
        key=f"model:{key}",
        format_func=lambda option: (
            f"{option.removeprefix(FOLDER_PREFIX)} (models folder)"
            if option.startswith(FOLDER_PREFIX)
            else display_name(option)
        ),
    )
    if pick != CUSTOM:
        return ModelChoice(pick)
    archs = architectures(include_timm=True)
    with st.sidebar.container(border=True):
        arch = st.selectbox(
            "Architecture (torchvision name, or timm/<name>; ignored for .pt2)",
            archs,
            index=archs.index("resnet18"),
            key=f"arch:{key}",
        )
        weights = st.file_uploader(
            f"Weights (.safetensors, a state_dict .pt/.pth, or an exported .pt2; up to {WEIGHTS_LIMIT_MB // 1024} GB)",
            type=["safetensors", "pt", "pth", "bin", "pt2"],
            key=f"weights:{key}",
            max_upload_size=WEIGHTS_LIMIT_MB,
        )
        labels = st.file_uploader(
            "Class names (.txt, one per line, or a JSON list)",
            type=["txt", "json"],
            key=f"labels:{key}",
            max_upload_size=1,
        )
    if weights is None or labels is None:
        return None
    return ModelChoice(CUSTOM, arch, weights.getvalue(), labels.getvalue())


def sidebar_one_model(section: str, header: str) -> tuple[ModelChoice | None, ImageChoice | None]:
    """The model and image pickers of a section that explains one model."""
    st.sidebar.header(header)
    return sidebar_model("Model", section, DEFAULTS[section]["model"]), sidebar_image(section)


def sidebar_class(label: str, names: list[str], default: str | None, key: str) -> str | None:
    """A class name picked from ``names`` (type to search); None means the model's top class."""
    options = [TOP_CLASS, *dict.fromkeys(names)]  # ordered and without repeats
    index = options.index(default) if default in options else 0
    pick = st.sidebar.selectbox(label, options, index=index, key=key)
    return None if pick == TOP_CLASS else pick


# ----------------------------------------------------------------------------- loading, with errors shown


def open_image(choice: ImageChoice | None) -> Image.Image | None:
    if choice is None:
        st.info("Upload an image in the sidebar, or pick the demo image or a sample.")
        return None
    try:
        return get_image(choice.digest, choice.data)
    except ExplainerInputError as error:
        st.error(f"Cannot use {choice.name}: {error}")
        return None


def open_model(choice: ModelChoice | None, side: str = "") -> ZooModel | None:
    where = f"{side}: " if side else ""
    if choice is None:
        st.info(f"{where}choose the custom model's architecture and upload its weights and class names.")
        return None
    try:
        if choice.architecture:
            return get_model(load_custom(choice.architecture, choice.weights, choice.labels), False)
        return get_model(choice.name, False)
    except ExplainerInputError as error:
        st.error(f"{where}{str(error).splitlines()[0]}")
        if choice.architecture:
            st.caption("Pick the architecture the weights were trained with, or other files, or a zoo model.")
        return None


def box_in_crop(zoo: ZooModel, image: Image.Image, box: Box) -> Box:
    """Where a box drawn on the image lands in the model's input (its resize policy's geometry)."""
    return zoo.preprocess.to_crop(box, image.size)


# ----------------------------------------------------------------------------- rendering


def picture(panel: Panel, method: str, counterfactual: bool = False, box: Box | None = None) -> np.ndarray:
    """A map as shown: CAMs over the crop, guided maps in the papers' display; the box outlined."""
    explanation = panel.counterfactual if counterfactual else panel.explanation
    image = render_picture(METHODS[method].kind, explanation.maps[method], np.asarray(panel.crop))
    return image if box is None else draw_box(image, box)


def render_input(panel: Panel, box: Box | None, caption: str) -> None:
    crop = np.asarray(panel.crop)
    st.image(crop if box is None else draw_box(crop, box), caption=caption, width="stretch")


def box_name(choice: ImageChoice) -> str:
    """What the demo's box is on this image: the tag, or the corner where the tag would be."""
    return "the tag's box" if choice.name == DEMO_WITH else "the tag's corner (no tag here)"


def render_model_side(
    panel: Panel, zoo: ZooModel, methods: tuple[str, ...], box: Box | None, where: str = ""
) -> None:
    st.markdown(f"**{display_name(panel.model)}**")
    for method in methods:
        st.image(
            picture(panel, method, box=box),
            caption=f"{method_title(method)} for “{panel.class_name}” (p = {percent(panel.probability)})",
            width="stretch",
        )
        if method == "gradcam" and box is not None:  # the number right under the map it measures
            st.metric(f"Grad-CAM energy in {where}", percent(gradcam_share(panel, box)))
    if panel.predicted != panel.class_index:
        st.caption(f"This model's top class here is “{zoo.labels[panel.predicted]}”.")


def gradcam_share(panel: Panel, box: Box) -> float:
    return box_shares({"gradcam": panel.explanation.maps["gradcam"]}, box)["gradcam"]


def box_area(box: Box, size: tuple[int, int]) -> float:
    (x0, y0, x1, y1), (width, height) = box, size
    return max(0, min(x1, width) - max(x0, 0)) * max(0, min(y1, height) - max(y0, 0)) / (width * height)


# ----------------------------------------------------------------------------- sections


def section_models() -> None:
    st.sidebar.header("Models")
    defaults = DEFAULTS["models"]
    choices = (
        sidebar_model("Left model", "left", defaults["left"]),
        sidebar_model("Right model", "right", defaults["right"]),
    )
    st.sidebar.header("Image and class")
    choice = sidebar_image("models")
    guided = st.sidebar.toggle("Also guided Grad-CAM", key="models_guided")
    models = (open_model(choices[0], "Left model"), open_model(choices[1], "Right model"))
    image = open_image(choice)
    if any(m is None for m in models) or image is None:
        return
    keys = (choices[0].key, choices[1].key)
    class_name = sidebar_shared_class(models, "stripes", key="class:models")
    if any(name.startswith("bias_demo") for name in keys):
        st.info(DEMO_SENTENCE)
    methods = ("gradcam", "guided_gradcam") if guided else ("gradcam",)
    try:
        panels = get_model_pair(keys, choice.digest, class_name, methods, models, image)
    except ExplainerInputError as error:
        st.error(str(error))
        return
    if panels[0].class_name != panels[1].class_name:
        st.info(
            f"{display_name(panels[1].model)} has no class “{panels[0].class_name}”, so each side explains "
            "its own top class."
        )
    boxes = [box_in_crop(zoo, image, cue_box()) if choice.is_demo else None for zoo in models]
    where = box_name(choice)
    columns = st.columns(3)
    with columns[0]:
        st.markdown("**Input**")
        caption = "the image as the left model sees it" + (f", {where} outlined" if boxes[0] else "")
        render_input(panels[0], boxes[0], caption)
    for column, panel, zoo, box in zip(columns[1:], panels, models, boxes, strict=True):
        with column:
            render_model_side(panel, zoo, methods, box, where)
    if boxes[0] is not None and boxes[1] is not None:
        shares = [percent(gradcam_share(p, b)) for p, b in zip(panels, boxes, strict=True)]
        area = percent(box_area(boxes[0], panels[0].crop.size))
        names = [display_name(p.model) for p in panels]
        st.markdown(
            f"**{names[0]}** puts **{shares[0]}** of its Grad-CAM energy for “{panels[0].class_name}” "
            f"in {where}, **{names[1]}** **{shares[1]}** for “{panels[1].class_name}”; the box covers {area} "
            "of the image (a map blind to it would put about that much there)."
        )


def sidebar_shared_class(models: tuple[ZooModel, ZooModel], default: str, key: str) -> str | None:
    """A class name both models have (None: the left model's top class).

    One key for every pair of models, so a choice survives a change of model while both still
    have the class; otherwise it falls back to ``default`` (if both have it) or the top class,
    instead of asking a model for a class it lacks.
    """
    right = set(models[1].labels)
    shared = [name for name in dict.fromkeys(models[0].labels) if name in right]
    options = [TOP_CLASS, *shared]
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in shared else TOP_CLASS
    pick = st.sidebar.selectbox(
        "Class (a name both models have)",
        options,
        key=key,
        help="Only the classes both models know are offered; with none in common, each side explains "
        "its own top class.",
    )
    return None if pick == TOP_CLASS else pick


def sidebar_label(label: str, labels: tuple[str, ...], default: str, fallback: int, key: str) -> str:
    index = labels.index(default) if default in labels else min(fallback, len(labels) - 1)
    return st.sidebar.selectbox(label, labels, index=index, key=key)


def section_classes() -> None:
    model_choice, choice = sidebar_one_model("classes", "Model and image")
    zoo, image = open_model(model_choice), open_image(choice)
    if zoo is None or image is None:
        return
    st.sidebar.header("Classes")
    # The keys carry the model and the image: a new image opens on its own top two classes, not
    # on the classes picked for the last one.
    first, second = get_top_two(model_choice.key, choice.digest, zoo, image)
    where = f"{model_choice.key}:{choice.digest}"
    classes = (
        sidebar_label("First class", zoo.labels, first, 0, f"class1:{where}"),
        sidebar_label("Second class", zoo.labels, second, 1, f"class2:{where}"),
    )
    st.markdown(
        "Grad-CAM shows what raises a class's score; its **counterfactual** map (negated gradients, "
        "Grad-CAM paper §5.2) what lowers it: regions whose removal would make the model more sure."
    )
    try:
        panels = get_class_pair(model_choice.key, choice.digest, classes, ("gradcam",), zoo, image)
    except ExplainerInputError as error:
        st.error(str(error))
        return
    for column, panel in zip(st.columns(2, gap="large"), panels, strict=True):
        with column:
            st.subheader(f"{panel.class_name} (p = {percent(panel.probability)})")
            left, right = st.columns(2)
            left.image(
                picture(panel, "gradcam"), caption=f"Grad-CAM: for “{panel.class_name}”", width="stretch"
            )
            right.image(
                picture(panel, "gradcam", counterfactual=True),
                caption=f"Counterfactual: against “{panel.class_name}”",
                width="stretch",
            )


def section_region() -> None:
    model_choice, choice = sidebar_one_model("region", "Model, image and class")
    zoo, image = open_model(model_choice), open_image(choice)
    if zoo is None or image is None:
        return
    class_name = sidebar_class("Class", list(zoo.labels), "stripes", key=f"class:region:{model_choice.key}")
    st.sidebar.header("Methods")
    methods = st.sidebar.multiselect(
        "Methods",
        list(REGION_METHODS),
        default=list(REGION_METHODS),
        format_func=method_title,
        key="region_methods",
    )
    if not methods:
        st.info("Choose at least one method in the sidebar.")
        return
    try:
        panel = get_panel(model_choice.key, choice.digest, class_name, tuple(methods), zoo, image)
    except ExplainerInputError as error:
        st.error(str(error))
        return
    size = panel.crop.size
    preset = drawn_box(size, choice.digest) or (
        box_in_crop(zoo, image, cue_box()) if choice.is_demo else None
    )
    left, right = st.columns([2, 3], gap="large")
    with left:
        box = region_sliders(size, preset)
        st.plotly_chart(
            region_figure(np.asarray(panel.crop), box),
            width="stretch",
            key=f"{REGION_CHART}:{choice.digest}",  # a new image starts with no selection
            on_select="rerun",
            selection_mode="box",
        )
        st.caption(
            f"Your box: x {box[0]}–{box[2]}, y {box[1]}–{box[3]} in the model's {size[0]}×{size[1]} crop. "
            "Drag on the picture to draw a new box, or move the sliders."
        )
    with right:
        render_shares(panel, methods, box)
    columns = st.columns(len(methods))
    for column, method in zip(columns, methods, strict=True):
        column.image(picture(panel, method, box=box), caption=method_title(method), width="stretch")


def drawn_box(size: tuple[int, int], digest: str) -> Box | None:
    """The last box drawn on the picture of this image, kept apart from the chart's own state: a
    new figure (the box outline moves) may reset the chart's selection, and the box must outlive
    that. A box drawn on another image is not carried over to this one."""
    state = st.session_state.get(f"{REGION_CHART}:{digest}") or {}
    box = selection_box(state.get("selection") or {}, size)
    if box is not None:
        st.session_state[REGION_DRAWN], st.session_state[REGION_DRAWN_ON] = box, digest
    if st.session_state.get(REGION_DRAWN_ON, digest) != digest:
        return None
    return st.session_state.get(REGION_DRAWN)


def region_sliders(size: tuple[int, int], preset: Box | None) -> Box:
    """The box from two range sliders, in pixels of the model's crop.

    The sliders' keys carry the preset (the tag's box, or a box drawn on the picture): a new
    preset gets fresh sliders on it, without writing to a widget's state.
    """
    width, height = size
    x0, y0, x1, y1 = preset or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    xs = st.slider(
        "Box: x from … to", 0, width, (max(0, x0), min(width, x1)), key=f"region_x:{width}:{preset}"
    )
    ys = st.slider(
        "Box: y from … to (0 is the top)",
        0,
        height,
        (max(0, y0), min(height, y1)),
        key=f"region_y:{height}:{preset}",
    )
    return (xs[0], ys[0], max(xs[1], xs[0] + 1), max(ys[1], ys[0] + 1))


def render_shares(panel: Panel, methods: list[str], box: Box) -> None:
    shares = box_shares({m: panel.explanation.maps[m] for m in methods}, box)
    area = box_area(box, panel.crop.size)
    st.markdown(
        f"Share of each map's energy inside the box, for “{panel.class_name}” on **{display_name(panel.model)}**. "
        f"The box covers **{percent(area)}** of the image: a map blind to it would put about that much there."
    )
    for column, method in zip(st.columns(len(methods)), methods, strict=True):
        column.metric(method_title(method), percent(shares[method]))
    st.plotly_chart(shares_figure(shares, area), width="stretch", key="region_shares")


def section_sanity() -> None:
    model_choice, choice = sidebar_one_model("sanity", "Model and image")
    steps = st.sidebar.slider(
        "Layers to re-initialise",
        2,
        8,
        4,
        key="sanity_steps",
        help=f"From the output back, one more layer (or block) at each step, repeated for {len(DEFAULT_SEEDS)} "
        "random seeds; each step costs one explanation per seed.",
    )
    zoo, image = open_model(model_choice), open_image(choice)
    if zoo is None or image is None:
        return
    st.markdown(
        "Adebayo et al. (2018) destroy the model from the top down, layer by layer, and ask whether the "
        "map changes. A map that explains the **model** must change; one that barely does mostly shows the "
        "**image**. As in the paper, each map after a step is compared with the original in four ways: "
        "Spearman rank correlation of the absolute and of the signed maps, structural similarity (SSIM) "
        "and the correlation of their edge histograms (HOG). 1 means unchanged, 0 unrelated."
    )
    with st.spinner(
        f"Re-initialising {steps} layers of {zoo.name} for {len(DEFAULT_SEEDS)} seeds, one explanation per step…"
    ):
        try:
            result = get_sanity(model_choice.key, choice.digest, steps, zoo, image)
        except ExplainerInputError as error:
            st.error(str(error))
            return
    verdicts = {method: judge(result, method, zoo.trained) for method in SANITY_METHODS}
    render_sanity_verdict(result, verdicts)
    render_sanity_table(result, verdicts)
    measure = st.radio(
        "Similarity shown in the chart",
        list(MEASURES),
        format_func=MEASURES.get,
        horizontal=True,
        key="sanity_measure",
    )
    st.plotly_chart(sanity_figure(result, measure), width="stretch", key="sanity_chart")
    render_sanity_maps(result, model_view(zoo, image), zoo.labels[result.target], measure)


SANITY_STATUS = {
    "changes": "changes with the model",
    "stays": "stays like the original",
    "mixed": "changes by some measures, not by others",
}


def render_sanity_verdict(result: SanityResult, verdicts: dict[str, SanityVerdict]) -> None:
    """One verdict over the whole cascade and the seeds, or why there is none."""
    unmeasurable = [
        f"{method_title(m)}: {v.reason}" for m, v in verdicts.items() if v.status == "cannot judge"
    ]
    if unmeasurable:
        st.info("Not measurable here. " + " ".join(unmeasurable))
        return
    grad, guided = verdicts["gradcam"], verdicts["guided_backprop"]
    measured = (
        f"Over {plural(len(result.steps), 'layer')} re-initialised from the top and {len(result.seeds)} seeds, "
        f"Grad-CAM's map **{SANITY_STATUS[grad.status]}** (mean {grad.evidence}); "
        f"guided backprop's **{SANITY_STATUS[guided.status]}** (mean {guided.evidence})."
    )
    if grad.status == "changes" and guided.status == "stays":
        st.success(
            f"{measured} As Adebayo et al. found: Grad-CAM depends on the model, guided backprop barely does."
        )
    else:
        st.warning(f"{measured} The two maps do not separate here as the paper found.")


def render_sanity_table(result: SanityResult, verdicts: dict[str, SanityVerdict]) -> None:
    """The four measures per method: the mean over the cascade and the seeds, and after the last step."""
    rows = []
    for method in SANITY_METHODS:
        for measure, title in MEASURES.items():
            rows.append(
                {
                    "method": method_title(method),
                    "measure": title,
                    "mean over the steps": round(result.overall(method, measure), 2),
                    "after the last step": round(result.curve(method, measure)[-1], 2),
                    "verdict": SANITY_STATUS.get(verdicts[method].status, verdicts[method].status),
                }
            )
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(
        f"Means over {len(result.seeds)} seeds. A map counts as changed when Spearman (absolute), SSIM and "
        f"HOG all average below {CHANGED_BELOW}; for Grad-CAM, whose map is never negative, the two "
        "Spearman values coincide."
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def render_sanity_maps(result: SanityResult, crop: np.ndarray, class_name: str, measure: str) -> None:
    names = ["original", *(f"after {name}" for name in result.step_names)]
    shown = st.multiselect(
        "Maps after the steps",
        range(len(names)),
        default=sorted({0, 1, len(names) - 1}),
        format_func=names.__getitem__,
        key=f"sanity_shown:{len(names)}",
    )
    st.caption(
        f"Maps for “{class_name}” (the original model's top class), kept for every step of the first seed; "
        f"{MEASURES[measure]} under each is the mean over the seeds."
    )
    for method in SANITY_METHODS:
        st.markdown(f"**{method_title(method)}**")
        columns = st.columns(max(4, len(shown)))
        for column, index in zip(columns, sorted(shown), strict=False):
            image = render_picture(METHODS[method].kind, result.maps[method][index], crop)
            value = "" if index == 0 else f" · {result.curve(method, measure)[index - 1]:.2f}"
            column.image(image, caption=f"{names[index]}{value}", width="stretch")


def main() -> None:
    st.set_page_config(page_title="CAM Explorer · Trust & bias", layout="wide")  # icon: app.py
    st.title("Trust & bias")
    st.caption(
        "Does the model look at the evidence, or at a shortcut? Compare two models or two classes, "
        "measure how much of a map falls in a region, and check that a map depends on the model at all."
    )
    st.sidebar.header("Section")
    section = st.sidebar.radio(
        "Section", list(SECTIONS), format_func=SECTIONS.get, key="section", label_visibility="collapsed"
    )
    {
        "models": section_models,
        "classes": section_classes,
        "region": section_region,
        "sanity": section_sanity,
    }[section]()


main()
