"""The models folder: your own classifiers, each a weights file plus a small model card.

The folder is ``--models-dir`` on the command line, else the environment variable
``CAM_MODELS_DIR``, else ``~/.cam-explorer/models``. Each card (``NAME.json``, or ``NAME.yaml``
when PyYAML is installed) at the top of the folder is one model, called NAME in the app's
Classifier picker and by ``--model NAME`` on the command line::

    {
      "architecture": "resnet18",              # torchvision name, "timm/<name>"; omit for .pt2
      "weights": "nurse_doctor.safetensors",   # relative to the card
      "classes": ["nurse", "doctor"],          # or a file: "classes.txt"
      "preprocessing": {"size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
      "default_layer": "layer4"                # optional
    }

Preprocessing keys (each optional; the architecture's own values fill the rest): size, resize,
mean, std, channels (1 for grayscale), policy ("crop" or "squash"), interpolation. A card that is
wrong in any way gets one line naming the card and what to change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models_zoo.custom import CustomModelError, load_custom_model
from models_zoo.errors import did_you_mean
from models_zoo.zoo import REGISTRY, ZooModel

ENV = "CAM_MODELS_DIR"
DEFAULT_DIR = Path("~/.cam-explorer/models")
CARD_SUFFIXES = (".json", ".yaml", ".yml")
KEYS = {"architecture", "weights", "classes", "preprocessing", "default_layer", "description", "name"}
REQUIRED = ("weights", "classes")


class CardError(CustomModelError):
    """A model card is missing, unreadable, or names something wrong."""


@dataclass(frozen=True)
class Card:
    """A parsed model card; paths are resolved against the card's folder."""

    name: str
    path: Path
    architecture: str | None
    weights: Path
    classes: list[str] | Path
    preprocessing: dict[str, Any] = field(default_factory=dict)
    default_layer: str | None = None
    description: str = ""


def models_dir(folder: str | os.PathLike | None = None) -> Path:
    """The models folder: `folder` if given, else $CAM_MODELS_DIR, else ~/.cam-explorer/models."""
    return Path(folder or os.environ.get(ENV) or DEFAULT_DIR).expanduser()


def _cards(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    cards: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in CARD_SUFFIXES and path.is_file() and not path.name.startswith("."):
            cards.setdefault(path.stem, path)  # NAME.json before NAME.yaml
    return cards


def list_folder_models(folder: str | os.PathLike | None = None) -> list[str]:
    """Names of the models in the folder (one per card), sorted; none when the folder is missing."""
    return list(_cards(models_dir(folder)))


def card_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The card of model `name`.

    Raises:
        CardError: no such model in the folder (close matches named).
    """
    directory = models_dir(folder)
    cards = _cards(directory)
    if name not in cards:
        hint = did_you_mean(name, cards)
        raise CardError(f"No model {name!r} in the models folder {directory}.{hint}")
    return cards[name]


def read_card(path: str | os.PathLike) -> Card:
    """Parse and check a model card (JSON, or YAML with PyYAML); nothing is loaded yet.

    Raises:
        CardError: unreadable, not a mapping, unknown or missing keys, wrong types, or a name
            taken by a built-in model.
    """
    path = Path(path)
    where = f"Model card {path.name}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CardError(f"{where}: cannot be read ({getattr(error, 'strerror', None) or error}).") from error
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CardError(f"{where}: not valid JSON ({error}).") from error
    else:
        try:
            import yaml
        except ImportError as error:
            raise CardError(
                f"{where}: YAML cards need PyYAML (pip install pyyaml); or write it as JSON."
            ) from error
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            first = str(error).splitlines()[0]
            raise CardError(f"{where}: not valid YAML ({first}).") from error
    if not isinstance(data, Mapping):
        raise CardError(f"{where}: must be a mapping of keys (architecture, weights, classes, ...).")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        hints = "".join(did_you_mean(key, KEYS) for key in unknown)
        raise CardError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}.{hints} Known: {', '.join(sorted(KEYS))}."
        )
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CardError(f"{where}: missing key(s) {', '.join(map(repr, missing))}.")
    name = str(data.get("name") or path.stem)
    if name in REGISTRY:
        raise CardError(f"{where}: {name!r} is a built-in model's name; rename the card (or set its 'name').")
    for key in ("architecture", "weights", "default_layer", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise CardError(f"{where}: {key!r} must be a string.")
    classes = data["classes"]
    if isinstance(classes, str):
        classes = path.parent / classes
    elif not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CardError(f"{where}: 'classes' must be a list of names or the name of a class-names file.")
    preprocessing = data.get("preprocessing") or {}
    if not isinstance(preprocessing, Mapping):
        raise CardError(f"{where}: 'preprocessing' must be a mapping (size, mean, std, channels, ...).")
    return Card(
        name=name,
        path=path,
        architecture=data.get("architecture") or None,
        weights=path.parent / data["weights"],
        classes=classes,
        preprocessing=dict(preprocessing),
        default_layer=data.get("default_layer") or None,
        description=data.get("description") or "",
    )


def load_card(card: Card, device: str | torch.device | None = None) -> ZooModel:
    """Build the model a card describes.

    Raises:
        CardError: the card names a missing file or bad values; the message starts with the card.
    """
    if not card.weights.is_file():
        raise CardError(
            f"Model card {card.path.name}: the weights file {str(card.weights)!r} does not exist."
        )
    if isinstance(card.classes, Path) and not card.classes.is_file():
        raise CardError(
            f"Model card {card.path.name}: the classes file {str(card.classes)!r} does not exist."
        )
    try:
        return load_custom_model(
            card.architecture,
            card.weights,
            card.classes,
            name=card.name,
            default_layer=card.default_layer,
            device=device,
            preprocessing=card.preprocessing or None,
        )
    except CardError:
        raise
    except CustomModelError as error:
        raise CardError(f"Model card {card.path.name}: {error}") from error


def load_folder_model(
    name: str, folder: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> ZooModel:
    """The model `name` of the models folder, ready to explain (see `read_card`, `load_card`)."""
    return load_card(read_card(card_path(name, folder)), device)


def fingerprint(name: str, folder: str | os.PathLike | None = None) -> str:
    """Changes when the card or a file it names changes: a cache key part for a folder model."""
    path = card_path(name, folder)
    parts = [path]
    try:
        card = read_card(path)
        parts += [card.weights] + ([card.classes] if isinstance(card.classes, Path) else [])
    except CardError:
        pass  # a broken card is keyed by itself: fixing it changes its own time stamp
    stamps = []
    for part in parts:
        try:
            stat = part.stat()
            stamps.append(f"{stat.st_mtime_ns}:{stat.st_size}")
        except OSError:
            stamps.append("-")
    return f"{path}|{'|'.join(stamps)}"


def load_named(
    name: str, folder: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> ZooModel:
    """A model by name: one of the models folder's, else a built-in one (`load_model`).

    Raises:
        CardError: the folder's card or files are wrong.
        ModelError: neither the folder nor the registry has the name (close matches of both).
    """
    from models_zoo.zoo import ModelError, load_model

    names = list_folder_models(folder)
    if name in names:
        return load_folder_model(name, folder, device)
    if name not in REGISTRY:
        hint = did_you_mean(name, [*names, *REGISTRY])
        raise ModelError(
            f"Unknown model {name!r} (built-in, or in the models folder {models_dir(folder)}).{hint}"
        )
    return load_model(name, device=device)
