"""Plotly figures for the trust view: deletion/insertion curves and the sanity-check lesson.

Pure figure builders (no Streamlit): the app passes them to `st.plotly_chart`.
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explainers.core import METHODS
from explainers.metrics import Curves
from explainers.sanity import SanityResult

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _title(method: str) -> str:
    method_object = METHODS.get(method)
    return (method_object.title or method) if method_object is not None else method


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
                    name=f"{_title(method)} ({kind} AUC {curve[f'{kind}_auc']:.3f})",
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


def sanity_figure(result: SanityResult) -> go.Figure:
    """Spearman correlation with the original map after each randomisation step, per method.

    The x axis reads from "original" through the steps (top layer first); the lesson is that a
    faithful map (Grad-CAM) falls at once while guided backprop stays near 1.
    """
    figure = go.Figure()
    steps = ["original", *result.step_names]
    for i, (method, values) in enumerate(result.correlations.items()):
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=[1.0, *values],
                mode="lines+markers",
                name=_title(method),
                line={"color": _PALETTE[i % len(_PALETTE)]},
                hovertemplate="after %{x}: ρ = %{y:.2f}<extra></extra>",
            )
        )
    figure.add_hline(y=0, line={"color": "grey", "width": 1, "dash": "dot"})
    figure.update_layout(
        xaxis_title="layers re-initialised, from the output back (cumulative)",
        yaxis_title="Spearman ρ with the original map",
        yaxis_range=[-1.05, 1.05],
        height=380,
        margin={"t": 20, "b": 40, "l": 50, "r": 10},
    )
    return figure
