"""The Trust & bias page, headless: it opens on the bias demo, every section renders, bad uploads
get a clear error and the page recovers.

One AppTest runs through the sections in order (module scope): models stay cached between the
steps, which keeps the whole file near a minute on two CPU cores.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from conftest import run_page
from streamlit.testing.v1 import AppTest

from explainers.render import draw_box

CUSTOM = "Custom model (upload)…"


def percent(text: str) -> float:
    return float(text.rstrip("%"))


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.fixture(scope="module")
def page() -> AppTest:
    return run_page("app_pages/1_Trust.py")


def test_opens_on_the_bias_demo_with_the_biased_model_on_the_tag(page):
    assert page.sidebar.radio(key="section").value == "models"
    assert page.sidebar.selectbox(key="model:left").value == "bias_demo_biased"
    assert page.sidebar.selectbox(key="model:right").value == "bias_demo_unbiased"
    text = " ".join(m.value for m in page.markdown)
    assert "**bias_demo_biased**" in text and "**bias_demo_unbiased**" in text
    assert any("bias demo" in box.value for box in page.info)
    biased, unbiased = (percent(m.value) for m in page.metric)
    assert [m.label for m in page.metric] == ["Grad-CAM energy in the tag's box"] * 2
    assert biased > 20 and biased > unbiased + 10
    assert not page.error


def test_a_class_missing_from_one_model_is_named(page):
    page.sidebar.selectbox(key="model:right").set_value("efficientnet_lite0").run()
    assert not page.exception
    assert any("efficientnet_lite0" in e.value and "stripes" in e.value for e in page.error)
    page.sidebar.selectbox(key="model:right").set_value("bias_demo_unbiased").run()
    assert not page.exception and not page.error and len(page.metric) == 2


def test_a_bad_custom_model_gets_one_error_and_the_page_recovers(page):
    page.sidebar.selectbox(key="model:left").set_value(CUSTOM).run()
    assert not page.exception and any("upload its weights" in box.value for box in page.info)
    page.sidebar.file_uploader(key="weights:left").set_value(
        ("model.pt", b"\x00 random bytes", "application/octet-stream")
    )
    page.sidebar.file_uploader(key="labels:left").set_value(("labels.txt", b"stripes\ndots\n", "text/plain"))
    page.run()
    assert not page.exception
    errors = [e.value for e in page.error]
    assert len(errors) == 1 and errors[0].startswith("Left model:") and "\n" not in errors[0]
    assert "neither a safetensors file nor a PyTorch state_dict" in errors[0]
    page.sidebar.selectbox(key="model:left").set_value("bias_demo_biased").run()
    assert not page.exception and not page.error and len(page.metric) == 2


def upload_custom(at: AppTest, weights: bytes, labels: bytes) -> None:
    at.sidebar.selectbox(key="model:left").set_value(CUSTOM).run()
    at.sidebar.selectbox(key="arch:left").set_value("resnet18")
    at.sidebar.file_uploader(key="weights:left").set_value(("head.pt", weights, "application/octet-stream"))
    at.sidebar.file_uploader(key="labels:left").set_value(("labels.txt", labels, "text/plain"))
    at.run()


def test_a_custom_model_compares_with_the_demo_and_a_wrong_class_count_is_named(page):
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), buffer)
    upload_custom(page, buffer.getvalue(), b"stripes\ndots\n")
    assert not page.exception and not page.error
    assert "**resnet18 (custom)**" in [m.value for m in page.markdown]
    assert len(page.metric) == 2  # the tag's box, mapped into resnet18's resized crop
    upload_custom(page, buffer.getvalue(), b"stripes\ndots\nchecks\n")
    errors = [e.value for e in page.error]
    assert len(errors) == 1 and "has 2 outputs" in errors[0] and "lists 3 names" in errors[0]
    page.sidebar.selectbox(key="model:left").set_value("bias_demo_biased").run()
    assert not page.exception and not page.error and len(page.metric) == 2


def test_two_classes_show_grad_cam_and_counterfactual_maps(page):
    page.sidebar.radio(key="section").set_value("classes").run()
    assert not page.exception and not page.error
    assert [h.value.split(" (")[0] for h in page.subheader] == ["Egyptian cat", "espresso"]
    captions = [i.caption for image in page.get("image") for i in image.proto.imgs]
    assert sum("Counterfactual" in c for c in captions) == 2 and sum("Grad-CAM" in c for c in captions) == 2


def box_sliders(at: AppTest):
    x, y = (slider for slider in at.main.get("slider") if slider.label.startswith("Box:"))
    return x, y


def test_region_check_measures_the_box_the_user_marks(page):
    page.session_state["region_methods"] = ["gradcam", "guided_backprop"]  # fewer maps: faster
    page.sidebar.radio(key="section").set_value("region").run()
    assert not page.exception and not page.error
    x, y = box_sliders(page)
    assert (x.value, y.value) == ((8, 56), (8, 56))  # the tag's box is the preset
    assert len(page.get("plotly_chart")) == 2  # the picture to draw on, and the bar chart
    on_tag = percent(metrics(page)["Grad-CAM"])
    assert on_tag > 20
    x.set_value((0, 224))
    y.set_value((0, 224)).run()
    assert not page.exception
    assert percent(metrics(page)["Grad-CAM"]) == 100 and percent(metrics(page)["Guided backprop"]) == 100
    x, y = box_sliders(page)
    x.set_value((120, 200))
    y.set_value((120, 200)).run()
    assert percent(metrics(page)["Grad-CAM"]) < on_tag


def test_a_box_drawn_on_the_picture_becomes_the_sliders_preset(page):
    page.session_state["region_drawn"] = (100, 20, 180, 60)  # what a box selection leaves behind
    page.run()
    assert not page.exception
    x, y = box_sliders(page)
    assert (x.value, y.value) == ((100, 180), (20, 60))
    assert any("x 100–180, y 20–60" in c.value for c in page.caption)


def test_sanity_check_states_the_measured_result(page):
    page.session_state["sanity_steps"] = 2  # two re-initialised layers tell the story, faster
    page.sidebar.radio(key="section").set_value("sanity").run()
    assert not page.exception and not page.error
    verdicts = [box.value for box in (*page.success, *page.warning)]
    assert len(verdicts) == 1 and "Grad-CAM's map **changes with the model** (mean Spearman" in verdicts[0]
    assert "2 layers" in verdicts[0] and "3 seeds" in verdicts[0] and "SSIM" in verdicts[0]
    assert len(page.get("plotly_chart")) == 1
    table = page.dataframe[0].value
    assert set(table["measure"]) == {"Spearman ρ (absolute)", "Spearman ρ (signed)", "SSIM", "HOG similarity"}


def test_draw_box_outlines_without_touching_the_input():
    image = np.zeros((32, 32, 3), np.uint8)
    boxed = draw_box(image, (4, 4, 12, 12), thickness=1)
    assert not image.any()
    assert (boxed[4, 4:12] == (255, 0, 255)).all() and (boxed[11, 4:12] == (255, 0, 255)).all()
    assert not boxed[8, 8].any() and not boxed[20, 20].any()
