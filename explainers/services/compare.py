"""Compare mode: two models on one image and class, or two classes on one model with their
counterfactual maps. Thin wrappers over `explain` that return what a side-by-side view shows.

    >>> left, right = compare_models(load_bias_demo("biased"), load_bias_demo("unbiased"),
    ...                              image, ["gradcam"], class_name="stripes")
    >>> cat, dog = compare_classes(zoo, image, ("tabby", "golden retriever"), ["gradcam"])
    >>> cat.counterfactual.maps["gradcam"]  # what would lower the "tabby" score
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from explainers.errors import TargetError, did_you_mean
from explainers.methods.core import Explanation, explain
from explainers.methods.multi import explain_classes

if TYPE_CHECKING:
    from models_zoo.zoo import ZooModel


@dataclass(frozen=True)
class Panel:
    """One side of a comparison.

    Attributes:
        model: the model's name.
        class_index, class_name: the explained class.
        probability: the model's softmax probability of that class on the image.
        explanation: the maps (`Explanation.maps`), logits and layer.
        counterfactual: the counterfactual maps of the same class (Grad-CAM paper, section 5.2:
            regions whose removal would raise the score), or None when not asked for.
        crop: the RGB image exactly as the model saw it, for overlays.
    """

    model: str
    class_index: int
    class_name: str
    probability: float
    explanation: Explanation
    counterfactual: Explanation | None
    crop: Image.Image

    @property
    def predicted(self) -> int:
        """The model's top-1 class on the image."""
        return int(self.explanation.logits.argmax())


def _normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def find_class(labels: Sequence[str], wanted: str | int) -> int:
    """A class index from an index or a name; names match ignoring case, spaces and underscores,
    and a string of digits that is no class name is taken as an index.

    Raises:
        TargetError: index out of range, or no class of that name (the message names close ones).
    """
    if isinstance(wanted, int):
        if not 0 <= wanted < len(labels):
            raise TargetError(f"Class {wanted} is out of range: the model has {len(labels)} classes.")
        return wanted
    key = _normalised(wanted)
    for index, label in enumerate(labels):
        if _normalised(label) == key:
            return index
    if key.isdigit():  # an index given as text, e.g. from a form or the command line
        return find_class(labels, int(key))
    hint = did_you_mean(wanted, labels, cutoff=0.6)
    raise TargetError(f"The model has no class named {wanted!r}.{hint}")


def explain_panel(
    zoo: ZooModel,
    image: Image.Image,
    methods: Sequence[str],
    target: str | int | None = None,
    layer: str | None = None,
    counterfactual: bool = False,
) -> Panel:
    """Explain one class (name or index; None: the top-1) on one model, optionally with its
    counterfactual maps.

    Raises:
        ExplainerInputError (and subclasses): as `explain`, and an unknown class name.
    """
    layer = layer or zoo.default_layer
    crop, x = zoo.preprocess.crop_and_tensor(image)
    index = None if target is None else find_class(zoo.labels, target)
    result = explain(zoo.model, x, layer, methods, target=index)
    opposite = (
        explain(zoo.model, x, layer, methods, target=result.target, counterfactual=True)
        if counterfactual
        else None
    )
    return _panel(zoo, result, opposite, crop)


def _panel(zoo: ZooModel, result: Explanation, opposite: Explanation | None, crop: Image.Image) -> Panel:
    return Panel(
        model=zoo.name,
        class_index=result.target,
        class_name=zoo.labels[result.target],
        probability=float(result.probabilities[result.target]),
        explanation=result,
        counterfactual=opposite,
        crop=crop,
    )


def compare_models(
    left: ZooModel,
    right: ZooModel,
    image: Image.Image,
    methods: Sequence[str],
    class_name: str | None = None,
    layers: tuple[str | None, str | None] = (None, None),
    counterfactual: bool = False,
) -> tuple[Panel, Panel]:
    """Two models, one image, one class matched by name across their label sets.

    Args:
        left, right: the models (e.g. a biased and an unbiased one).
        image: the RGB image; each model applies its own preprocessing.
        methods: names from `METHODS`, applied to both.
        class_name: the class to explain on both; None takes the left model's top-1 class.
        layers: target layer per model; None uses the model's default layer.
        counterfactual: also compute each side's counterfactual maps.

    Raises:
        TargetError: a model has no class of that name.
    """
    if class_name is None:
        with_left = explain_panel(left, image, methods, None, layers[0], counterfactual)
        class_name = with_left.class_name
    else:
        with_left = explain_panel(
            left, image, methods, find_class(left.labels, class_name), layers[0], counterfactual
        )
    try:
        index = find_class(right.labels, class_name)
    except TargetError as error:
        raise TargetError(f"{right.name}: {error}") from error
    return with_left, explain_panel(right, image, methods, index, layers[1], counterfactual)


def compare_classes(
    zoo: ZooModel,
    image: Image.Image,
    classes: tuple[str | int, str | int],
    methods: Sequence[str],
    layer: str | None = None,
    counterfactual: bool = True,
) -> tuple[Panel, Panel]:
    """Two classes on one model (say cat against dog), each with its counterfactual maps; both
    classes share one forward and one batched backward pass (one more pair for the counterfactuals).

    Raises:
        TargetError: an unknown class name or index.
    """
    layer = layer or zoo.default_layer
    targets = [find_class(zoo.labels, c) for c in classes]
    crop, x = zoo.preprocess.crop_and_tensor(image)
    results = explain_classes(zoo.model, x, layer, methods, targets)
    opposites = explain_classes(zoo.model, x, layer, methods, targets, True) if counterfactual else [None] * 2
    first, second = (_panel(zoo, r, o, crop) for r, o in zip(results, opposites, strict=True))
    return first, second
