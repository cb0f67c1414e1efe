"""Batch audit: explain every image of a folder; write a CSV of scores and an HTML gallery.

    python -m explainers.audit FOLDER [--model NAME [--models-dir DIR] | [--arch ARCH] --weights FILE --labels FILE]
                               [--layer NAME] [--methods gradcam,gradcam++] [--target CLASS]
                               [--box x0,y0,x1,y1] [--steps 16] [--out DIR]

Writes DIR/audit.csv (one row per image: prediction, probability, target and, per method,
the map's energy inside the box, Average Drop %, Increase in Confidence, deletion and
insertion AUC), DIR/index.html and the overlays it shows (DIR/overlays/*.png, relative links).
Box coordinates are pixels of the model's input crop (224×224 for most models).
Bad arguments exit with status 2 and one line on stderr; an unreadable image is reported
in the CSV and on stderr and skipped.
"""

from __future__ import annotations

import argparse
import csv
import html
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from explainers import METHODS, explain
from explainers.capture import check_target
from explainers.cli import (
    DEFAULT_METHODS,
    LAYER_HELP,
    OneLineParser,
    add_model_arguments,
    file_stem,
    load_zoo,
    parse_methods,
)
from explainers.compare import find_class
from explainers.core import method_title
from explainers.errors import ExplainerInputError, ImageError
from explainers.images import load_image
from explainers.metrics import Box, Faithfulness, energy_in_box, faithfulness, parse_box, summarise
from explainers.render import draw_box, picture, to_numpy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SCORES = ("energy_in_box", "average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m explainers.audit", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of images (not searched recursively)")
    add_model_arguments(parser)
    parser.add_argument("--layer", help=LAYER_HELP)
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated (default: {DEFAULT_METHODS})"
    )
    parser.add_argument("--target", help="class name or index to explain (default: each image's top-1)")
    parser.add_argument(
        "--box", help="x0,y0,x1,y1 in pixels of the model input: report each map's share inside"
    )
    parser.add_argument(
        "--steps", type=int, default=16, help="deletion/insertion steps; 0 skips them (default 16)"
    )
    parser.add_argument("--out", type=Path, default=Path("audit"), help="output folder (default: audit)")
    return parser.parse_args(argv)


@dataclass
class Row:
    """One image's outcome."""

    image: str
    status: str = "ok"
    prediction: str = ""
    probability: float = float("nan")
    target: str = ""
    target_probability: float = float("nan")
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> score -> value
    pictures: dict[str, str] = field(default_factory=dict)  # "image" or method -> relative path
    faithfulness: dict[str, Faithfulness] = field(default_factory=dict, repr=False)  # for the summary


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, by name.

    Raises:
        ExplainerInputError: no such folder, or no image file in it.
    """
    if not folder.is_dir():
        raise ExplainerInputError(f"No such folder: {folder}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ExplainerInputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return images


def progress(done: int, total: int, name: str) -> None:
    """One self-overwriting progress line on stderr (a new line per image when not a terminal)."""
    width = 24
    bar = "#" * (width * done // total) + "-" * (width - width * done // total)
    line = f"[{bar}] {done}/{total} {name[:40]}"
    if sys.stderr.isatty():
        print(f"\r{line:<80}", end="" if done < total else "\n", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def audit_image(
    path: Path, index: int, zoo, args: argparse.Namespace, methods: list[str], box: Box | None
) -> Row:
    """Explain and score one image, writing its pictures under args.out / "overlays"."""
    row = Row(image=path.name)
    image = load_image(path)
    crop, x = zoo.preprocess.crop_and_tensor(image)
    result = explain(zoo.model, x, args.layer, methods, target=args.target)
    predicted = int(result.logits.argmax())
    row.prediction, row.probability = zoo.labels[predicted], float(result.probabilities[predicted])
    row.target, row.target_probability = zoo.labels[result.target], float(result.probabilities[result.target])

    scores: dict[str, Faithfulness] = faithfulness(zoo.model, x, result.maps, result.target, steps=args.steps)
    crop = np.asarray(crop)
    stem = f"{index:04d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', path.stem)[:40]}"
    folder = args.out / "overlays"
    Image.fromarray(crop).save(folder / f"{stem}.png")
    row.pictures["image"] = f"overlays/{stem}.png"
    for name in methods:
        heatmap = result.maps[name]
        row.scores[name] = {
            "energy_in_box": energy_in_box(heatmap, box) if box is not None else float("nan"),
            "average_drop": scores[name].drop,
            "increase_in_confidence": float(scores[name].increase),
            "deletion_auc": scores[name].deletion_auc,
            "insertion_auc": scores[name].insertion_auc,
        }
        file = f"{stem}_{file_stem(name)}.png"
        image = picture(METHODS[name].kind, to_numpy(heatmap), crop)
        Image.fromarray(image if box is None else draw_box(image, box, colour=(255, 255, 255))).save(
            folder / file
        )
        row.pictures[name] = f"overlays/{file}"
    row.faithfulness = scores
    return row


def summary_text(values: dict[str, float]) -> str:
    """One method's faithfulness over the folder, as one line."""
    if math.isnan(values["average_drop"]):
        return "not scored (guided or blank maps: see explainers.metrics.faithfulness)"
    return (
        f"Average Drop {values['average_drop']:.1f}%, Increase in Confidence "
        f"{values['increase_in_confidence']:.1f}%, deletion AUC {values['deletion_auc']:.3f}, "
        f"insertion AUC {values['insertion_auc']:.3f}"
    )


def write_csv(path: Path, rows: list[Row], methods: list[str], box: Box | None) -> None:
    columns = [s for s in SCORES if box is not None or s != "energy_in_box"]
    header = ["image", "status", "prediction", "probability", "target", "target_probability"]
    header += [f"{m}_{s}" for m in methods for s in columns]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for row in rows:
            values = [row.image, row.status, row.prediction, _num(row.probability), row.target]
            values.append(_num(row.target_probability))
            values += [_num(row.scores.get(m, {}).get(s, float("nan"))) for m in methods for s in columns]
            writer.writerow(values)


def _num(value: float) -> str:
    return "" if value != value else f"{value:.4f}"  # NaN -> empty cell


def write_html(path: Path, rows: list[Row], methods: list[str], summary: dict, context: str) -> None:
    """A static gallery: one row per image, the crop and each method's overlay with its scores."""
    e = html.escape
    head = "".join(f"<th>{e(method_title(m))}</th>" for m in methods)
    body = []
    for row in rows:
        if row.status != "ok":
            span = len(methods) + 1
            body.append(f'<tr><td colspan="{span}" class="err">{e(row.image)}: {e(row.status)}</td></tr>')
            continue
        cells = [
            f'<td><img src="{e(row.pictures["image"])}" alt=""><br><b>{e(row.image)}</b><br>'
            f"{e(row.prediction)} ({row.probability:.1%})<br>"
            f"target: {e(row.target)} ({row.target_probability:.1%})</td>"
        ]
        for m in methods:
            s = row.scores[m]
            lines = (
                [f"drop {s['average_drop']:.1f}%" + (" ↑" if s["increase_in_confidence"] else "")]
                if s["average_drop"] == s["average_drop"]
                else ["not scored (guided or blank map)"]
            )
            if s["deletion_auc"] == s["deletion_auc"]:
                lines.append(f"del {s['deletion_auc']:.3f} · ins {s['insertion_auc']:.3f}")
            if s["energy_in_box"] == s["energy_in_box"]:
                lines.append(f"in box {s['energy_in_box']:.0%}")
            cells.append(f'<td><img src="{e(row.pictures[m])}" alt=""><br>{"<br>".join(lines)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    totals = "".join(f"<li>{e(method_title(m))}: {e(summary_text(v))}</li>" for m, v in summary.items())
    path.write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CAM Explorer audit</title>
<style>body{{font-family:sans-serif;margin:1em}} td,th{{padding:4px;vertical-align:top;font-size:13px}}
img{{width:180px}} .err{{color:#b00}} table{{border-collapse:collapse}}
tr{{border-top:1px solid #ddd}}</style>
</head><body><h1>CAM Explorer audit</h1><p>{e(context)}</p><ul>{totals}</ul>
<p>Average Drop: lower is better; ↑: the class score rose on image ⊙ map. Deletion AUC: lower is better;
insertion AUC: higher is better (RISE). "in box": the map's share of energy inside the box.</p>
<table><tr><th>image</th>{head}</tr>
{chr(10).join(body)}
</table></body></html>
""",
        encoding="utf-8",
    )


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    """Audit the folder; returns the rows and the per-method summary over the readable images."""
    images = list_images(args.folder)
    methods = parse_methods(args.methods)
    box = parse_box(args.box) if args.box else None
    if args.steps < 0:
        raise ExplainerInputError("--steps must be 0 (skip deletion/insertion) or more.")
    zoo = load_zoo(args)
    args.layer = zoo.resolve_layer(args.layer) if args.layer else zoo.default_layer
    check_target(zoo.model, args.layer)
    if box is not None and (box[2] > zoo.input_size[1] or box[3] > zoo.input_size[0]):
        raise ExplainerInputError(
            f"The box {box} reaches outside the model input, {zoo.input_size[1]}×{zoo.input_size[0]}."
        )
    if args.target is not None:  # a name or an index, checked once: an index from here on
        args.target = find_class(zoo.labels, args.target)
    (args.out / "overlays").mkdir(parents=True, exist_ok=True)

    rows = []
    for index, path in enumerate(images):
        progress(index, len(images), path.name)
        try:
            rows.append(audit_image(path, index, zoo, args, methods, box))
        except ImageError as error:
            end_bar = "\n" if sys.stderr.isatty() else ""  # leave the progress line first
            print(f"{end_bar}skipped {path.name}: {error}", file=sys.stderr)
            rows.append(Row(image=path.name, status=f"unreadable: {error}"))
    progress(len(images), len(images), "done")

    good = [row for row in rows if row.status == "ok"]
    summary = {m: summarise([row.faithfulness[m] for row in good]) for m in methods} if good else {}
    write_csv(args.out / "audit.csv", rows, methods, box)
    context = f"{zoo.name}, layer {args.layer}, {len(good)} of {len(rows)} images from {args.folder}"
    if box is not None:
        context += f", box {box}"
    write_html(args.out / "index.html", rows, methods, summary, context)
    return rows, summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows, summary = run(args)
    except ExplainerInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    good = sum(row.status == "ok" for row in rows)
    for method, values in summary.items():
        print(f"{method}: {summary_text(values)}")
    print(f"{good} of {len(rows)} images explained -> {args.out / 'audit.csv'}, {args.out / 'index.html'}")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
