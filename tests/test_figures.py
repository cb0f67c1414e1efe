"""Plotly figure builders of the trust view (explainers.figures)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from explainers.figures import curves_figure, sanity_figure
from explainers.metrics import Curves
from explainers.sanity import SanityResult


def test_curves_figure_has_both_curves_per_method():
    f = torch.linspace(0, 1, 5)
    curve = Curves(fractions=f, deletion=1 - f, insertion=f, deletion_auc=0.5, insertion_auc=0.5)
    figure = curves_figure({"gradcam": curve, "gradcam++": curve}, class_name="tabby")
    assert isinstance(figure, go.Figure) and len(figure.data) == 4
    assert figure.data[0].name == "Grad-CAM (deletion AUC 0.500)"
    assert figure.data[3].name == "Grad-CAM++ (insertion AUC 0.500)"
    assert list(figure.data[1].y) == [0, 0.25, 0.5, 0.75, 1]
    assert figure.layout.yaxis.title.text == "p(tabby)"


def test_sanity_figure_starts_at_one():
    result = SanityResult(
        steps=(("fc",), ("layer4.1",)),
        correlations={"gradcam": [0.2, 0.1], "not_registered": [0.99, 0.97]},
        target=3,
    )
    figure = sanity_figure(result)
    assert [trace.name for trace in figure.data] == ["Grad-CAM", "not_registered"]
    assert list(figure.data[0].x) == ["original", "fc", "layer4.1"] and list(figure.data[0].y) == [
        1.0,
        0.2,
        0.1,
    ]
