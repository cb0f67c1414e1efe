"""Batch audit: explain every image of a folder; write a CSV of scores and an HTML gallery.

    python -m explainers.audit FOLDER [--model NAME [--models-dir DIR] | [--arch ARCH] --weights FILE --labels FILE]
                               [--layer NAME] [--methods gradcam,gradcam++] [--target CLASS]
                               [--box x0,y0,x1,y1] [--steps 16] [--out DIR]

Writes into its own run folder, RUN = DIR/<FOLDER's name>/ (default DIR: audit), so audits of
different folders never mix: RUN/audit.csv (one row per image), RUN/index.html and the overlays
it shows (RUN/overlays/*.png, relative links). A new audit of the same folder replaces them.

The CSV uses one unit throughout: every number is a fraction in [0, 1] (never a percentage),
and the column names say so: probability_fraction, target_probability_fraction and, per method,
<method>_energy_in_box_fraction (the map's share of energy inside the box),
<method>_average_drop_fraction (this image's Average Drop term, max(0, Y - O) / Y),
<method>_increase_in_confidence_flag (1 when the score rose on image ⊙ map, else 0),
<method>_deletion_auc_fraction and <method>_insertion_auc_fraction (areas under the class
probability over the fraction of pixels deleted or inserted). An empty cell: not computed.
Box coordinates are pixels of the model input crop (224×224 for most models).
Bad arguments exit with status 2 and one line on stderr; files in FOLDER that are not images
are listed on stderr; an unreadable image is reported in the CSV and on stderr and skipped.
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
from explainers.errors import ExplainerInputError, ImageError, reason
from explainers.methods.capture import check_target
from explainers.methods.core import method_title
from explainers.methods.metrics import Box, Faithfulness, energy_in_box, faithfulness, parse_box, summarise
from explainers.services.cli import (
    DEFAULT_METHODS,
    LAYER_HELP,
    OneLineParser,
    add_model_arguments,
    file_stem,
    load_zoo,
    parse_methods,
)
from explainers.services.compare import find_class
from explainers.services.images import load_image
from explainers.services.render import draw_box, picture, to_numpy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SCORES = ("energy_in_box", "average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")
# Each score's CSV column suffix and the factor that turns its value into that unit: one unit,
# fractions in [0, 1], throughout (Average Drop is computed in percent, as in its paper).
CSV_UNITS = {
    "energy_in_box": ("fraction", 1.0),
    "average_drop": ("fraction", 0.01),
    "increase_in_confidence": ("flag", 1.0),
    "deletion_auc": ("fraction", 1.0),
    "insertion_auc": ("fraction", 1.0),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m explainers.audit",
        description=__doc__.splitlines()[0],
        epilog="The files go to OUT/<FOLDER's name>/: audit.csv (every number a fraction in [0, 1]), "
        "index.html and overlays/. A new audit of the same folder replaces them.",
    )
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
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("audit"),
        help="parent folder: this audit goes to OUT/<FOLDER's name>/ (default: audit)",
    )
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


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files directly inside ``folder``, by name, and the other entries (skipped).

    Returns:
        (images, skipped): files with an image suffix; every other file or subfolder.

    Raises:
        ExplainerInputError: no such folder, or no image file in it.
    """
    if folder.is_file():
        raise ExplainerInputError(
            f"{folder} is a file, not a folder; explain one image with `python -m explainers {folder}`."
        )
    if not folder.is_dir():
        raise ExplainerInputError(
            f"No such folder: {folder} (looked in {Path.cwd()}). Check the path and its spelling."
        )
    entries = sorted(folder.iterdir())
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ExplainerInputError(
            f"No images ({', '.join(IMAGE_SUFFIXES)}) directly in {folder}; subfolders are not "
            "searched. Point it at the folder that holds the images."
        )
    return images, [p for p in entries if p not in images]


def entry_name(path: Path) -> str:
    """A folder entry's name as listed to the user, folders with a trailing "/"."""
    return path.name + ("/" if path.is_dir() else "")


def skipped_note(skipped: list[Path], limit: int = 10) -> str:
    """One line naming what the audit leaves out, e.g. "skipped 1 entry that is not an image (...): README.md"."""
    names = [entry_name(p) for p in skipped]
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    what = "entry that is not an image" if len(names) == 1 else "entries that are not images"
    return f"skipped {len(names)} {what} ({', '.join(IMAGE_SUFFIXES)}; subfolders are not searched): {shown}"


def run_folder(out: Path, folder: Path) -> Path:
    """The audit's own folder, OUT/<folder's name> (characters a file name may not hold -> _)."""
    name = re.sub(r"[^\w.-]+", "_", folder.resolve().name).strip("._")
    return out / (name or "folder")


def clear_previous_audit(folder: Path) -> None:
    """Delete a previous audit's overlays (written as overlays/NNNN_*.png); nothing else is touched."""
    overlays = folder / "overlays"
    if overlays.is_dir():
        for path in overlays.iterdir():
            if path.is_file() and re.fullmatch(r"\d{4}_.*\.png", path.name):
                path.unlink()


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
        return "not scored (guided or blank maps: see explainers.methods.metrics.faithfulness)"
    return (
        f"Average Drop {values['average_drop']:.1f}%, Increase in Confidence "
        f"{values['increase_in_confidence']:.1f}%, deletion AUC {values['deletion_auc']:.3f}, "
        f"insertion AUC {values['insertion_auc']:.3f}"
    )


def write_csv(path: Path, rows: list[Row], methods: list[str], box: Box | None) -> None:
    """One row per image; every number a fraction in [0, 1] (or a 0/1 flag), its column says so."""
    columns = [s for s in SCORES if box is not None or s != "energy_in_box"]
    header = [
        "image",
        "status",
        "prediction",
        "probability_fraction",
        "target",
        "target_probability_fraction",
    ]
    header += [f"{m}_{s}_{CSV_UNITS[s][0]}" for m in methods for s in columns]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for row in rows:
            values = [row.image, row.status, row.prediction, _num(row.probability), row.target]
            values.append(_num(row.target_probability))
            values += [
                _csv_value(row.scores.get(m, {}).get(s, float("nan")), s) for m in methods for s in columns
            ]
            writer.writerow(values)


def _csv_value(value: float, score: str) -> str:
    unit, factor = CSV_UNITS[score]
    if unit == "flag" and value == value:
        return str(int(value))
    return _num(value * factor)


def _num(value: float) -> str:
    return "" if value != value else f"{value:.4f}"  # NaN -> empty cell


# Inline, no fonts or scripts from elsewhere: the report opens offline, from the disk. The table
# spans the window; each overlay takes its column's width up to twice its size.
_STYLE = """
:root{color-scheme:light;--line:#e3e5ea;--muted:#5f6570;--accent:#c0392b}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1f2328;background:#f6f7f9}
h1{font-size:26px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px}
.context{color:var(--muted);margin:0 0 16px}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px}
th,td{padding:10px 12px;text-align:left;vertical-align:top;border-bottom:1px solid var(--line)}
thead th{position:sticky;top:0;background:#eef0f4;font-size:14px;z-index:1}
.gallery{table-layout:fixed}
.gallery img{display:block;width:100%;max-width:448px;height:auto;border-radius:4px;margin-bottom:6px}
.name{font-weight:600;overflow-wrap:anywhere} .small{font-size:13px;color:var(--muted)}
.scores{font-variant-numeric:tabular-nums;font-size:13px}
.summary td{font-variant-numeric:tabular-nums}
.err td{color:var(--accent)} .legend{color:var(--muted);font-size:13px;max-width:90ch}
"""


def write_html(
    path: Path,
    rows: list[Row],
    methods: list[str],
    summary: dict,
    context: str,
    skipped: Sequence[str] = (),
) -> None:
    """A static gallery: one row per image, the crop and each method's overlay with its scores;
    above it the per-method summary, and the files that were not audited."""
    e = html.escape
    head = "".join(f"<th>{e(method_title(m))}</th>" for m in methods)
    body = []
    for row in rows:
        if row.status != "ok":
            span = len(methods) + 1
            body.append(f'<tr class="err"><td colspan="{span}">{e(row.image)}: {e(row.status)}</td></tr>')
            continue
        cells = [
            f'<td><img src="{e(row.pictures["image"])}" alt="{e(row.image)}">'
            f'<div class="name">{e(row.image)}</div>'
            f'<div class="small">predicted {e(row.prediction)} ({row.probability:.1%})<br>'
            f"explained {e(row.target)} ({row.target_probability:.1%})</div></td>"
        ]
        for m in methods:
            s = row.scores[m]
            lines = (
                [
                    f"Average Drop {s['average_drop']:.1f}%"
                    + (" · score rose ↑" if s["increase_in_confidence"] else "")
                ]
                if s["average_drop"] == s["average_drop"]
                else ["not scored (guided or blank map)"]
            )
            if s["deletion_auc"] == s["deletion_auc"]:
                lines.append(f"deletion AUC {s['deletion_auc']:.3f} · insertion AUC {s['insertion_auc']:.3f}")
            if s["energy_in_box"] == s["energy_in_box"]:
                lines.append(f"in the box: {s['energy_in_box']:.0%} of the map")
            alt = e(f"{method_title(m)} on {row.image}")
            cells.append(
                f'<td><img src="{e(row.pictures[m])}" alt="{alt}"><div class="scores">{"<br>".join(lines)}</div></td>'
            )
        body.append(f"<tr>{''.join(cells)}</tr>")
    totals = "".join(
        f"<tr><td>{e(method_title(m))}</td><td>{v['average_drop']:.1f}%</td>"
        f"<td>{v['increase_in_confidence']:.1f}%</td><td>{v['deletion_auc']:.3f}</td>"
        f"<td>{v['insertion_auc']:.3f}</td></tr>"
        for m, v in summary.items()
    )
    summary_table = (
        '<table class="summary"><thead><tr><th>method</th><th>Average Drop (lower is better)</th>'
        "<th>Increase in Confidence (higher is better)</th><th>deletion AUC (lower is better)</th>"
        f"<th>insertion AUC (higher is better)</th></tr></thead><tbody>{totals}</tbody></table>"
        if totals
        else "<p>No image could be explained.</p>"
    )
    not_audited = (
        f'<p class="legend">Not audited (not images): {e(", ".join(skipped))}</p>' if skipped else ""
    )
    path.write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CAM Explorer audit</title><style>{_STYLE}</style></head>
<body><h1>CAM Explorer audit</h1><p class="context">{e(context)}</p>
<h2>Over the folder</h2>{summary_table}
<p class="legend">Average Drop: how much the class score falls on image ⊙ map. Increase in Confidence:
the share of images whose score rose (↑). Deletion / insertion AUC: the class probability as the
map's most important pixels are removed / added (RISE). "In the box": the map's share of energy
inside the box. The CSV holds the same numbers as fractions in [0, 1].</p>{not_audited}
<h2>Per image</h2>
<table class="gallery"><thead><tr><th>image</th>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></body></html>
""",
        encoding="utf-8",
    )


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    """Audit the folder; returns the rows and the per-method summary over the readable images.

    Sets ``args.out`` to the run folder the files went to.
    """
    images, skipped = list_images(args.folder)
    methods = parse_methods(args.methods)
    box = parse_box(args.box) if args.box else None
    if args.steps < 0:
        raise ExplainerInputError(
            f"--steps {args.steps}: give 0 (skip deletion/insertion) or more, e.g. --steps 16."
        )
    zoo = load_zoo(args)
    args.layer = zoo.resolve_layer(args.layer) if args.layer else zoo.default_layer
    check_target(zoo.model, args.layer)
    if box is not None and (box[2] > zoo.input_size[1] or box[3] > zoo.input_size[0]):
        raise ExplainerInputError(
            f"--box {args.box} reaches outside the model input, {zoo.input_size[1]}×{zoo.input_size[0]}: "
            f"keep x1 <= {zoo.input_size[1]} and y1 <= {zoo.input_size[0]}."
        )
    if args.target is not None:  # a name or an index, checked once: an index from here on
        args.target = find_class(zoo.labels, args.target)
    args.out = run_folder(args.out, args.folder)
    try:
        (args.out / "overlays").mkdir(parents=True, exist_ok=True)
        clear_previous_audit(args.out)
    except OSError as error:
        raise ExplainerInputError(
            f"Cannot write to {args.out}: {reason(error)}. Choose a folder you can write to with --out."
        ) from error
    if skipped:  # said, not skipped silently: a misplaced image would otherwise just be missing
        print(skipped_note(skipped), file=sys.stderr)

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
    skipped_names = [entry_name(p) for p in skipped]
    write_html(args.out / "index.html", rows, methods, summary, context, skipped_names)
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
