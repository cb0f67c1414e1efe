"""Plotly figures for the app: the top-5 bar chart and the hoverable heat map of one map."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from explainers.service import Prediction

# Plotly's names for the colour scales of explainers.render.COLORMAPS.
_PLOTLY_SCALES = {
    "jet": "Jet",
    "turbo": "Turbo",
    "inferno": "Inferno",
    "viridis": "Viridis",
    "magma": "Magma",
    "hot": "Hot",
}

HIGHLIGHT, MUTED = "#e4572e", "#8da0cb"


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
