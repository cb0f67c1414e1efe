"""A view of the Explore page as a query string, and back: the link that reopens it.

    ?page=explore&sample=chelsea&model=resnet18&layer=layer3&class=281&methods=gradcam,layercam
     &counterfactual=0&colormap=jet&opacity=0.5&box=60,40,160,120&fill=grey

`parse_link` reads what a URL carries and checks each value it can check without a model (the
sample, the model's name, the methods, the colormap, the opacity, the box's shape); the page
checks the layer, the class and the box's fit once the model and image are known. Every invalid
value comes back as a message naming the parameter, and the view keeps its default there.
Uploaded images and models cannot travel in a link. Nothing here imports Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from explainers.methods.occlusion import BASELINES
from explainers.services.edits import FILLS, ImageEdit

# Page parameter -> the page's url path in the app's navigation ("" is the default page).
PAGES: dict[str, str] = {"explore": "", "trust": "Trust", "lessons": "Lessons"}
# Parameters Streamlit itself reads from a URL: not ours to judge.
STREAMLIT_PARAMS = ("embed", "embed_options")
PARAMS = (
    "page",
    "sample",
    "model",
    "random",
    "layer",
    "class",
    "methods",
    "counterfactual",
    "colormap",
    "opacity",
    "box",
    "fill",
    "offset",
    "occlusion",
)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Occlusion's window in pixels as the page's slider offers it: (smallest, largest, step).
OCCLUSION_WINDOW = (4, 128, 4)


@dataclass(frozen=True)
class ViewLink:
    """What a link says about the view; None (or the default) where it says nothing.

    Attributes:
        page: a key of `PAGES`.
        sample: the sample's display name (`explainers.services.samples.list_samples`).
        model: a model name as the page's model picker has it.
        random_weights: the model's random-weights switch.
        layer: a target layer name (checked by the page against the model).
        target: a class index (checked by the page against the model).
        methods: method names.
        counterfactual: the counterfactual switch.
        colormap, opacity: the display.
        edit: the box and its fill (the box's fit checked by the page against the crop).
        occlusion: (window, stride, baseline) of occlusion, window and stride in pixels.
    """

    page: str = "explore"
    sample: str | None = None
    model: str | None = None
    random_weights: bool = False
    layer: str | None = None
    target: int | None = None
    methods: tuple[str, ...] | None = None
    counterfactual: bool = False
    colormap: str | None = None
    opacity: float | None = None
    edit: ImageEdit | None = None
    occlusion: tuple[int, int, str] | None = None

    def query(self, samples: Mapping[str, Path] | None = None) -> dict[str, str]:
        """The query parameters, in `PARAMS` order, leaving out what is unset.

        Args:
            samples: display name -> file, to write a sample by its file's stem ("chelsea").
        """
        sample = self.sample
        if sample is not None and samples and sample in samples:
            sample = samples[sample].stem
        values = {
            "page": self.page,
            "sample": sample,
            "model": self.model,
            "random": "1" if self.random_weights else None,
            "layer": self.layer,
            "class": None if self.target is None else str(self.target),
            "methods": None if self.methods is None else ",".join(self.methods),
            "counterfactual": "1" if self.counterfactual else None,
            "colormap": self.colormap,
            "opacity": None if self.opacity is None else f"{self.opacity:g}",
        }
        if self.edit is not None:
            values["box"] = ",".join(str(v) for v in self.edit.box)
            values["fill"] = self.edit.fill
            if self.edit.fill == "patch":
                values["offset"] = ",".join(str(v) for v in self.edit.offset)
        if self.occlusion is not None:
            values["occlusion"] = ",".join(str(v) for v in self.occlusion)
        return {key: value for key, value in values.items() if value is not None}

    def url(self, base: str, samples: Mapping[str, Path] | None = None) -> str:
        """The link: ``base`` (the app's address, its page path replaced by this page's) and the query."""
        root = base.split("?", 1)[0].rstrip("/")
        for path in PAGES.values():
            if path and root.endswith("/" + path):
                root = root[: -len(path) - 1]
        path = PAGES.get(self.page, "")
        return f"{root}/{path}?{urlencode(self.query(samples))}"


def parse_link(
    params: Mapping[str, str | Sequence[str]],
    *,
    samples: Mapping[str, Path],
    models: Sequence[str],
    methods: Sequence[str],
    colormaps: Sequence[str],
) -> tuple[ViewLink, dict[str, str]]:
    """Read a URL's query parameters into a `ViewLink`, checking every value that needs no model.

    Args:
        params: parameter -> value (the last one counts when a parameter is repeated).
        samples: the samples offered, display name -> file (a link names one by either).
        models: the model names the page offers (uploaded models cannot be linked).
        methods: the registered methods; colormaps: the colormaps offered.

    Returns:
        The link, and parameter -> message for every value that was ignored (unknown parameter,
        invalid value); each message names the parameter and what is used instead.
    """
    values = {
        key: (value if isinstance(value, str) else (list(value) or [""])[-1]) for key, value in params.items()
    }
    found: dict[str, object] = {}
    problems: dict[str, str] = {}

    def problem(key: str, text: str) -> None:
        problems[key] = f"Link parameter “{key}”: {text}"

    for key, raw in values.items():
        if key in STREAMLIT_PARAMS:
            continue
        if key not in PARAMS:
            problem(key, f"this page reads no such parameter (it reads {', '.join(PARAMS)}); it is ignored.")
            continue
        text = raw.strip()
        try:
            found[key] = _READERS[key](text, samples, models, methods, colormaps)
        except ValueError as error:
            problem(key, f"{str(error)}; the default is used.")
    edit = None
    if "box" in found:
        fill = found.get("fill", "grey")
        offset = found.get("offset", (0, 0))
        if fill == "patch" and "offset" not in found:
            if "offset" in problems:  # given, but not two whole numbers: say so, not that it is missing
                problems["offset"] = problems["offset"].replace(
                    "the default is used.", "the box is filled grey."
                )
            else:
                problem(
                    "offset",
                    "a patch needs an offset (dx,dy: where the patch comes from); the box is filled grey.",
                )
            fill = "grey"
        edit = ImageEdit(found["box"], fill, offset)
    else:
        for key in ("fill", "offset"):
            if key in found:
                problem(key, "it needs a box (box=x0,y0,x1,y1); it is ignored.")
    link = ViewLink(
        page=found.get("page", "explore"),
        sample=found.get("sample"),
        model=found.get("model"),
        random_weights=found.get("random", False),
        layer=found.get("layer"),
        target=found.get("class"),
        methods=found.get("methods"),
        counterfactual=found.get("counterfactual", False),
        colormap=found.get("colormap"),
        opacity=found.get("opacity"),
        edit=edit,
        occlusion=found.get("occlusion"),
    )
    return link, problems


def _page(text, *_):
    if text.lower() not in PAGES:
        raise ValueError(f"“{text}” is not a page (choose {', '.join(PAGES)})")
    return text.lower()


def _sample(text, samples, *_):
    by_stem = {path.stem: name for name, path in samples.items()}
    if text in samples:
        return text
    if text in by_stem:
        return by_stem[text]
    raise ValueError(f"“{text}” is not a sample (choose {', '.join(by_stem)})")


def _model(text, samples, models, *_):
    if text not in models:
        raise ValueError(f"“{text}” is not a model here (uploaded models cannot travel in a link)")
    return text


def _flag(text, *_):
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"“{text}” is neither 1 nor 0")


def _layer(text, *_):
    if not text:
        raise ValueError("it is empty")
    return text


def _class(text, *_):
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"“{text}” is not a class number (e.g. class=281)") from None
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def _methods(text, samples, models, methods, *_):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in methods]
    if not names or unknown:
        what = f"“{', '.join(unknown)}” is not a method" if unknown else "no method is named"
        raise ValueError(f"{what} (choose from {', '.join(methods)})")
    return tuple(dict.fromkeys(names))


def _colormap(text, samples, models, methods, colormaps):
    if text not in colormaps:
        raise ValueError(f"“{text}” is not a colormap (choose {', '.join(colormaps)})")
    return text


def _opacity(text, *_):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"“{text}” is not a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{value:g} is not between 0 and 1")
    return value


def _integers(text: str, count: int, what: str) -> tuple[int, ...]:
    parts = text.split(",")
    try:
        numbers = tuple(int(part) for part in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != count:
        raise ValueError(f"“{text}” is not {what}")
    return numbers


def _box(text, *_):
    x0, y0, x1, y1 = _integers(text, 4, "four whole numbers x0,y0,x1,y1")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"the box {text} has no area (x1 must exceed x0, y1 exceed y0)")
    if min(x0, y0) < 0:
        raise ValueError(f"the box {text} starts outside the image (negative)")
    return (x0, y0, x1, y1)


def _fill(text, *_):
    if text not in FILLS:
        raise ValueError(f"“{text}” is not a fill (choose {', '.join(FILLS)})")
    return text


def _offset(text, *_):
    return _integers(text, 2, "two whole numbers dx,dy")


def _occlusion(text, *_):
    parts = text.split(",")
    if len(parts) != 3 or parts[2] not in BASELINES:
        raise ValueError(
            f"“{text}” is not window,stride,baseline (e.g. 32,16,zero; baseline {', '.join(BASELINES)})"
        )
    window, stride = _integers(",".join(parts[:2]), 2, "a window and a stride in pixels")
    low, high, _ = OCCLUSION_WINDOW
    if not low <= window <= high:
        raise ValueError(f"“{text}”: the window must be from {low} to {high} px")
    if not 1 <= stride <= window:
        raise ValueError(f"“{text}”: the stride must be from 1 to the window")
    return (window, stride, parts[2])


_READERS = {
    "page": _page,
    "sample": _sample,
    "model": _model,
    "random": _flag,
    "layer": _layer,
    "class": _class,
    "methods": _methods,
    "counterfactual": _flag,
    "colormap": _colormap,
    "opacity": _opacity,
    "box": _box,
    "fill": _fill,
    "offset": _offset,
    "occlusion": _occlusion,
}
