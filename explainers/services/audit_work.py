"""One batch of a dataset audit: decode, explain, score and draw; the same work for every engine.

The in-process engine and the Ray actors both call `audit_batch` on the same batches, so they
do the same floating-point work and write the same rows. A batch is decoded image by image
(an unreadable file gets a row with its reason, the others go on), explained in one
`explain_batch` call and scored in one `faithfulness_batch` call; the pictures come back as PNG
bytes for the caller to write, so a worker on another machine needs no access to the run folder.
"""

from __future__ import annotations

import argparse
import io
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from explainers import METHODS
from explainers.errors import ImageError
from explainers.methods.batch import explain_batch
from explainers.methods.inference import scoring_model
from explainers.methods.metrics import Box, energy_in_box, faithfulness_batch, is_blank
from explainers.services.cli import file_stem, load_zoo
from explainers.services.images import load_image
from explainers.services.render import draw_box, picture, to_numpy

# The per-method scores of a row, in the CSV's units: fractions in [0, 1] and a 0/1 flag.
SCORES = ("energy_in_box", "average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")
NAN = math.nan


@dataclass(frozen=True)
class AuditSettings:
    """What every worker needs to audit a batch: the model to load and what to compute.

    Plain values only, so that it pickles to Ray actors.
    """

    model: str  # zoo or models-folder name (ignored when weights/labels are given)
    models_dir: str | None  # the models folder, or None for the default
    arch: str | None  # custom model: architecture
    weights: str | None  # custom model: weights file (absolute path)
    labels: str | None  # custom model: class names file (absolute path)
    layer: str  # the resolved target layer
    methods: tuple[str, ...]
    target: int | None  # the class to explain; None: each image's top-1
    steps: int  # deletion/insertion steps; 0 skips the curves

    def load(self):
        """The model (`models_zoo` entry), loaded as the command line would."""
        namespace = argparse.Namespace(
            model=self.model,
            models_dir=self.models_dir,
            arch=self.arch,
            weights=self.weights,
            labels=self.labels,
        )
        return load_zoo(namespace)


@dataclass(frozen=True)
class Item:
    """One image to audit."""

    index: int  # position in the folder's sorted list: names its overlays
    name: str  # file name inside the folder
    path: str  # absolute path
    stamp: str  # "size-mtime_ns": a changed file is audited again on resume
    group: str = ""  # from the groups file; "" without one
    box: Box | None = None  # in pixels of the model input


@dataclass
class Row:
    """One image's outcome; numbers in the CSV's units (fractions in [0, 1], NaN: not computed)."""

    index: int
    image: str
    stamp: str
    status: str = "ok"  # "ok" or "unreadable"
    reason: str = ""  # why an image was not audited
    group: str = ""
    box: str = ""  # "x0,y0,x1,y1" or ""
    box_area: float = NAN  # the box's share of the input's area: a uniform map's box share
    prediction: str = ""
    probability: float = NAN
    target: str = ""
    target_probability: float = NAN
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> score -> value
    pictures: dict[str, str] = field(default_factory=dict)  # "image" or method -> relative path


def box_text(box: Box | None) -> str:
    return "" if box is None else ",".join(str(v) for v in box)


def picture_stem(index: int, name: str) -> str:
    """The overlays' file-name stem of an image, e.g. "0001_cat_one"."""
    return f"{index:04d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', Path(name).stem)[:40]}"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # zlib's fastest level: a 224 x 224 overlay in 6 ms instead of 15, for 6 % more bytes (an
    # audit's three pictures per image were 7 % of its time at the default level).
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def box_share(heatmap: torch.Tensor, box: Box | None) -> float:
    """The map's share of energy inside the box; NaN without a box or on a blank map (cannot judge)."""
    if box is None or is_blank(heatmap):
        return NAN
    return energy_in_box(heatmap, box)


def draw_pictures(
    item: Item, crop: np.ndarray, maps: dict[str, torch.Tensor], methods: Sequence[str]
) -> dict[str, tuple[str, bytes]]:
    """An image's pictures: "image" (the model's crop) and each method's overlay, with the
    image's box drawn; key -> (path relative to the run folder, PNG bytes)."""
    stem = picture_stem(item.index, item.name)
    pictures = {"image": (f"overlays/{stem}.png", png(crop))}
    for name in methods:
        overlay = picture(METHODS[name].kind, to_numpy(maps[name]), crop)
        if item.box is not None:
            overlay = draw_box(overlay, item.box, colour=(255, 255, 255))
        pictures[name] = (f"overlays/{stem}_{file_stem(name)}.png", png(overlay))
    return pictures


def audit_batch(zoo, settings: AuditSettings, items: Sequence[Item]) -> list[tuple[Row, dict[str, bytes]]]:
    """Audit a batch of images: one explanation call and one scoring call for all of them.

    Args:
        zoo: the loaded model (`AuditSettings.load`).
        settings: layer, methods, target and steps.
        items: the images, each with its group and box.

    Returns:
        Per item, in order: its row and its pictures (relative path -> PNG bytes; none for an
        unreadable image).
    """
    rows = [
        Row(index=i.index, image=i.name, stamp=i.stamp, group=i.group, box=box_text(i.box)) for i in items
    ]
    crops, tensors, readable = [], [], []
    for position, item in enumerate(items):
        try:
            crop, x = zoo.preprocess.crop_and_tensor(load_image(item.path))
        except ImageError as error:
            rows[position].status, rows[position].reason = "unreadable", str(error)
            continue
        crops.append(np.asarray(crop))
        tensors.append(x)
        readable.append(position)
    outputs: list[tuple[Row, dict[str, bytes]]] = [(row, {}) for row in rows]
    if not readable:
        return outputs

    methods = list(settings.methods)
    x = torch.cat(tensors)  # (N, C, H, W)
    targets = [settings.target] * len(readable)
    explanations = explain_batch(zoo.model, x, settings.layer, methods, targets)
    # The pictures are drawn meanwhile on a thread of their own: they need only the maps, and
    # fill the moments the scoring passes leave a core idle.
    with ThreadPoolExecutor(1, thread_name_prefix="audit-pictures") as drawing:
        drawn = drawing.submit(
            lambda: [
                draw_pictures(items[position], crop, result.maps, methods)
                for position, crop, result in zip(readable, crops, explanations)
            ]
        )
        # The scoring passes run side by side, one Torch thread each: as many as Torch has
        # threads here (the cores in-process; one in a Ray actor with one CPU); on a copy of
        # the model with its BatchNorms folded where that agrees with the model.
        scores = faithfulness_batch(
            scoring_model(zoo.model, x),
            x,
            [e.maps for e in explanations],
            [e.target for e in explanations],
            steps=settings.steps,
            workers=torch.get_num_threads(),
        )
        pictures = drawn.result()
    height, width = x.shape[-2:]
    for position, result, faith, drawing_of in zip(readable, explanations, scores, pictures):
        item, row = items[position], rows[position]
        probabilities = result.probabilities
        predicted = int(result.logits.argmax())
        row.prediction, row.probability = zoo.labels[predicted], float(probabilities[predicted])
        row.target, row.target_probability = zoo.labels[result.target], float(probabilities[result.target])
        if item.box is not None:
            x0, y0, x1, y1 = item.box
            row.box_area = (min(x1, width) - x0) * (min(y1, height) - y0) / (width * height)
        row.pictures = {key: path for key, (path, _) in drawing_of.items()}
        outputs[position][1].update(drawing_of.values())
        for name in methods:
            heatmap, scored = result.maps[name], faith[name]
            row.scores[name] = {
                "energy_in_box": box_share(heatmap, item.box),
                "average_drop": scored.drop / 100,  # computed in percent, as in its paper
                "increase_in_confidence": NAN if math.isnan(scored.drop) else float(scored.increase),
                "deletion_auc": scored.deletion_auc,
                "insertion_auc": scored.insertion_auc,
            }
    return outputs
