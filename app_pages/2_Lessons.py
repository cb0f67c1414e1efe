"""Lessons: what the CAM literature teaches, each claim checked live on the model and image.

UI only: `explainers.services.lessons` computes every number when a lesson runs; this page draws them.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from app_cache import get_image, get_model
from explainers import ExplainerInputError
from explainers.services.images import content_hash
from explainers.services.lessons import LESSONS, TITLES, Lesson, teaching_order
from models_zoo import DEFAULT_MODEL, list_zoo
from models_zoo.names import display_name

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"]
PANELS_PER_ROW = 4
METRICS_PER_ROW = 3  # at 1400 px a tile label of ~40 characters still fits

# Readable when projected: larger captions, metric values and verdicts.
PROJECTOR_CSS = """
<style>
[data-testid="stImageCaption"], [data-testid="stCaptionContainer"] { font-size: 1.05rem; }
[data-testid="stMetricValue"] { font-size: 2.1rem; }
.lesson-claim { font-size: 1.45rem; line-height: 1.4; margin: 0.2rem 0 0.6rem 0; }
</style>
"""


@st.cache_data(max_entries=64, show_spinner=False)
def run_lesson(key: str, model: str, random_weights: bool, digest: str | None, _image) -> Lesson:
    return LESSONS[key](get_model(model, random_weights), _image)


def titles() -> dict[str, str]:
    """Lesson key -> numbered title, in teaching order."""
    return {key: f"{i}. {TITLES[key]}" for i, key in enumerate(teaching_order(), 1)}


def sidebar() -> tuple[str, str, bool, bytes | None, str | None]:
    """The lesson, model and optional own image chosen in the sidebar."""
    with st.sidebar:
        st.header("Lesson")
        options = titles()
        key = st.radio("Lesson", list(options), format_func=options.get, label_visibility="collapsed")
        st.header("Model")
        names = list_zoo()
        model = st.selectbox(
            "Classifier",
            names,
            index=names.index(DEFAULT_MODEL),
            format_func=display_name,
            key="lesson_model",
        )
        random_weights = st.toggle(
            "Random weights", key="lesson_random", help="Run every lesson on an untrained network."
        )
        st.header("Your own image")
        upload = st.file_uploader(
            "Optional: run the lesson on your image (the watermark lesson adds the watermark to it)",
            type=UPLOAD_TYPES,
            key="lesson_upload",
            max_upload_size=20,  # images stay small; the server's cap is the weights limit (1 GB)
        )
    if upload is None:
        return key, model, random_weights, None, None
    return key, model, random_weights, upload.getvalue(), upload.name


def render_lesson(lesson: Lesson) -> None:
    st.subheader(lesson.title)
    st.markdown(f'<p class="lesson-claim">{lesson.claim}</p>', unsafe_allow_html=True)
    st.caption(f"Source: {lesson.source}")
    for start in range(0, len(lesson.panels), PANELS_PER_ROW):
        columns = st.columns(PANELS_PER_ROW)
        for column, panel in zip(columns, lesson.panels[start : start + PANELS_PER_ROW], strict=False):
            column.image(panel.image, caption=panel.caption, width="stretch")
    # Only numbers that were measured: a lesson that cannot judge may leave some undefined.
    items = [name for name, value in lesson.measurements.items() if math.isfinite(value)]
    if items:
        st.markdown("**Measured now**")
        columns = st.columns(min(METRICS_PER_ROW, len(items)))
        for i, name in enumerate(items):
            # The same text as the verdict's: one rounding per unit (explainers.services.formats).
            columns[i % len(columns)].metric(name, lesson.display(name))
    if lesson.series:
        st.plotly_chart(series_figure(lesson), width="stretch")
    if lesson.holds is None:
        st.info(f"Cannot judge here. {lesson.verdict}")
    elif lesson.holds:
        st.success(f"Holds here. {lesson.verdict}")
    else:
        st.warning(f"Does not hold here. {lesson.verdict}")


def series_figure(lesson: Lesson) -> go.Figure:
    figure = go.Figure()
    for name, values in lesson.series.items():
        figure.add_trace(go.Scatter(x=lesson.series_x, y=values, mode="lines+markers", name=name))
    figure.update_layout(
        xaxis_title=lesson.axis_titles[0],
        yaxis_title=lesson.axis_titles[1],
        height=360,
        margin=dict(l=10, r=10, t=30, b=10),
        font=dict(size=15),
    )
    if lesson.series_unit == "%":  # shares read in % here as in the tiles
        figure.update_yaxes(tickformat=".1%", hoverformat=".2%")
    return figure


def main() -> None:
    st.set_page_config(page_title="CAM Explorer · Lessons", layout="wide")  # icon: app.py
    st.markdown(PROJECTOR_CSS, unsafe_allow_html=True)
    st.title("Lessons")
    st.caption(
        "Each lesson states a claim from the literature and tests it now, on this model and image. "
        "If the claim does not hold here, the lesson says so and by how much; if it cannot be tested "
        "here (an untrained model, a blank map, an image that does not fit), it says why."
    )
    key, model, random_weights, data, name = sidebar()
    zoo = None
    try:
        zoo = get_model(model, random_weights)
    except ExplainerInputError as error:
        st.error(str(error))
    if zoo is None:
        return
    if not zoo.trained:
        st.warning(
            f"**Random weights:** {display_name(model)} is untrained here, so no lesson can judge a claim about trained "
            "models on it; the pictures show what an untrained network does. Switch off “Random weights” "
            "in the sidebar to test the claims."
        )
    image, digest = None, None
    if data is not None:
        digest = content_hash(data)
        try:
            image = get_image(digest, data)
        except ExplainerInputError as error:
            st.error(f"Cannot use {name}: {error}")
            return
    with st.spinner(f"Running the lesson on {display_name(model)}…"):
        try:
            lesson = run_lesson(key, model, random_weights, digest, image)
        except ExplainerInputError as error:
            st.error(f"This lesson cannot run on {display_name(model)}: {error}")
            return
    render_lesson(lesson)


main()
