"""The Streamlit page, headless (streamlit.testing.v1.AppTest): it renders, reacts, and survives bad input.

AppTest gives no pixels, so these tests read captions, errors and widget values; the pictures
themselves are tested as plain functions in test_service.py.
"""

from __future__ import annotations

import io
import re
import struct
import urllib.error
import zlib
from pathlib import Path

import pytest
import torch
from conftest import run_page
from PIL import Image
from streamlit.testing.v1 import AppTest

import app_cache
import explainers.services.service
from app import RANDOM_WEIGHTS_BANNER
from explainers.services.service import default_methods, method_title

OTHER_CLASS = -1


def open_app() -> AppTest:
    return run_page("app.py", timeout=60)


def captions(at: AppTest) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def errors(at: AppTest) -> list[str]:
    return [error.value for error in at.error]


def status(at: AppTest) -> str:
    return next(c.value for c in at.caption if "last explanation" in c.value)


def shows_overlays(at: AppTest, label: str | None = None) -> bool:
    """Whether the page shows the input and one overlay per CAM method (of the given class)."""
    shown = captions(at)
    cams = [m for m in at.pills(key="methods").value if explainers.METHODS[m].kind == "cam"]
    wanted = [f"{method_title(m)} · {label or ''}" for m in cams]
    return any(" sees it (" in c for c in shown) and all(any(c.startswith(w) for c in shown) for w in wanted)


def by_label(widgets, label: str):
    """The one widget with this label: widgets whose options depend on the image or model
    carry that context in their key, so tests find them by label."""
    (widget,) = [w for w in widgets if w.label == label]
    return widget


def class_radio(at: AppTest):
    return by_label(at.radio, "Class to explain")


def layer_select(at: AppTest):
    return by_label(at.selectbox, "Target layer")


def pick_class(at: AppTest, position: int) -> str:
    """Choose the class radio's option at `position` (0 = predicted); return its class name.

    The radio's values are class indices and AppTest shows only their labels, so find the
    value whose label is at that position.
    """
    radio = class_radio(at)
    wanted = radio.options[position]

    def label(value: int) -> str | None:
        try:
            return radio.format_func(value)
        except KeyError:  # not one of the radio's classes
            return None

    value = next(v for v in [*range(1000), OTHER_CLASS] if label(v) == wanted)
    radio.set_value(value).run()
    return wanted.rsplit(" (", 1)[0]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb, caught before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# problem -> (file name, bytes, MIME type, words the error must contain)
BAD_FILES = {
    "corrupt": ("broken.png", png(Image.new("RGB", (64, 64), "red"))[:60], "image/png", "truncated"),
    "not an image": ("notes.png", b"This is a text file, not a picture.\n" * 20, "image/png", "not a PNG"),
    # Over the app's 40-megapixel limit, and over Pillow's own bomb limit.
    "decompression bomb": ("bomb.png", png_claiming(8_000, 8_000), "image/png", "40 megapixels"),
    "huge decompression bomb": ("huge.png", png_claiming(50_000, 50_000), "image/png", "too large"),
    "1x1 pixel": ("dot.png", png(Image.new("RGB", (1, 1), "blue")), "image/png", "1×1"),
}


def test_default_page_shows_a_sample_explained_at_once():
    at = open_app()
    assert not errors(at)
    assert class_radio(at).index == 0  # the predicted class
    assert "Chelsea the cat as efficientnet_lite0 sees it (224×224)" in captions(at)
    assert shows_overlays(at)
    assert set(at.pills(key="methods").value) == set(default_methods())
    assert any(c.startswith("Guided backprop · ") for c in captions(at)), "a row of guided maps"
    assert "on **CPU**" in status(at)
    assert at.get("plotly_chart"), "top-5 chart and heat map"
    assert len(at.get("download_button")) == 3


def test_layer_class_and_methods_can_be_changed():
    at = open_app()
    layer_select(at).set_value("_blocks.10").run()
    assert not at.exception and "layer _blocks.10" in status(at)

    label = pick_class(at, 1)
    assert not at.exception and shows_overlays(at, label)

    class_radio(at).set_value(OTHER_CLASS).run()
    by_label(at.selectbox, "Any class (type to search)").set_value(
        207
    ).run()  # ImageNet class 207: golden retriever
    assert not at.exception and shows_overlays(at, "golden retriever")

    at.toggle(key="counterfactual").set_value(True).run()
    assert all(c.endswith("counterfactual") for c in captions(at) if " sees it (" not in c)

    at.pills(key="methods").set_value(["hirescam", "xgradcam"]).run()
    assert not at.exception
    assert {c.split(" · ")[0] for c in captions(at)} >= {"HiResCAM", "XGrad-CAM"}

    # CAM applies at the final feature map, which the head pools; at _bn1 (before the head's
    # ReLU6) it does not: a warning, not a failure.
    at.pills(key="methods").set_value(["cam"]).run()
    layer_select(at).set_value("final").run()
    assert not at.exception and not at.warning and any(c.startswith("CAM · ") for c in captions(at))
    layer_select(at).set_value("_bn1").run()
    assert not at.exception and "CAM needs" in at.warning[0].value

    at.pills(key="methods").set_value([]).run()
    assert not at.exception and "Choose at least one method" in at.info[0].value


def test_model_can_be_changed_with_random_weights():
    at = open_app()
    assert not any(RANDOM_WEIGHTS_BANNER in w.value for w in at.warning)  # trained: no banner
    at.selectbox(key="model").set_value("resnet18").run()
    toggle = at.toggle(key="random_weights:resnet18")
    assert not toggle.value  # each model has its own switch, off until turned on
    toggle.set_value(True).run()
    assert not at.exception and not errors(at)
    assert "Chelsea the cat as resnet18 sees it (224×224)" in captions(at)
    assert layer_select(at).value == "final"
    assert shows_overlays(at)
    assert [w.value for w in at.warning if w.value == RANDOM_WEIGHTS_BANNER], "the main area says so"
    assert any("random weights, untrained" in c.value for c in at.sidebar.caption)
    # Back to the default model: trained again, the switch off, no banner.
    at.selectbox(key="model").set_value("efficientnet_lite0").run()
    assert not at.exception and not at.toggle(key="random_weights:efficientnet_lite0").value
    assert not any(RANDOM_WEIGHTS_BANNER in w.value for w in at.warning)


def test_unavailable_weights_get_a_message_and_the_page_recovers(monkeypatch):
    weights_file = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    if weights_file.exists():
        pytest.skip("resnet18's weights are cached on this machine")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    at = open_app()
    at.selectbox(key="model").set_value("resnet18").run()
    assert not at.exception
    assert any("not on this machine" in e and "efficientnet_lite0" in e for e in errors(at))
    assert not at.image
    at.selectbox(key="model").set_value("efficientnet_lite0").run()
    assert not at.exception and not errors(at) and shows_overlays(at)


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_bad_upload_shows_an_error_and_the_page_keeps_working(problem):
    name, data, mime, words = BAD_FILES[problem]
    at = open_app()
    at.file_uploader(key="upload").set_value((name, data, mime)).run()
    assert not at.exception
    assert len(errors(at)) == 1 and errors(at)[0].startswith(f"Cannot use {name}: ")
    assert words in errors(at)[0]
    assert "Traceback" not in errors(at)[0]
    assert not at.image
    at.file_uploader(key="upload").set_value(None).run()
    assert not at.exception and not errors(at) and shows_overlays(at)


def test_uploaded_image_is_explained_and_replaces_the_sample():
    at = open_app()
    picture = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    picture.paste((200, 30, 30, 255), (100, 50, 200, 150))
    at.file_uploader(key="upload").set_value(("square.png", png(picture), "image/png")).run()
    assert not at.exception and not errors(at) and shows_overlays(at)
    assert "square.png as efficientnet_lite0 sees it (224×224)" in captions(at)
    assert at.selectbox(key="sample").disabled


def test_display_changes_do_not_recompute(monkeypatch):
    app_cache.clear_caches()
    calls = []
    original = explainers.services.service.run_explanation

    def counting(*args, **kwargs):
        calls.append(args[2:])
        return original(*args, **kwargs)

    monkeypatch.setattr(explainers.services.service, "run_explanation", counting)
    at = open_app()
    assert len(calls) == 1
    at.slider(key="opacity").set_value(0.8).run()
    at.selectbox(key="colormap").set_value("viridis").run()
    at.selectbox(key="inspect").set_value("layercam").run()
    at.selectbox(key="inspect").set_value("guided_backprop").run()
    assert any("largest absolute gradient" in c.value for c in at.caption)
    assert len(calls) == 1 and not at.exception
    layer_select(at).set_value("_blocks.10").run()
    assert len(calls) == 2
    # Back to an earlier choice: served from the cache.
    layer_select(at).set_value("final").run()
    assert len(calls) == 2 and shows_overlays(at)


def test_two_sessions_do_not_interfere():
    first, second = open_app(), open_app()
    pick_class(first, 2)
    layer_select(first).set_value("_blocks.10").run()
    second.run()
    assert class_radio(second).index == 0 and class_radio(first).index == 2
    assert "layer final" in status(second) and "layer _blocks.10" in status(first)


# ------------------------------------------------------------------ Score-CAM, more maps, uploads


def expander_captions(at: AppTest, label: str) -> list[str]:
    (expander,) = [e for e in at.expander if e.label == label]
    return [caption for image in expander.get("image") for caption in image.captions]


def choose_scorecam(at: AppTest) -> None:
    at.pills(key="methods").set_value(["gradcam", "scorecam"]).run()
    assert not at.exception


def test_scorecam_says_its_cost_then_runs_with_progress():
    at = open_app()
    assert "scorecam" not in at.pills(key="methods").value, "too slow for the default page"
    choose_scorecam(at)
    assert at.toggle(key="scorecam_approximation").value  # a short approximation by default
    # At most 32 of the 1280 channels; channels blank on this image need no pass.
    assert any(
        re.fullmatch(r"Score-CAM will take \d+ forward passes \(batches of \d+\)\.", c.value)
        for c in at.caption
    )
    assert not any(c.startswith("Score-CAM · ") for c in captions(at)), "runs only when asked"
    at.button(key="scorecam_run").click().run()
    assert not at.exception and not errors(at)
    (caption,) = [c for c in captions(at) if c.startswith("Score-CAM · ")]
    assert "approximation (32 of 1280 channels)" in caption
    assert any(c.startswith("Grad-CAM · ") for c in captions(at)), "beside the other maps"
    at.slider(key="opacity").set_value(0.7).run()  # stored: a display change does not rerun it
    assert any(c.startswith("Score-CAM · ") for c in captions(at))


def test_stopping_scorecam_keeps_the_other_maps(monkeypatch):
    # A click on Stop interrupts the run at its next progress update; here the progress callback
    # answers False at its first report, as it does once the run's request is withdrawn.
    original = explainers.services.service.run_scorecam

    def stopped(*args, **kwargs):
        progress = args[-1]
        return original(*args[:-1], lambda done, total: progress(done, total) and False)

    monkeypatch.setattr(explainers.services.service, "run_scorecam", stopped)
    at = open_app()
    choose_scorecam(at)
    at.slider(key="scorecam_channels").set_value(16).run()
    at.button(key="scorecam_run").click().run()
    assert not at.exception and not errors(at)
    assert [i.value for i in at.info] == ["Score-CAM stopped."]
    assert any(c.startswith("Grad-CAM · ") for c in captions(at))
    assert not any(c.startswith("Score-CAM · ") for c in captions(at))
    assert at.button(key="scorecam_run"), "the page offers the run again"


def test_top5_classes_come_in_one_section_when_opened(monkeypatch):
    calls = []
    original = explainers.services.service.top_classes
    monkeypatch.setattr(
        explainers.services.service, "top_classes", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    app_cache.clear_caches()
    at = open_app()
    assert not calls and not expander_captions(at, "Top-5 classes"), "nothing computed while closed"
    at.session_state["top5_open"] = True
    at.run()
    assert not at.exception and len(calls) == 1
    shown = expander_captions(at, "Top-5 classes")
    radio_labels = [label.replace(" (", " · ").rstrip(")") for label in class_radio(at).options[:5]]
    assert shown == radio_labels


def test_layer_sweep_runs_shallow_to_deep():
    at = open_app()
    at.session_state["sweep_open"] = True
    at.run()
    at.selectbox(key="sweep_method").set_value("layercam")
    at.toggle(key="sweep_fuse").set_value(True).run()
    assert not at.exception and not errors(at)
    shown = expander_captions(at, "Layer sweep: coarse versus fine")
    layers, fused = shown[:-1], shown[-1]
    assert len(layers) >= 3 and fused == "fused (all layers)"
    sides = [int(c.rsplit(" · ", 1)[1].split("×")[0]) for c in layers]
    assert sides == sorted(sides, reverse=True) and sides[0] > sides[-1], "shallow (fine) to deep (coarse)"
    assert layers[-1].startswith("final feature map · 7×7")


def test_faithfulness_scores_under_each_map(monkeypatch):
    monkeypatch.setattr(explainers.services.service, "FAITHFULNESS_STEPS", 2)  # 3 points per curve: fast
    reported = []
    score = explainers.services.service.score_faithfulness

    def watched(*args, progress=None, **kwargs):
        def report(done: int, total: int) -> None:
            reported.append((done, total))
            progress(done, total)  # the page's progress bar

        return score(*args, progress=report, **kwargs)

    monkeypatch.setattr(explainers.services.service, "score_faithfulness", watched)
    at = open_app()
    assert not any("Avg drop" in c.value for c in at.caption), "off by default"
    at.toggle(key="faithfulness").set_value(True).run()
    assert not at.exception and not errors(at)
    scores = [c.value for c in at.caption if c.value.startswith("Avg drop")]
    cams = [m for m in at.pills(key="methods").value if explainers.METHODS[m].kind == "cam"]
    assert len(scores) == len(cams)
    assert all("deletion AUC" in s and "insertion AUC" in s and "conf. increase" in s for s in scores)
    assert all("(lower is better)" in s and "(higher is better)" in s for s in scores)
    assert any(e.label == "Deletion and insertion curves" for e in at.expander)
    assert reported[0][0] == 0 and reported[-1][0] == reported[-1][1] > 0  # the bar went to the end
    assert not at.get("progress")  # and is gone once the scores are shown


def resnet18_files(classes: int = 3) -> tuple[bytes, bytes]:
    from safetensors.torch import save
    from torchvision.models import resnet18

    torch.manual_seed(0)
    weights = save(resnet18(num_classes=classes).state_dict())
    return weights, "\n".join(["cat", "dog", "bird", "fish"][:classes]).encode()


def upload_model(at: AppTest, weights: bytes, labels: bytes) -> None:
    at.selectbox(key="model").set_value("Custom (upload)").run()
    assert not at.exception and any("Upload your model" in i.value for i in at.info)
    at.selectbox(key="custom_architecture").set_value("resnet18")
    at.file_uploader(key="custom_weights").set_value(
        ("model.safetensors", weights, "application/octet-stream")
    )
    at.file_uploader(key="custom_labels").set_value(("classes.txt", labels, "text/plain")).run()
    assert not at.exception


def test_custom_model_upload_is_explained():
    weights, labels = resnet18_files()
    at = open_app()
    upload_model(at, weights, labels)
    assert not errors(at)
    assert "Chelsea the cat as resnet18 (custom) sees it (224×224)" in captions(at)
    assert len(class_radio(at).options) == 3 + 1  # its three classes, then "another class…"
    assert shows_overlays(at)


@pytest.mark.parametrize("problem", ["class count", "not weights"])
def test_bad_custom_model_shows_an_error_and_the_page_keeps_working(problem):
    weights, labels = resnet18_files()
    if problem == "class count":
        labels = b"cat\ndog\nbird\nfish\n"
    else:
        weights = b"these are not weights" * 10
    at = open_app()
    upload_model(at, weights, labels)
    assert len(errors(at)) == 1 and "\n" not in errors(at)[0] and "Traceback" not in errors(at)[0]
    assert ("4 names" if problem == "class count" else "neither a safetensors") in errors(at)[0]
    at.selectbox(key="model").set_value("efficientnet_lite0").run()
    assert not at.exception and not errors(at) and shows_overlays(at)
