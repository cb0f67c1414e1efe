"""The Explore page's teaching sections, headless (AppTest): the step view, the image edit,
occlusion, the link in the query string and the downloaded view."""

from __future__ import annotations

import base64
import io
import logging
import re
from html.parser import HTMLParser

import pytest
from conftest import ROOT, run_page
from PIL import Image
from streamlit.elements.lib import policies
from streamlit.testing.v1 import AppTest

import app_cache
import app_teach
import explainers.services.service


def open_app(query: dict[str, str] | None = None) -> AppTest:
    if query is None:
        return run_page("app.py", timeout=120)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params.update(query)
    at.run()
    assert not at.exception, at.exception
    return at


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def texts(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def by_label(widgets, label: str):
    (widget,) = [w for w in widgets if w.label == label]
    return widget


def status(at: AppTest) -> str:
    return next(c for c in texts(at) if "last explanation" in c)


# ----------------------------------------------------------------------------- how a map was made


def test_step_view_shows_channels_weights_and_the_sums():
    at = open_app()
    labels = [e.label for e in at.expander]
    assert [label for label in labels if "how this map was made" in label] == [
        "Grad-CAM: how this map was made",
        "Grad-CAM++: how this map was made",
        "LayerCAM: how this map was made",
    ]
    assert not any(c.startswith("#") for c in captions(at)), "nothing drawn while closed"
    at.session_state["steps_open:gradcam"] = True
    at.run()
    assert not at.exception
    thumbnails = [c for c in captions(at) if re.fullmatch(r"#\d+ · weight [+-][\d.e+-]+ · [\d.]+%", c)]
    assert len(thumbnails) == 8
    (share,) = [c for c in texts(at) if "These 8 carry" in c]
    assert re.search(r"These 8 carry \d+(\.\d+)?% of the total", share) and "1280 channels" in share
    charts = {chart.proto.id for chart in at.get("plotly_chart")}
    assert len(charts) >= 4  # top-5, the inspector's heat map, the weights, the two sums
    assert any("of the sum is negative" in c for c in texts(at))
    assert any("upsampled 7×7 → 224×224" in c for c in captions(at))
    assert any(r"\alpha_k^c" in latex.value for latex in at.latex), "the formula"
    assert any("arXiv:1610.02391" in c for c in texts(at)), "the paper"
    # At the final feature map the head averages each channel: the gradient is uniform, and the page says why.
    assert any("Grad-CAM equals CAM here" in c for c in texts(at))
    channel = by_label(at.selectbox, "Channel")
    first = channel.value
    channel.set_value(int(re.match(r"#(\d+)", channel.options[5]).group(1))).run()
    assert not at.exception and by_label(at.selectbox, "Channel").value != first
    assert any(c.startswith(f"A of channel {by_label(at.selectbox, 'Channel').value}") for c in captions(at))


def test_every_cam_has_its_own_steps():
    at = open_app()
    at.pills(key="methods").set_value(["gradcam++", "xgradcam", "layercam", "hirescam", "cam"]).run()
    for method in ("gradcam++", "xgradcam", "layercam", "hirescam", "cam"):
        at.session_state[f"steps_open:{method}"] = True
    at.run()
    assert not at.exception and not at.error
    shown = captions(at)
    assert any(c.startswith("α of each position") for c in shown)  # Grad-CAM++
    assert any(c.startswith("the chosen channel's activation share A/ΣA") for c in shown)  # XGrad-CAM
    assert any(c.startswith("ReLU(gradient) × activation") for c in shown)  # LayerCAM
    assert any(c.startswith("gradient × activation") for c in shown)  # HiResCAM
    assert len([c for c in shown if re.fullmatch(r"#\d+ · net term .*", c)]) == 16  # LayerCAM, HiResCAM
    assert sum("These 8 carry" in c for c in texts(at)) == 5
    assert sum("of the sum is negative" in c for c in texts(at)) == 5


# ----------------------------------------------------------------------------- edit the image, occlusion


def test_edit_shows_both_predictions_and_both_sets_of_maps():
    at = open_app()
    at.session_state["edit_open"] = True
    at.run()
    assert not at.exception and not at.error
    shown = captions(at)
    originals = [c for c in shown if " · original · p = " in c]
    edited = [c for c in shown if " · edited · p = " in c]
    assert len(originals) == len(edited) == 5  # three CAMs and two guided maps, each twice
    markdown = [m.value for m in at.markdown]
    assert "**Original: top 5**" in markdown and "**Edited: top 5**" in markdown
    lists = [m for m in markdown if m.startswith("1. ")]
    assert len(lists) == 2 and lists[0] != lists[1] and " pp)" in lists[1]
    (metric,) = at.metric
    assert metric.label.startswith("p(tiger cat)") and metric.delta.endswith(" pp")
    assert any(c.startswith("The top class changes: tiger cat → ") for c in texts(at)), "grey box on the face"
    assert "box=56%2C56%2C168%2C168" in at.code[0].value and "fill=grey" in at.code[0].value

    at.radio(key="edit_fill").set_value("patch").run()
    assert not at.exception and not at.error
    assert any(
        "patch copied from elsewhere" in c and "(from +56, +0 px away)" in c for c in shown + captions(at)
    )
    at.number_input(key="edit_dx").set_value(150).run()  # the source would leave the image
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("Cannot apply this edit: The patch's source") and "smaller offset" in error
    assert any(c.startswith("Grad-CAM · tiger cat") for c in captions(at)), "the page keeps working"


def test_occlusion_runs_with_progress_and_is_compared_with_each_cam():
    at = open_app()
    at.session_state["occlusion_window"] = 56  # 7 × 7 windows of 56 px, every 28 px: 49 passes
    at.pills(key="methods").set_value(["gradcam", "layercam", "occlusion"]).run()
    assert not at.exception and not at.error
    (caption,) = [c for c in captions(at) if c.startswith("Occlusion · ")]
    assert caption == "Occlusion · tiger cat · 37.2% · window 56 px, stride 28 px"
    (rho,) = [c for c in texts(at) if c.startswith("Spearman ρ with ")]
    assert re.match(r"Spearman ρ with Grad-CAM [+-]\d\.\d\d · LayerCAM [+-]\d\.\d\d \(rank correlation", rho)
    assert not at.get("progress"), "the bar is gone once the map is shown"
    assert "occlusion=56%2C28%2Czero" in at.code[0].value
    at.session_state["steps_open:occlusion"] = True
    at.run()
    assert not at.exception
    windows = [c for c in captions(at) if re.fullmatch(r"x \d+–\d+, y \d+–\d+: p [\d.]+% → [\d.]+%", c)]
    assert len(windows) == 4
    assert any("7×7 = 49 positions" in c for c in texts(at))


# ----------------------------------------------------------------------------- the link


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_link_opens_on_its_view(monkeypatch):
    # Streamlit logs (once per process) a widget that has a default and a value set in the session
    # state; the page puts its defaults in the state, so a link's values never meet one.
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    records = Records()
    logging.getLogger(policies.__name__).addHandler(records)
    query = {
        "page": "explore",
        "sample": "two_cats",
        "model": "resnet18",
        "random": "1",
        "layer": "layer3",
        "class": "281",
        "methods": "gradcam,layercam",
        "counterfactual": "1",
        "colormap": "viridis",
        "opacity": "0.3",
        "box": "20,30,120,130",
        "fill": "mean",
    }
    at = open_app(query)
    assert not at.warning or all("Random weights" in w.value for w in at.warning)
    assert at.selectbox(key="sample").value == "Two cats (two instances)"
    assert at.selectbox(key="model").value == "resnet18" and at.toggle(key="random_weights:resnet18").value
    assert by_label(at.selectbox, "Target layer").value == "layer3" and "layer layer3" in status(at)
    assert at.pills(key="methods").value == ["gradcam", "layercam"]
    assert at.toggle(key="counterfactual").value and at.selectbox(key="colormap").value == "viridis"
    assert at.slider(key="opacity").value == 0.3
    radio = by_label(at.radio, "Class to explain")
    shown = captions(at)
    assert any(c.startswith("Grad-CAM · tabby · ") and c.endswith("counterfactual") for c in shown)
    assert radio.value in (281, -1)
    assert [c for c in shown if " · edited · " in c] and any(
        "filled with the image's mean colour" in c for c in shown
    )
    assert at.session_state["edit_open"]
    # The address bar keeps the view: the same parameters come back (the link is the view).
    for key, value in query.items():
        assert at.query_params[key] in (value, [value]), key
    logging.getLogger(policies.__name__).removeHandler(records)
    assert not [m for m in records.messages if "default value" in m], records.messages


def test_invalid_link_values_are_named_and_the_page_keeps_working():
    query = {
        "model": "resnet999",
        "layer": "nowhere",
        "class": "5000",
        "methods": "gradcam,magic",
        "opacity": "7",
        "colormap": "pink",
        "box": "200,200,300,300",
        "zoom": "2",
    }
    at = open_app(query)
    warnings = [w.value for w in at.warning]
    for key in ("model", "methods", "opacity", "colormap", "zoom", "layer", "class", "box"):
        assert any(w.startswith(f"Link parameter “{key}”") for w in warnings), key
    assert any("5000 is out of range (the model has 1000 classes" in w for w in warnings)
    assert any("reaches outside the 224×224 image" in w for w in warnings)
    assert not at.error
    assert any(c.startswith("Grad-CAM · tiger cat") for c in captions(at)), "the defaults are used"
    assert at.query_params["model"] in ("efficientnet_lite0", ["efficientnet_lite0"])
    # The messages stay until the view changes.
    at.slider(key="opacity").set_value(0.6).run()
    assert not at.exception and not at.warning


def test_an_upload_cannot_travel_in_the_link():
    at = open_app()
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(buffer, format="PNG")
    at.file_uploader(key="upload").set_value(("red.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception
    link = at.code[0].value
    assert "sample=" not in link and "model=efficientnet_lite0" in link
    assert any(
        c.startswith("This view is of an upload: Uploaded images and models cannot travel") for c in texts(at)
    )


# ----------------------------------------------------------------------------- download this view


class Document(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []  # (src, alt)
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((attrs["src"], attrs.get("alt", "")))
        if tag in ("script", "link", "iframe", "object"):
            self.external.append(tag)


def test_download_this_view_writes_one_self_contained_file(monkeypatch):
    written = {}
    render_share = app_teach.render_share

    def keep(url, uploaded, report, file_name):
        written.update(url=url, report=report, file_name=file_name)
        render_share(url, uploaded, report, file_name)

    monkeypatch.setattr(app_teach, "render_share", keep)
    monkeypatch.setattr(explainers.services.service, "FAITHFULNESS_STEPS", 2)  # 3 points per curve: fast
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["edit_open"] = True
    at.session_state["faithfulness"] = True
    at.session_state["steps_open:gradcam"] = True
    try:
        at.run()
    finally:
        app_cache.SIZED_CACHES[
            "faithfulness"
        ].store.clear()  # the scores of the default view: leave none to other tests
    assert not at.exception
    (button,) = [b for b in at.get("download_button") if b.proto.label == "Download this view (HTML)"]
    assert written["file_name"] == "Chelsea_the_cat_efficientnet_lite0_class282_view.html"
    html = written["report"]()
    document = Document()
    document.feed(html)
    assert not document.external
    assert len(document.images) >= 1 + 5 + 3 + 1 + 5  # input, maps, three sums, edited crop and maps
    for source, alt in document.images:
        assert source.startswith("data:image/png;base64,"), alt
        assert Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).size[0] > 0
    for words in (
        "CAM Explorer 0.1.0",
        "Chelsea the cat (bundled sample)",
        "efficientnet_lite0",
        "tiger cat (282)",
        "Grad-CAM, Grad-CAM++, LayerCAM, Guided backprop, Guided Grad-CAM",
        "Avg drop",  # the faithfulness scores shown
        "of 1280 channels carry",
        "box x 56–168, y 56–168 filled with mid-grey",
        'Reopen this view: <a href="http://localhost:8501/?page=explore&amp;sample=chelsea',
    ):
        assert words in html, words


@pytest.mark.parametrize("page", ["lessons", "trust"])
def test_a_link_to_another_page_opens_it(page):
    at = open_app({"page": page})
    assert not at.warning and not at.error
    title = {"lessons": "Lessons", "trust": "Trust & bias"}[page]
    assert at.title[0].value == title


def test_scorecam_steps_show_the_masked_inputs_and_their_scores():
    at = open_app()
    at.pills(key="methods").set_value(["gradcam", "scorecam"]).run()
    at.slider(key="scorecam_channels").set_value(8).run()
    assert "Score-CAM: how this map was made" not in [e.label for e in at.expander], "not run yet"
    at.button(key="scorecam_run").click().run()
    assert not at.exception and not at.error
    # The run reruns the page, so the sections drawn before Score-CAM show it at once.
    assert "Score-CAM: how this map was made" in [e.label for e in at.expander]
    at.session_state["steps_open:scorecam"] = True
    at.run()
    masked = [c for c in captions(at) if re.fullmatch(r"#\d+ · p = [\d.]+%", c)]
    assert len(masked) == 8
    assert any(
        c.startswith("The input seen through the masks of the top 8 of 1280 channels") for c in texts(at)
    )
    assert any(c.startswith("the chosen channel as a mask") for c in captions(at))
    assert any("p_c\\big(X\\odot H^k\\big)" in latex.value for latex in at.latex)


def test_a_link_that_names_a_class_explains_that_class_alone(monkeypatch):
    # The page seeds a new image's top-1 explanation only when it will show it: a link's class is
    # explained, and the top 5 come from a plain prediction, not from an unshown explanation.
    app_cache.clear_caches()
    explained = []
    run = explainers.services.service.run_explanations

    def recording(zoo_model, requests, *args, **kwargs):
        explained.extend(request.target for request in requests)
        return run(zoo_model, requests, *args, **kwargs)

    monkeypatch.setattr(explainers.services.service, "run_explanations", recording)
    query = {"page": "explore", "sample": "two_cats", "model": "efficientnet_lite0", "class": "1"}
    at = open_app(query)
    assert by_label(at.radio, "Class to explain").value in (1, -1)
    assert explained == [1]
