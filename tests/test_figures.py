"""Plotly figure builders of the trust view (explainers.services.figures)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from explainers.methods.metrics import Curves
from explainers.methods.sanity import MEASURES, SanityResult
from explainers.services.figures import (
    curves_figure,
    region_figure,
    sanity_figure,
    selection_box,
    shares_figure,
)


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
        similarities={
            "gradcam": dict.fromkeys(MEASURES, [[0.2, 0.1]]),
            "not_registered": dict.fromkeys(MEASURES, [[0.99, 0.97]]),
        },
        target=3,
    )
    figure = sanity_figure(result)
    assert figure.layout.yaxis.title.text == "Spearman ρ (absolute) with the original map"
    assert [trace.name for trace in figure.data] == ["Grad-CAM", "not_registered"]
    assert list(figure.data[0].x) == ["original", "fc", "layer4.1"] and list(figure.data[0].y) == [
        1.0,
        0.2,
        0.1,
    ]


def test_selection_box_reads_the_last_box_clipped_and_ordered():
    selection = {"box": [{"x": [1, 2], "y": [1, 2]}, {"x": [50.4, -3.0], "y": [230.0, 10.6]}], "points": []}
    assert selection_box(selection, (224, 224)) == (0, 10, 51, 224)
    assert selection_box({"box": [], "points": []}, (224, 224)) is None
    assert selection_box({"box": [{"x": [300, 400], "y": [0, 10]}]}, (224, 224)) is None  # outside


def test_region_figure_is_selectable_and_outlines_the_box():
    import numpy as np

    figure = region_figure(np.zeros((224, 224, 3), np.uint8), (8, 8, 56, 56))
    assert figure.layout.dragmode == "select"
    assert [trace.type for trace in figure.data] == ["image", "scatter"]  # plotly selects only points
    assert (figure.layout.shapes[0].x0, figure.layout.shapes[0].y1) == (8, 56)


def test_shares_figure_has_one_bar_per_method():
    figure = shares_figure({"gradcam": 0.34, "guided_backprop": 0.055}, area=0.046)
    assert list(figure.data[0].x) == ["Grad-CAM", "Guided backprop"]
    assert list(figure.data[0].text) == ["34%", "5.5%"]


def test_the_box_area_label_sits_beside_the_bars_not_on_them():
    figure = shares_figure({"gradcam": 0.034, "guided_backprop": 0.9}, area=0.046)
    (label,) = figure.layout.annotations
    assert label.xref == "paper" and label.x >= 1 and label.xanchor == "left"  # in the right margin
    assert "4.6%" in label.text and figure.layout.margin.r >= 60
