"""The Explore page's teaching sections (UI only): how each map was made, editing the image and
watching the model, and the link and the file that reopen a view.

`explainers.methods.steps`, `explainers.services.edits`, `explainers.services.view_link` and `explainers.services.view_export`
compute; this module draws. The step view reads what the explanation already holds (no pass of
its own); the edit runs one explanation of the edited crop, cached like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import streamlit as st

from app_box import box_picker
from app_cache import get_explanation, get_predictions
from explainers import ExplainerInputError, service
from explainers.methods.steps import TOP_CHANNELS, MapSteps, score_masks
from explainers.services.edits import FILLS, EditError, ImageEdit, check_edit
from explainers.services.figures import sum_figure, weights_figure
from explainers.services.formats import percent, signed
from explainers.services.render import diverging, draw_box, enlarge, sequential
from explainers.services.service import ExplanationResult, FaithfulnessScore, OcclusionGrid, Prediction
from explainers.services.teaching import COUNTERFACTUAL, METHOD_TEXTS, STEPS, steps_summary
from explainers.services.view_export import Section, ViewReport, report_html
from explainers.services.view_link import ViewLink, parse_link

THUMB_SIDE = 160  # px: a 7×7 map drawn as squares of about 23 px
STEP_SIDE = 320

# st.session_state keys of the link: read once per session; what waits for the model and image
# (layer, class, box); the messages about invalid values, and the query they were about.
LINK_READ, LINK_PENDING, LINK_WARNINGS, LINK_FIRST = (
    "link_read",
    "link_pending",
    "link_warnings",
    "link_first",
)
EDIT_OPEN, EDIT_FILL, EDIT_DX, EDIT_DY, EDIT = "edit_open", "edit_fill", "edit_dx", "edit_dy", "edit"
OCCLUSION_WINDOW, OCCLUSION_STRIDE, OCCLUSION_BASELINE = (
    "occlusion_window",
    "occlusion_stride",
    "occlusion_baseline",
)
FILL_LABELS = {"grey": "grey", "blur": "blur", "mean": "mean colour", "patch": "a patch from elsewhere"}
UPLOAD_NOTE = (
    "Uploaded images and models cannot travel in a link: it opens on the sample and model named in it. "
    "To share a finding about your own image, download this view instead."
)


# ----------------------------------------------------------------------------- the link


def read_link(samples: dict, models: Sequence[str], methods: Sequence[str], colormaps: Sequence[str]) -> None:
    """Once per session, before the sidebar is drawn: set the widgets to what the URL's query
    says; keep what needs the model or image (layer, class, box) for later; note every invalid
    value (`link_warnings`)."""
    if st.session_state.get(LINK_READ):
        return
    st.session_state[LINK_READ] = True
    params = {key: st.query_params.get_all(key) for key in st.query_params}
    if not params:
        return
    link, problems = parse_link(params, samples=samples, models=models, methods=methods, colormaps=colormaps)
    state = st.session_state
    if link.sample is not None:
        state["sample"] = link.sample
    if link.model is not None:
        state["model"] = link.model
        state[f"random_weights:{link.model}"] = link.random_weights
    if link.methods is not None:
        state["methods"] = list(link.methods)
    state["counterfactual"] = link.counterfactual
    if link.colormap is not None:
        state["colormap"] = link.colormap
    if link.opacity is not None:
        state["opacity"] = link.opacity
    if link.occlusion is not None:
        state[OCCLUSION_WINDOW], state[OCCLUSION_STRIDE], state[OCCLUSION_BASELINE] = link.occlusion
    pending: dict[str, object] = {}
    if link.layer is not None:
        pending["layer"] = link.layer
    if link.target is not None:
        pending["class"] = link.target
    if link.edit is not None:
        state[EDIT_OPEN] = True
        state[EDIT_FILL] = link.edit.fill
        state[EDIT_DX], state[EDIT_DY] = link.edit.offset
        pending["box"] = link.edit.box
    state[LINK_PENDING] = pending
    state[LINK_WARNINGS] = list(problems.values())
    state[LINK_FIRST] = None  # set to the view's own query at the end of this first run


def take_pending(name: str) -> object | None:
    """A link value that waited for the model or image, once (None when there is none)."""
    return st.session_state.get(LINK_PENDING, {}).pop(name, None)


def link_warning(text: str) -> None:
    st.session_state.setdefault(LINK_WARNINGS, []).append(text)


def apply_link_layer(layer_names: Sequence[str], key: str, resolve: Callable[[str], str]) -> None:
    """Set the layer picker (its key ``key``) to the link's layer, if it names one of the model's."""
    layer = take_pending("layer")
    if layer is None:
        return
    try:
        name = resolve(str(layer))
    except ExplainerInputError:
        name = None
    if name in layer_names:
        st.session_state[key] = name
    else:
        link_warning(
            f"Link parameter “layer”: “{layer}” is not a layer of this model; its recommended layer is used."
        )


def show_link_warnings(slot, query: dict[str, str]) -> None:
    """The messages about the link's invalid values, until the view changes from what it opened on."""
    warnings = st.session_state.get(LINK_WARNINGS)
    if not warnings:
        return
    first = st.session_state.get(LINK_FIRST)
    if first is None:
        st.session_state[LINK_FIRST] = query
    elif first != query:  # the user has moved on: the link's problems are history
        st.session_state[LINK_WARNINGS] = []
        return
    with slot:
        for text in warnings:
            st.warning(text)


def write_link(link: ViewLink, samples: dict) -> str:
    """Keep the address bar on the view (a reload reopens it) and return the link to share."""
    query = link.query(samples)
    current = {key: st.query_params.get(key) for key in st.query_params}
    if current != query:
        st.query_params.from_dict(query)
    return link.url(st.context.url or "http://localhost:8501/", samples)


def render_share(link_url: str, uploaded: bool, report: Callable[[], str], file_name: str) -> None:
    st.subheader("Share this view")
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**Link to this view** (copy it with the button at its right)")
        st.code(link_url, language=None, wrap_lines=True)
        st.caption(
            ("This view is of an upload: " if uploaded else "")
            + UPLOAD_NOTE
            + " Opening the link recomputes the maps; Score-CAM still waits for its Run button."
        )
    with right:
        st.markdown("**Download this view**")
        st.download_button(
            "Download this view (HTML)",
            lambda: report().encode("utf-8"),
            file_name,
            "text/html",
            key="download_view",
            on_click="ignore",
        )
        st.caption(
            "One HTML file with the images inside, the settings, the predictions, the scores shown and "
            "the app's version. It opens offline in any browser: attach it to a report on a model's bias "
            "or on your own image."
        )


# ----------------------------------------------------------------------------- how a map was made


def render_steps(
    entries: list[tuple[str, ExplanationResult]], colormap: str, opacity: float, mean: Sequence[float]
) -> None:
    """One collapsed section per map shown; drawn when opened."""
    shown = [(m, r) for m, r in entries if m in r.steps or (m == "occlusion" and r.occlusion is not None)]
    if not shown:
        return
    st.subheader("How these maps were made")
    st.caption(
        "Open a method to follow its map step by step, from the layer's channels to the picture, with the "
        "numbers of this image. Everything shown comes from the passes that made the map above."
    )
    for method, result in shown:
        title = service.method_title(method)
        expander = st.expander(
            f"{title}: how this map was made", key=f"steps_open:{method}", on_change="rerun"
        )
        with expander:
            if not expander.open:  # drawn only once opened: the default page stays light
                continue
            if method == "occlusion":
                render_occlusion_steps(result, colormap, opacity, mean)
            else:
                render_method_steps(result, method, result.steps[method], colormap, opacity)


def _intro(method: str, counterfactual: bool) -> None:
    text = METHOD_TEXTS[method]
    st.markdown(text.intro)
    st.latex(text.formula)
    st.caption(f"Source: {text.source}.")
    if counterfactual:
        st.info(COUNTERFACTUAL)


def _heading(step: str, extra: str = "") -> None:
    text = STEPS[step]
    st.markdown(f"##### {text.heading}")
    st.latex(text.formula)
    st.caption(f"{text.text} {extra}".strip())


def _weight_words(steps: MapSteps) -> str:
    return "weight" if steps.weights is not None else "net term"


def render_method_steps(
    result: ExplanationResult, method: str, steps: MapSteps, colormap: str, opacity: float
) -> None:
    _intro(method, result.counterfactual)
    count = steps.record.layer_channels
    height, width = steps.weighted_sum.shape
    top = steps.top_channels()
    per_channel = steps.weights if steps.weights is not None else steps.contributions
    total = float(steps.magnitudes.sum())

    if method == "scorecam":
        _heading(
            "channels", "For Score-CAM: each top channel as the mask the model looked through, and its score."
        )
        masks = score_masks(steps, top)
        pictures = [np.uint8(result.image * mask[..., None]) for mask in masks]
        captions = [f"#{c} · p = {percent(float(steps.weights[c]))}" for c in top]
    else:
        _heading("channels")
        pictures = [enlarge(sequential(steps.channel_map(int(c))), THUMB_SIDE) for c in top]
        captions = [
            f"#{c} · {_weight_words(steps)} {float(per_channel[c]):+.3g} · {percent(steps.magnitudes[c] / total if total else 0)}"
            for c in top
        ]
    columns = st.columns(TOP_CHANNELS)
    for column, picture, caption in zip(columns, pictures, captions, strict=False):
        column.image(picture, caption=caption, width="stretch")
    what = "The input seen through the masks" if method == "scorecam" else "Channel activations A"
    st.caption(
        f"{what} of the top {len(top)} of {count} channels ({height}×{width} each). "
        f"**These {len(top)} carry {percent(steps.top_share())} of the total Σ|W·A|**; the other "
        f"{count - len(top)} share the rest."
    )

    _heading("weights", METHOD_TEXTS[method].weights)
    positive, negative = int((per_channel > 0).sum()), int((per_channel < 0).sum())
    st.plotly_chart(
        weights_figure(per_channel, top, _weight_words(steps)), width="stretch", key=f"steps_weights:{method}"
    )
    largest = int(np.argmax(per_channel))
    st.caption(
        f"{positive} channels above zero (red), {negative} below (blue), {count - positive - negative} at "
        f"zero; the largest is {float(per_channel[largest]):+.3g} (channel {largest}). Outlined: the "
        f"{len(top)} channels above."
    )

    _heading("channel")
    ranked = [int(c) for c in steps.top_channels(count) if steps.record.position(int(c)) is not None]
    rank = {c: i + 1 for i, c in enumerate(ranked)}
    channel = st.selectbox(
        "Channel",
        ranked,
        format_func=lambda c: f"#{c} (rank {rank[c]} by Σ|W·A|)",
        key=f"steps_channel:{method}",
        help="Ranked by how much the channel moves the sum, either way; type a number to find one.",
    )
    activation = steps.channel_map(channel)
    own, term = steps.own_step(channel), steps.contribution_map(channel)
    panels = [(enlarge(sequential(activation), STEP_SIDE), f"A of channel {channel} (its own scale)")]
    if own is not None:
        shown = sequential(own) if method == "scorecam" else diverging(own)
        panels.append((enlarge(shown, STEP_SIDE), METHOD_TEXTS[method].own))
    elif steps.record.gradients is None and method != "cam":
        st.caption("No gradient was computed for this map, so its gradient step is not shown.")
    if term is not None:
        panels.append(
            (enlarge(diverging(term), STEP_SIDE), "its term in the sum, W·A (red adds, blue takes away)")
        )
    for column, (picture, caption) in zip(st.columns(3), panels, strict=False):
        column.image(picture, caption=caption, width="stretch")
    gradient = steps.gradient_map(channel)
    numbers = [f"A ranges {float(activation.min()):.3g} to {float(activation.max()):.3g}"]
    if steps.weights is not None:
        numbers.append(f"its weight is {float(steps.weights[channel]):+.4g}")
    if gradient is not None and method == "gradcam":
        numbers.append(f"mean gradient {float(gradient.mean()):+.4g} = α")
    numbers.append(f"its term adds {float(steps.contributions[channel]):+.3g} to ΣS")
    st.caption("; ".join(numbers) + ".")
    if gradient is not None and uniform(gradient):
        st.caption(
            "The gradient is the same at every position: the classifier averages this map over the image "
            "(global average pooling) before its linear layer, so each position counts alike, α is that "
            "layer's weight divided by h·w, and Grad-CAM equals CAM here (Grad-CAM paper, section 3.1)."
        )

    _heading("sum")
    st.plotly_chart(sum_figure(steps.weighted_sum), width="stretch", key=f"steps_sum:{method}")
    negative_share = steps.negative_share()
    st.caption(
        f"**{percent(negative_share)} of the sum is negative** ({steps.negative_positions()} of "
        f"{height * width} positions): "
        + (
            "evidence against the class, which the ReLU removes. "
            if negative_share > 0
            else "no evidence against the class here, so the ReLU changes nothing (try a shallower layer). "
        )
        + f"S ranges {float(steps.weighted_sum.min()):.3g} to {float(steps.weighted_sum.max()):.3g}."
    )

    _heading("upsample")
    upsampled = steps.upsampled()
    left, right, _ = st.columns(3)
    left.image(
        enlarge(sequential(upsampled, "viridis"), STEP_SIDE),
        caption=f"ReLU(S) upsampled {height}×{width} → {upsampled.shape[0]}×{upsampled.shape[1]} (bilinear)",
        width="stretch",
    )
    right.image(
        service.render_panel(result, method, colormap, opacity) if method in result.maps else result.image,
        caption=f"scaled to [0, 1] and laid over the image: the {service.method_title(method)} map above",
        width="stretch",
    )
    st.caption(
        f"The largest value, {float(upsampled.max()):.3g}, becomes 1 and the smallest 0. "
        "Redoing these steps from the sum shown gives the map above to within 10⁻⁵ (tests/test_steps.py)."
    )


def uniform(values: np.ndarray) -> bool:
    """Whether a map is the same everywhere (to float32 rounding)."""
    spread = float(values.max() - values.min())
    return spread <= 1e-5 * max(float(np.abs(values).max()), 1e-30)


def render_occlusion_steps(
    result: ExplanationResult, colormap: str, opacity: float, mean: Sequence[float]
) -> None:
    grid: OcclusionGrid = result.occlusion
    _intro("occlusion", result.counterfactual)
    st.markdown("##### 1 · Cover one window at a time")
    st.latex(r"X_p = X\text{ with window }p\text{ replaced by the baseline}")
    st.caption(
        f"A {grid.window}×{grid.window} px window moves over the image {grid.stride} px at a time: "
        f"{len(grid.rows)}×{len(grid.cols)} = {grid.passes} positions, one forward pass each (batched), "
        f"filled with {grid.baseline}. Shown: the four windows whose cover lowers the class most."
    )
    columns = st.columns(4)
    for column, (left, top, drop) in zip(columns, grid.largest(4), strict=False):
        picture = draw_box(
            grid.covered(result.image, left, top, mean), (left, top, left + grid.window, top + grid.window)
        )
        column.image(
            picture,
            caption=f"x {left}–{left + grid.window}, y {top}–{top + grid.window}: p {percent(grid.base)} → "
            f"{percent(grid.base - drop)}",
            width="stretch",
        )
    st.markdown("##### 2 · The drop at every position")
    st.latex(r"d_p = p_c(X) - p_c(X_p)")
    st.plotly_chart(
        sum_figure(grid.drops, ("d at each window position", "ReLU(d)")),
        width="stretch",
        key="steps_sum:occlusion",
    )
    negative = float(-grid.drops[grid.drops < 0].sum())
    total = float(np.abs(grid.drops).sum())
    st.caption(
        f"Left: the drop d at each window position (red: covering lowers p({result.target_label}), blue: "
        f"raises it); right: the part the ReLU keeps. The largest drop is {float(grid.drops.max()):.3g}; "
        f"{percent(negative / total if total else 0)} of Σ|d| is negative."
    )
    st.markdown("##### 3 · Per pixel, laid over the image")
    st.latex(r"M_{ij}=\operatorname{mean}_{p\,\ni\,(i,j)} d_p,\qquad L=\mathrm{minmax}(\mathrm{ReLU}(M))")
    st.image(
        service.render_panel(result, "occlusion", colormap, opacity),
        caption="each pixel: the mean drop over the windows that cover it, rectified and scaled to [0, 1]",
        width=STEP_SIDE,
    )


# ----------------------------------------------------------------------------- edit the image


@dataclass(frozen=True)
class EditOutcome:
    """An edit and what the model made of the edited crop."""

    edit: ImageEdit
    predictions: list[Prediction]
    result: ExplanationResult


def default_offset(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Where a patch comes from by default: a box's width to the right (else left, below, above);
    where no whole box fits, as far as the image allows in the direction with the most room."""
    (x0, y0, x1, y1), (width, height) = box, size
    w, h = x1 - x0, y1 - y0
    rooms = {(1, 0): width - x1, (-1, 0): x0, (0, 1): height - y1, (0, -1): y0}
    for (dx, dy), room in rooms.items():
        if room >= (w if dx else h):
            return (dx * w, dy * h)
    (dx, dy), room = max(rooms.items(), key=lambda item: item[1])
    return (dx * room, dy * room)


def render_edit(
    request,
    image,
    result: ExplanationResult,
    methods: Sequence[str],
    predictions: list[Prediction],
    colormap: str,
    opacity: float,
) -> EditOutcome | None:
    """Box, fill, then both images, both top-5 lists and both sets of maps; None while closed."""
    st.subheader("Try it on the model")
    expander = st.expander("Edit the image, watch the model", key=EDIT_OPEN, on_change="rerun")
    with expander:
        if not expander.open:
            return None
        st.caption(
            "Cover a part of the image and see what the model makes of it: a counterfactual made by hand "
            "(cover the cat's face and watch its class fall). Draw a box on the picture or set it with the "
            "sliders, choose what fills it; the edited crop is explained with the same model, layer, "
            "class and methods."
        )
        crop = result.image
        height, width = crop.shape[:2]
        preset = _linked_box((width, height))
        left, right = st.columns([2, 3], gap="large")
        with left:
            box = box_picker(EDIT, crop, request.digest, preset)
            fill = st.radio(
                "Fill the box with",
                list(FILLS),
                format_func=FILL_LABELS.get,
                key=EDIT_FILL,
                horizontal=True,
            )
            offset = (0, 0)
            if fill == "patch":
                dx0, dy0 = default_offset(box, (width, height))
                st.session_state.setdefault(EDIT_DX, dx0)  # defaults in the state: a link may set them
                st.session_state.setdefault(EDIT_DY, dy0)
                a, b = st.columns(2)
                dx = a.number_input("Patch from: dx (px, + is right)", -width, width, key=EDIT_DX)
                dy = b.number_input("dy (px, + is down)", -height, height, key=EDIT_DY)
                offset = (int(dx), int(dy))
        edit = ImageEdit(box, fill, offset)
        try:
            check_edit(edit, (width, height))
            edited_predictions = get_predictions(
                request.digest, request.model, request.random_weights, image, edit
            )
            edited = get_explanation(
                request.digest,
                request.model,
                request.random_weights,
                request.layer,
                request.target,
                tuple(methods),
                request.counterfactual,
                image,
                edit,
            )
        except ExplainerInputError as error:
            right.error(f"Cannot apply this edit: {error}")
            return None
        with right:
            render_edit_predictions(result, edited, predictions, edited_predictions, edit)
        render_edit_maps(result, edited, colormap, opacity)
        return EditOutcome(edit, edited_predictions, edited)


def _linked_box(size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    box = take_pending("box")
    if box is None:
        return None
    try:
        check_edit(ImageEdit(box, "grey"), size)
    except EditError as error:
        link_warning(f"Link parameter “box”: {error} The default box is used.")
        return None
    return box


def top5_lines(predictions: list[Prediction], target: int, before: list[Prediction] | None = None) -> str:
    """A numbered markdown list; the explained class in bold; with ``before``, each class's change."""
    was = {p.index: p.probability for p in before or []}
    lines = []
    for rank, p in enumerate(predictions, 1):
        name = f"**{p.label}**" if p.index == target else p.label
        change = ""
        if before is not None:
            change = (
                f" ({(p.probability - was[p.index]) * 100:+.1f} pp)"
                if p.index in was
                else " (new in the top 5)"
            )
        lines.append(f"{rank}. {name}: {percent(p.probability)}{change}")
    return "\n".join(lines)


def render_edit_predictions(
    result: ExplanationResult,
    edited: ExplanationResult,
    predictions: list[Prediction],
    edited_predictions: list[Prediction],
    edit: ImageEdit,
) -> None:
    original, changed = st.columns(2)
    with original:
        st.markdown("**Original: top 5**")
        st.image(result.image, width="stretch")
        st.markdown(top5_lines(predictions, result.target))
    with changed:
        st.markdown("**Edited: top 5**")
        st.image(draw_box(edited.image, edit.box), caption=edit.describe(), width="stretch")
        st.markdown(top5_lines(edited_predictions, result.target, predictions))
    change = edited.target_probability - result.target_probability
    top_before, top_after = predictions[0], edited_predictions[0]
    verdict = (
        f"The top class changes: {top_before.label} → **{top_after.label}**."
        if top_after.index != top_before.index
        else f"The top class stays {top_before.label}."
    )
    st.metric(
        f"p({result.target_label}), the explained class",
        percent(edited.target_probability),
        f"{change * 100:+.1f} pp",
        help="Its probability on the edited image, and the change from the original.",
    )
    st.caption(verdict)


def render_edit_maps(
    result: ExplanationResult, edited: ExplanationResult, colormap: str, opacity: float
) -> None:
    methods = [m for m in result.maps if m in edited.maps]
    if not methods:
        return
    st.markdown("**Maps: the original (top row) and the edited image (bottom row)**")
    per_row = max(4, len(methods))
    for which, shown in (("original", result), ("edited", edited)):
        columns = st.columns(per_row)
        for column, method in zip(columns, methods, strict=False):
            column.image(
                service.render_panel(shown, method, colormap, opacity),
                caption=f"{service.method_title(method)} · {which} · p = {percent(shown.target_probability)}",
                width="stretch",
            )


# ----------------------------------------------------------------------------- download this view


@dataclass
class ViewParts:
    """What the page showed, gathered as it drew (for `view_report`)."""

    title: str
    settings: list[tuple[str, str]]
    predictions: list[Prediction]
    result: ExplanationResult | None
    input_view: np.ndarray
    input_caption: str
    colormap: str
    opacity: float
    scores: dict[str, FaithfulnessScore]
    extra: list[tuple[str, ExplanationResult]]  # (method, result) of Score-CAM and occlusion
    agreement: dict[str, float]  # occlusion's Spearman with each CAM
    edit: EditOutcome | None
    link: str | None
    uploaded: bool
    notes: list[str]


def view_report(parts: ViewParts) -> str:
    """The view as one self-contained HTML document (`explainers.services.view_export`)."""
    report = ViewReport(parts.title, parts.settings, link=None if parts.uploaded else parts.link)
    target = parts.result.target if parts.result else None
    table = [["rank", "class", "index", "probability"]]
    table += [
        [
            str(i),
            p.label + (" (explained)" if p.index == target else ""),
            str(p.index),
            percent(p.probability),
        ]
        for i, p in enumerate(parts.predictions, 1)
    ]
    report.section("Top-5 predictions").table = table
    maps = report.section("Maps")
    maps.pictures.append((parts.input_caption, parts.input_view))
    results = ([(m, parts.result) for m in parts.result.maps] if parts.result else []) + parts.extra
    for method, result in results:
        maps.pictures.append(
            (result.caption(method), service.render_panel(result, method, parts.colormap, parts.opacity))
        )
    maps.lines += parts.notes
    scores = report.section("Scores shown")
    scores.lines += [f"{service.method_title(m)}: {s.summary()}" for m, s in parts.scores.items()]
    if parts.agreement:
        scores.lines.append(
            "Spearman rank correlation of the occlusion map with each CAM on this image: "
            + ", ".join(f"{service.method_title(m)} {signed(r)}" for m, r in parts.agreement.items())
        )
    if not scores.lines:
        report.sections.remove(scores)
    made = Section("How the maps were made")
    for method, result in results:
        if method in result.steps:
            steps = result.steps[method]
            made.lines.append(f"{service.method_title(method)}: {steps_summary(steps)}")
            made.pictures.append(
                (
                    f"{service.method_title(method)}: S before the ReLU (blue < 0 < red)",
                    enlarge(diverging(steps.weighted_sum), 240),
                )
            )
    if made.lines:
        report.sections.append(made)
    if parts.edit is not None:
        outcome = parts.edit
        edited = report.section("Edited image")
        change = outcome.result.target_probability - parts.result.target_probability
        edited.lines.append(
            f"Edit: {outcome.edit.describe()}. p({parts.result.target_label}) {percent(parts.result.target_probability)}"
            f" → {percent(outcome.result.target_probability)} ({change * 100:+.1f} pp)."
        )
        edited.table = [["rank", "original", "edited"]] + [
            [str(i), f"{a.label} {percent(a.probability)}", f"{b.label} {percent(b.probability)}"]
            for i, (a, b) in enumerate(zip(parts.predictions, outcome.predictions, strict=False), 1)
        ]
        edited.pictures.append(
            ("the edited crop, box outlined", draw_box(outcome.result.image, outcome.edit.box))
        )
        for method in outcome.result.maps:
            edited.pictures.append(
                (
                    f"{outcome.result.caption(method)} · edited",
                    service.render_panel(outcome.result, method, parts.colormap, parts.opacity),
                )
            )
    return report_html(report)
