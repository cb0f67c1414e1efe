"""The box tool of the pages (UI only): drag a box on a picture of the model's crop, or set it with
two range sliders. The Trust page's region check and the Explore page's image edit use it.

Each use has its own key prefix: the chart is ``{prefix}_chart:{digest}`` (a new image starts
with no selection), the last drawn box ``{prefix}_drawn`` and the image it was drawn on
``{prefix}_drawn_on``, the sliders ``{prefix}_x:…`` and ``{prefix}_y:…``.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from explainers.services.figures import region_figure, selection_box

Box = tuple[int, int, int, int]


def drawn_box(prefix: str, size: tuple[int, int], digest: str) -> Box | None:
    """The last box drawn on the picture of this image, kept apart from the chart's own state: a
    new figure (the box outline moves) may reset the chart's selection, and the box must outlive
    that. A box drawn on another image is not carried over to this one."""
    state = st.session_state.get(f"{prefix}_chart:{digest}") or {}
    box = selection_box(state.get("selection") or {}, size)
    drawn, drawn_on = f"{prefix}_drawn", f"{prefix}_drawn_on"
    if box is not None:
        st.session_state[drawn], st.session_state[drawn_on] = box, digest
    if st.session_state.get(drawn_on, digest) != digest:
        return None
    return st.session_state.get(drawn)


def box_sliders(prefix: str, size: tuple[int, int], preset: Box | None) -> Box:
    """The box from two range sliders, in pixels of the model's crop.

    The sliders' keys carry the preset (a given box, or one drawn on the picture): a new preset
    gets fresh sliders on it, without writing to a widget's state.
    """
    width, height = size
    x0, y0, x1, y1 = preset or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    xs = st.slider(
        "Box: x from … to", 0, width, (max(0, x0), min(width, x1)), key=f"{prefix}_x:{width}:{preset}"
    )
    ys = st.slider(
        "Box: y from … to (0 is the top)",
        0,
        height,
        (max(0, y0), min(height, y1)),
        key=f"{prefix}_y:{height}:{preset}",
    )
    return (xs[0], ys[0], max(xs[1], xs[0] + 1), max(ys[1], ys[0] + 1))


def box_picker(prefix: str, image: np.ndarray, digest: str, preset: Box | None) -> Box:
    """Sliders, then the picture to drag a box on (the box outlined), then a caption; returns the box.

    Args:
        prefix: the key prefix of this use.
        image: the model's crop, (H, W, 3) uint8.
        digest: identifies the image (a box drawn on another image is not carried over).
        preset: the box to start from when none was drawn on this image.
    """
    height, width = image.shape[:2]
    box = box_sliders(prefix, (width, height), drawn_box(prefix, (width, height), digest) or preset)
    st.plotly_chart(
        region_figure(image, box),
        width="stretch",
        key=f"{prefix}_chart:{digest}",
        on_select="rerun",
        selection_mode="box",
    )
    st.caption(
        f"Your box: x {box[0]}–{box[2]}, y {box[1]}–{box[3]} in the model's {width}×{height} crop. "
        "Drag on the picture to draw a new box, or move the sliders."
    )
    return box
