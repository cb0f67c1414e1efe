"""The teaching tools as plain functions: image edits, the view's link, the view's HTML file."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
from PIL import Image

from explainers import service
from explainers.services.edits import EditError, ImageEdit, apply_edit, check_edit
from explainers.services.render import COLORMAPS, diverging, enlarge, sequential
from explainers.services.samples import list_samples
from explainers.services.view_export import Section, ViewReport, app_version, report_html
from explainers.services.view_link import PARAMS, ViewLink, parse_link

SAMPLES = list_samples()
MODELS = ["efficientnet_lite0", "resnet18"]
METHODS = service.method_options()


def picture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- edits


def test_fills_change_only_the_box():
    image = picture()
    box = (10, 5, 30, 25)
    inside = (slice(5, 25), slice(10, 30))
    for fill in ("grey", "mean", "blur"):
        edited = apply_edit(image, ImageEdit(box, fill))
        outside = np.ones(image.shape[:2], bool)
        outside[inside] = False
        assert np.array_equal(edited[outside], image[outside]), fill
        assert not np.array_equal(edited[inside], image[inside]), fill
    assert (apply_edit(image, ImageEdit(box, "grey"))[inside] == 128).all()
    mean = image.reshape(-1, 3).mean(0).round()
    assert (apply_edit(image, ImageEdit(box, "mean"))[inside] == mean).all()
    blurred = apply_edit(image, ImageEdit(box, "blur"))[inside].astype(float)
    assert blurred.std() < image[inside].astype(float).std() / 3, "detail removed"
    patched = apply_edit(image, ImageEdit(box, "patch", (25, 10)))
    assert np.array_equal(patched[inside], image[15:35, 35:55])
    assert np.array_equal(image, picture()), "the input is not touched"


@pytest.mark.parametrize(
    "edit, words",
    [
        (ImageEdit((10, 10, 10, 30)), "has no area"),
        (ImageEdit((30, 10, 20, 30)), "has no area"),
        (ImageEdit((50, 10, 70, 30)), "reaches outside the 60×40 image"),
        (ImageEdit((-5, 0, 10, 10)), "reaches outside"),
        (ImageEdit((10, 10, 20, 20), "pink"), "Unknown fill 'pink'"),
        (ImageEdit((10, 10, 20, 20), "patch"), "copied onto itself"),
        (ImageEdit((10, 10, 20, 20), "patch", (45, 0)), "patch's source, x 55–65"),
    ],
)
def test_bad_edits_get_one_clear_line(edit, words):
    with pytest.raises(EditError, match=re.escape(words)):
        check_edit(edit, (60, 40))
    with pytest.raises(EditError):
        apply_edit(picture(), edit)


def test_an_edit_reaches_the_model(lite0, chelsea):
    edit = ImageEdit((56, 56, 168, 168), "grey")
    plain = service.predict(lite0, chelsea)
    edited = service.predict(lite0, chelsea, edit=edit)
    assert plain != edited
    result = service.run_explanation(lite0, chelsea, "final", ["gradcam"], plain[0].index, edit=edit)
    assert result.edit == edit and (result.image[60:160, 60:160] == 128).all()
    assert np.isclose(
        result.target_probability, next(p.probability for p in edited if p.index == plain[0].index)
    )
    with pytest.raises(EditError, match="reaches outside the 224×224 image"):
        service.run_explanation(lite0, chelsea, "final", ["gradcam"], edit=ImageEdit((200, 0, 260, 10)))


# ----------------------------------------------------------------------------- the link


def parse(query: dict[str, str]):
    return parse_link(query, samples=SAMPLES, models=MODELS, methods=METHODS, colormaps=list(COLORMAPS))


def test_link_round_trip():
    link = ViewLink(
        sample="Two cats (two instances)",
        model="resnet18",
        random_weights=True,
        layer="layer3",
        target=281,
        methods=("gradcam", "gradcam++", "occlusion"),
        counterfactual=True,
        colormap="viridis",
        opacity=0.35,
        edit=ImageEdit((10, 20, 90, 120), "patch", (-5, 40)),
        occlusion=(48, 24, "blur"),
    )
    url = link.url("http://127.0.0.1:8600/Trust", SAMPLES)
    parts = urlsplit(url)
    assert parts.path == "/" and "gradcam%2B%2B" in parts.query  # '+' survives the URL
    query = dict(parse_qsl(parts.query))
    assert list(query) == [p for p in PARAMS if p in query] and query["sample"] == "two_cats"
    again, problems = parse(query)
    assert not problems and again == link


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("page", "settings", "“settings” is not a page"),
        ("sample", "dog", "“dog” is not a sample"),
        ("model", "resnet999", "“resnet999” is not a model here"),
        ("random", "maybe", "neither 1 nor 0"),
        ("class", "tabby", "“tabby” is not a class number"),
        ("class", "-3", "-3 is negative"),
        ("methods", "gradcam,magic", "“magic” is not a method"),
        ("methods", ",", "no method is named"),
        ("colormap", "pink", "“pink” is not a colormap"),
        ("opacity", "7", "7 is not between 0 and 1"),
        ("opacity", "lots", "“lots” is not a number"),
        ("box", "10,10,5,5", "has no area"),
        ("box", "1,2,3", "four whole numbers"),
        ("occlusion", "32,64,zero", "stride must be from 1 to the window"),
        ("occlusion", "200,16,zero", "window must be from 4 to 128 px"),  # beyond the slider
        ("occlusion", "2,1,zero", "window must be from 4 to 128 px"),
        ("zoom", "2", "this page reads no such parameter"),
    ],
)
def test_each_invalid_value_is_named_and_left_at_its_default(key, value, words):
    link, problems = parse({"model": "resnet18", key: value})
    assert list(problems) == [key]
    assert problems[key].startswith(f"Link parameter “{key}”:") and words in problems[key]
    assert link == ViewLink(model=None if key == "model" else "resnet18")


def test_a_fill_without_a_box_and_a_patch_without_an_offset():
    link, problems = parse({"fill": "blur"})
    assert link.edit is None and "needs a box" in problems["fill"]
    link, problems = parse({"box": "1,1,9,9", "fill": "patch"})
    assert link.edit == ImageEdit((1, 1, 9, 9), "grey") and "needs an offset" in problems["offset"]
    link, problems = parse({"box": "1,1,9,9", "embed": "true"})  # Streamlit's own parameter
    assert link.edit == ImageEdit((1, 1, 9, 9), "grey") and not problems


# ----------------------------------------------------------------------------- the file


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag in ("script", "link", "iframe"):
            self.links.append(tag)


def test_report_is_self_contained_and_escaped():
    report = ViewReport("CAM Explorer · <b>cat</b>", [("Image", "chelsea & co")], link="http://x/?a=1&b=2")
    section = report.section("Maps")
    section.lines.append("p < 0.5")
    section.table = [["rank", "class"], ["1", "tabby"]]
    section.pictures += [
        ("input", picture()),
        ("map", enlarge(diverging(np.arange(-3, 6).reshape(3, 3)), 30)),
    ]
    assert report.section("Maps") is section
    report.sections.append(Section("Empty"))
    text = report_html(report)
    parser = Images()
    parser.feed(text)
    assert len(parser.sources) == 2 and not parser.links
    for source, expected in zip(parser.sources, [(40, 60), (30, 30)], strict=True):
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.size[::-1] == expected
    assert "&lt;b&gt;cat&lt;/b&gt;" in text and "chelsea &amp; co" in text and "p &lt; 0.5" in text
    assert f"CAM Explorer {app_version()}" in text and app_version() == "0.1.0"
    assert "http://x/?a=1&amp;b=2" in text


def test_render_helpers():
    rgb = diverging(np.array([[-2.0, 0.0, 2.0]]))
    assert tuple(rgb[0, 1]) == (255, 255, 255) and rgb[0, 0, 2] > rgb[0, 0, 0] and rgb[0, 2, 0] > rgb[0, 2, 2]
    assert (diverging(np.zeros((2, 2))) == 255).all()
    assert sequential(np.ones((3, 3))).shape == (3, 3, 3)
    big = enlarge(sequential(np.arange(6.0).reshape(2, 3)), 90)
    assert big.shape == (60, 90, 3) and (big[:30, :30] == big[0, 0]).all()


def test_a_malformed_patch_offset_is_named_as_malformed_not_as_missing():
    link, problems = parse({"box": "10,20,90,120", "fill": "patch", "offset": "5;x"})
    assert link.edit.fill == "grey"
    assert "two whole numbers" in problems["offset"] and "filled grey" in problems["offset"]
    assert "needs an offset" not in problems["offset"]
    link, problems = parse({"box": "10,20,90,120", "fill": "patch"})
    assert link.edit.fill == "grey" and "needs an offset" in problems["offset"]
