"""Plotly figures for the app (pure builders, no Streamlit; pages pass them to `st.plotly_chart`):
the top-5 bar chart, the hoverable heat map of one map, and the trust view's deletion/insertion
curves, sanity-check chart and region check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explainers.methods.core import method_title
from explainers.methods.metrics import Curves
from explainers.methods.sanity import CHANGED_BELOW, MEASURES, SanityResult
from explainers.services.formats import percent
from explainers.services.service import Prediction

# Plotly's names for the colour scales of explainers.services.render.COLORMAPS.
_PLOTLY_SCALES = {
    "jet": "Jet",
    "turbo": "Turbo",
    "inferno": "Inferno",
    "viridis": "Viridis",
    "magma": "Magma",
    "hot": "Hot",
}

HIGHLIGHT, MUTED = "#e4572e", "#8da0cb"

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def curves_figure(curves: Mapping[str, Curves], class_name: str = "") -> go.Figure:
    """Deletion (left) and insertion (right) curves of several methods on one image.

    Args:
        curves: method -> `Curves` (e.g. `{m: s.curves for m, s in faithfulness(...).items()}`).
        class_name: shown in the y-axis title.

    Returns:
        A two-panel figure; the legend gives each method's AUC (deletion: lower is better,
        insertion: higher is better).
    """
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("Deletion (lower AUC is better)", "Insertion (higher AUC is better)")
    )
    for i, (method, curve) in enumerate(curves.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        fractions = curve["fractions"].tolist()
        for col, kind in ((1, "deletion"), (2, "insertion")):
            figure.add_trace(
                go.Scatter(
                    x=fractions,
                    y=curve[kind].tolist(),
                    mode="lines",
                    name=f"{method_title(method)} ({kind} AUC {curve[f'{kind}_auc']:.3f})",
                    legendgroup=method,
                    line={"color": colour, "dash": "solid" if kind == "deletion" else "dot"},
                    hovertemplate="%{x:.0%} of pixels: p = %{y:.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    label = f"p({class_name})" if class_name else "class probability"
    figure.update_xaxes(title_text="fraction of pixels", tickformat=".0%", range=[0, 1])
    figure.update_yaxes(title_text=label, range=[0, 1.02], row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(
        height=340, margin={"t": 40, "b": 40, "l": 50, "r": 10}, legend={"orientation": "h", "y": -0.25}
    )
    return figure


def sanity_figure(result: SanityResult, measure: str = "spearman_abs") -> go.Figure:
    """One similarity measure with the original map after each randomisation step, per method.

    The x axis reads from "original" through the steps (top layer first); the values are the
    mean over the result's seeds. The lesson is that a map that depends on the model
    (Grad-CAM) falls at once while guided backprop stays near 1.

    Args:
        result: a `sanity_check` result.
        measure: a key of `explainers.methods.sanity.MEASURES`.
    """
    figure = go.Figure()
    steps = ["original", *result.step_names]
    title = MEASURES[measure]
    for i, method in enumerate(result.methods):
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=[1.0, *result.curve(method, measure)],
                mode="lines+markers",
                name=method_title(method),
                line={"color": _PALETTE[i % len(_PALETTE)]},
                hovertemplate=f"after %{{x}}: {title} = %{{y:.2f}}<extra></extra>",
            )
        )
    figure.add_hline(y=0, line={"color": "grey", "width": 1, "dash": "dot"})
    figure.add_hline(
        y=CHANGED_BELOW,
        line={"color": "grey", "width": 1, "dash": "dash"},
        annotation_text="changed below this (mean over the steps)",
        annotation_position="bottom right",
    )
    figure.update_layout(
        xaxis_title="layers re-initialised, from the output back (cumulative)",
        yaxis_title=f"{title} with the original map",
        yaxis_range=[-1.05, 1.05],
        height=380,
        margin={"t": 20, "b": 40, "l": 50, "r": 10},
    )
    return figure


def shares_figure(shares: Mapping[str, float], area: float) -> go.Figure:
    """A bar per method: the share of its map's energy inside a box, with the box's own share of
    the image as a dotted line (what a map blind to the box would put there)."""
    figure = go.Figure(
        go.Bar(
            x=[method_title(method) for method in shares],
            y=list(shares.values()),
            text=[percent(value) for value in shares.values()],
            textposition="outside",
            cliponaxis=False,
            marker_color=_PALETTE[0],
            hovertemplate="%{x}: %{y:.1%} of the energy in the box<extra></extra>",
        )
    )
    figure.add_hline(y=area, line={"color": "grey", "dash": "dot"})
    # The line's label sits in the right margin, beside the plot, where no bar can be under it.
    figure.add_annotation(
        x=1,
        xref="paper",
        xanchor="left",
        y=area,
        yref="y",
        text=f" box area<br> ({percent(area)})",
        showarrow=False,
        align="left",
        font={"color": "grey"},
    )
    figure.update_layout(
        height=280,
        yaxis={"range": [0, 1.1], "tickformat": ".0%", "title": "energy in the box"},
        margin={"t": 20, "b": 30, "l": 50, "r": 80},
    )
    return figure


def region_figure(image: np.ndarray, box: Sequence[int] | None = None, grid: int = 4) -> go.Figure:
    """An RGB image (H, W, 3) on which a box can be drawn with plotly's box select.

    Plotly only offers box selection over selectable traces, so an invisible grid of points (one
    every ``grid`` pixels) lies over the image; the selection's range, in image pixels, is what
    counts (see `selection_box`). The current box is outlined.
    """
    height, width = image.shape[:2]
    xs, ys = np.meshgrid(np.arange(0, width, grid), np.arange(0, height, grid))
    figure = go.Figure(go.Image(z=image, hoverinfo="skip"))
    figure.add_trace(
        go.Scatter(
            x=xs.ravel(),
            y=ys.ravel(),
            mode="markers",
            marker={"opacity": 0, "size": grid},
            hovertemplate="x %{x}, y %{y}<extra></extra>",
            showlegend=False,
        )
    )
    if box is not None:
        x0, y0, x1, y1 = box
        figure.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": "#ff00ff", "width": 3})
    figure.update_layout(
        dragmode="select",
        height=420,
        margin={"t": 10, "b": 10, "l": 10, "r": 10},
        xaxis={"range": [0, width], "showticklabels": False, "showgrid": False, "zeroline": False},
        yaxis={
            "range": [height, 0],
            "scaleanchor": "x",
            "showticklabels": False,
            "showgrid": False,
            "zeroline": False,
        },
    )
    return figure


def selection_box(selection: Mapping, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The last box drawn on a `region_figure`, from Streamlit's plotly selection state.

    Args:
        selection: ``st.plotly_chart(...).selection`` (or its session-state value's "selection"):
            its "box" list holds {"x": [a, b], "y": [c, d], ...} in image pixels.
        size: (W, H) of the image; the box is clipped to it.

    Returns:
        (x0, y0, x1, y1) integers with x0 < x1, y0 < y1, or None without a usable box.
    """
    boxes = selection.get("box") or []
    if not boxes or len(boxes[-1].get("x", ())) != 2 or len(boxes[-1].get("y", ())) != 2:
        return None
    (x0, x1), (y0, y1) = sorted(boxes[-1]["x"]), sorted(boxes[-1]["y"])
    width, height = size
    x0, x1 = max(0, int(np.floor(x0))), min(width, int(np.ceil(x1)))
    y0, y1 = max(0, int(np.floor(y0))), min(height, int(np.ceil(y1)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def predictions_figure(predictions: Sequence[Prediction], highlight: int | None = None) -> go.Figure:
    """A horizontal bar chart of class probabilities, most probable on top; the explained
    class drawn in a stronger colour."""
    shown = list(reversed(predictions))  # plotly draws the first bar at the bottom
    figure = go.Figure(
        go.Bar(
            x=[p.probability for p in shown],
            y=[f"{p.label} " for p in shown],
            orientation="h",
            marker_color=[HIGHLIGHT if p.index == highlight else MUTED for p in shown],
            text=[f"{p.probability:.1%}" for p in shown],
            textposition="outside",  # inside, plotly rotates the text of thin bars
            textangle=0,
            cliponaxis=False,
            customdata=[p.index for p in shown],
            hovertemplate="%{y}(class %{customdata}): %{x:.2%}<extra></extra>",
        )
    )
    figure.update_layout(
        height=60 + 36 * len(shown),
        margin=dict(l=0, r=50, t=10, b=30),  # room for the label of a bar near 100%
        xaxis=dict(range=[0, 1], tickformat=".0%", title=None),
        yaxis=dict(automargin=True),
        showlegend=False,
    )
    return figure


def heatmap_figure(values: np.ndarray, colormap: str = "jet", title: str = "") -> go.Figure:
    """A (H, W) map as an image-shaped heat map whose hover shows each pixel's value."""
    figure = go.Figure(
        go.Heatmap(
            z=values,
            colorscale=_PLOTLY_SCALES.get(colormap, "Jet"),
            zmin=0.0,
            zmax=1.0,
            hovertemplate="x %{x}, y %{y}: %{z:.3f}<extra></extra>",
        )
    )
    height, width = values.shape
    figure.update_layout(
        title=dict(text=title, font=dict(size=14)),
        height=460,
        margin=dict(l=0, r=0, t=36 if title else 10, b=0),
        # Row 0 at the top and square pixels, as in the overlays.
        yaxis=dict(autorange="reversed", scaleanchor="x", constrain="domain", showticklabels=False),
        xaxis=dict(range=[-0.5, width - 0.5], constrain="domain", showticklabels=False),
    )
    return figure
