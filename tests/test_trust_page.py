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

from explainers.services.render import draw_box

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
    assert "**Bias demo · biased**" in text and "**Bias demo · unbiased**" in text  # display names
    assert "bias_demo" not in text
    assert any("bias demo" in box.value for box in page.info)
    biased, unbiased = (percent(m.value) for m in page.metric)
    assert [m.label for m in page.metric] == ["Grad-CAM energy in the tag's box"] * 2
    assert biased > 20 and biased > unbiased + 10
    assert not page.error


def captions(at: AppTest) -> list[str]:
    return [i.caption for image in at.get("image") for i in image.proto.imgs]


def test_switching_a_model_keeps_the_class_or_falls_back_without_an_error(page):
    """Issue 17: class "dots", then the left model becomes EfficientNet-Lite0: never "The model has
    no class named 'stripes'"; only classes both models have are offered."""
    page.sidebar.selectbox(key="class:models").set_value("dots").run()
    assert not page.exception and not page.error
    assert all("“dots”" in c for c in captions(page) if c.startswith("Grad-CAM"))
    page.sidebar.selectbox(key="model:right").set_value("bias_demo_biased").run()  # both have "dots"
    assert not page.exception and not page.error
    assert page.sidebar.selectbox(key="class:models").value == "dots"
    for side in ("left", "right"):
        page.sidebar.selectbox(key=f"model:{side}").set_value("efficientnet_lite0").run()
        assert not page.exception and not page.error
        options = page.sidebar.selectbox(key="class:models").options
        assert "stripes" not in options and "dots" not in options
        page.sidebar.selectbox(key=f"model:{side}").set_value(
            f"bias_demo_{'biased' if side == 'left' else 'unbiased'}"
        ).run()
        assert not page.exception and not page.error
    assert any("EfficientNet-Lite0" in o for o in page.sidebar.selectbox(key="model:left").options)
    page.sidebar.selectbox(key="class:models").set_value("stripes").run()
    assert not page.exception and not page.error and len(page.metric) == 2


def test_the_no_tag_image_does_not_speak_of_the_tag_box(page):
    page.sidebar.selectbox(key="image:models").set_value("Bias demo image (no tag)").run()
    assert not page.exception and not page.error
    words = [m.label for m in page.metric] + [m.value for m in page.markdown] + captions(page)
    assert not any("the tag's box" in w for w in words)
    assert [m.label for m in page.metric] == ["Grad-CAM energy in the tag's corner (no tag here)"] * 2
    page.sidebar.selectbox(key="image:models").set_value("Bias demo image (with tag)").run()
    assert not page.exception and [m.label for m in page.metric] == ["Grad-CAM energy in the tag's box"] * 2


def test_every_image_switch_in_compare_models_renders_without_an_error(page):
    box = page.sidebar.selectbox(key="image:models")
    for name in [o for o in box.options if o != "Upload…"]:
        page.sidebar.selectbox(key="image:models").set_value(name).run()
        assert not page.exception and not page.error, name
        assert len([c for c in captions(page) if c.startswith("Grad-CAM")]) == 2, name
    page.sidebar.selectbox(key="image:models").set_value("Bias demo image (with tag)").run()


def test_probabilities_read_in_percent(page):
    probabilities = [c.split("p = ")[1].rstrip(")") for c in captions(page) if "p = " in c]
    assert probabilities and all(p.endswith("%") for p in probabilities)


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
    assert "**ResNet-18 (custom)**" in [m.value for m in page.markdown]
    assert len(page.metric) == 2  # the tag's box, mapped into resnet18's resized crop
    upload_custom(page, buffer.getvalue(), b"stripes\ndots\nchecks\n")
    errors = [e.value for e in page.error]
    assert len(errors) == 1 and "has 2 outputs" in errors[0] and "lists 3 names" in errors[0]
    page.sidebar.selectbox(key="model:left").set_value("bias_demo_biased").run()
    assert not page.exception and not page.error and len(page.metric) == 2


def test_two_classes_show_grad_cam_and_counterfactual_maps(page):
    page.sidebar.radio(key="section").set_value("classes").run()
    assert not page.exception and not page.error
    # The collage opens on the model's two most probable classes: its cat and its espresso.
    assert sorted(h.value.split(" (")[0] for h in page.subheader) == ["Egyptian cat", "espresso"]
    assert all(h.value.endswith("%)") for h in page.subheader)
    shown = captions(page)
    assert sum("Counterfactual" in c for c in shown) == 2 and sum("Grad-CAM" in c for c in shown) == 2


def test_two_classes_follow_a_new_image(page):
    """Issue 17: the old image's classes ("Egyptian cat (p = 0.0 %)") must not stay on Grace Hopper."""
    page.sidebar.selectbox(key="image:classes").set_value("Grace Hopper").run()
    assert not page.exception and not page.error
    classes = [h.value.split(" (")[0] for h in page.subheader]
    assert len(classes) == 2 and "Egyptian cat" not in classes and "espresso" not in classes
    page.sidebar.selectbox(key="model:classes").set_value("bias_demo_biased").run()
    assert not page.exception and not page.error
    assert sorted(h.value.split(" (")[0] for h in page.subheader) == ["dots", "stripes"]
    page.sidebar.selectbox(key="model:classes").set_value("efficientnet_lite0").run()
    page.sidebar.selectbox(key="image:classes").set_value("Cat and coffee (two classes)").run()
    assert not page.exception and not page.error


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


def test_a_box_drawn_on_another_image_is_not_carried_over(page):
    page.session_state["region_drawn_on"] = "the digest of another image"
    page.run()
    assert not page.exception
    x, y = box_sliders(page)
    assert (x.value, y.value) == ((8, 56), (8, 56))  # back on the tag's box


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
