"""Dataset audit: explain every image of a folder in batches; write a CSV, group summaries and an HTML report.

    python -m explainers.audit FOLDER [--model NAME [--models-dir DIR] | [--arch ARCH] --weights FILE --labels FILE]
                               [--layer NAME] [--methods gradcam,gradcam++] [--target CLASS]
                               [--box x0,y0,x1,y1] [--groups FILE.csv [--group-by COLUMN] [--image-column COLUMN]]
                               [--steps 16] [--batch-size 8] [--engine inprocess|ray [--workers 2]]
                               [--fresh] [--out DIR]

Writes into its own run folder, RUN = DIR/<FOLDER's name>/ (default DIR: audit), so audits of
different folders never mix: RUN/audit.csv (one row per image), RUN/index.html (the report) and
the overlays it shows (RUN/overlays/*.png, relative links); with --groups also RUN/groups.csv and
RUN/group_predictions.csv.

Resumable: each finished batch is written at once (RUN/shards/, and RUN/manifest.json records the
arguments, model, layer, methods and versions). A run that was stopped, even by kill -9, and is
started again with the same arguments skips the images already done; the CSV is assembled from
the shards, one row per image. Other arguments replace a finished audit (as a new audit of the
same folder always has) but are refused for an unfinished one (exit 2), unless --fresh.

The CSV uses one unit throughout: every number is a fraction in [0, 1] (never a percentage),
and the column names say so: probability_fraction, target_probability_fraction and, per method,
<method>_energy_in_box_fraction (the map's share of energy inside the image's box),
<method>_average_drop_fraction (this image's Average Drop term, max(0, Y - O) / Y),
<method>_increase_in_confidence_flag (1 when the score rose on image ⊙ map, else 0),
<method>_deletion_auc_fraction and <method>_insertion_auc_fraction (areas under the class
probability over the fraction of pixels deleted or inserted). An empty cell: not computed, or
cannot be judged (a blank map). Box coordinates are pixels of the model input crop (224×224 for
most models).
Bad arguments exit with status 2 and one line on stderr; files in FOLDER that are not images
are listed on stderr; an unreadable image gets a row with status "unreadable" and its reason,
and the audit goes on.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from explainers.errors import ExplainerInputError
from explainers.methods.capture import check_target
from explainers.methods.metrics import parse_box
from explainers.services.audit_groups import (
    NO_GROUP,
    NOT_LISTED,
    GroupSummary,
    check_boxes,
    read_groups,
    summarise_groups,
    write_groups_csv,
    write_predictions_csv,
)
from explainers.services.audit_report import write_report
from explainers.services.audit_store import RunStore
from explainers.services.audit_work import SCORES, AuditSettings, Item, Row, audit_batch
from explainers.services.cli import (
    DEFAULT_METHODS,
    LAYER_HELP,
    OneLineParser,
    add_model_arguments,
    load_zoo,
    parse_methods,
)
from explainers.services.compare import find_class

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
ENGINES = ("inprocess", "ray")
# Each score's CSV column suffix and the factor from a row's value to that unit: one unit,
# fractions in [0, 1], throughout (rows hold fractions already).
CSV_UNITS = {
    "energy_in_box": "fraction",
    "average_drop": "fraction",
    "increase_in_confidence": "flag",
    "deletion_auc": "fraction",
    "insertion_auc": "fraction",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m explainers.audit",
        description=__doc__.splitlines()[0],
        epilog="The files go to OUT/<FOLDER's name>/: audit.csv (every number a fraction in [0, 1]), "
        "index.html, overlays/ and, for resuming, manifest.json and shards/. Run again with the same "
        "arguments to resume an audit that was stopped.",
    )
    parser.add_argument("folder", type=Path, help="folder of images (not searched recursively)")
    add_model_arguments(parser)
    parser.add_argument("--layer", help=LAYER_HELP)
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated (default: {DEFAULT_METHODS})"
    )
    parser.add_argument("--target", help="class name or index to explain (default: each image's top-1)")
    parser.add_argument(
        "--box",
        help="x0,y0,x1,y1 in pixels of the model input: report each map's share inside "
        "(for every image; a box in --groups wins for its image)",
    )
    parser.add_argument(
        "--groups",
        type=Path,
        help="CSV with a row per image: its file name (--image-column), its group (--group-by) and "
        "optionally a box in columns x0,y0,x1,y1 (pixels of the model input)",
    )
    parser.add_argument("--group-by", help="the --groups column that holds the group (default: group)")
    parser.add_argument(
        "--image-column", help="the --groups column that holds the image file name (default: image)"
    )
    parser.add_argument(
        "--steps", type=int, default=16, help="deletion/insertion steps; 0 skips them (default 16)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images explained and scored together, and written as one shard (default 8)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="inprocess",
        help="inprocess (default), or ray: Ray Data actors, on a local Ray or the cluster at $RAY_ADDRESS "
        "(pip install -r requirements-ray.txt)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="--engine ray: actors, each holding the model once (default 2)"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="discard a previous audit in the run folder instead of resuming it",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("audit"),
        help="parent folder: this audit goes to OUT/<FOLDER's name>/ (default: audit)",
    )
    return parser.parse_args(argv)


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


class Progress:
    """A self-overwriting progress line on stderr with images/s and the ETA (a new line per
    update when stderr is not a terminal). Images done before a resume count as done, not in
    the rate."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done, self.first = total, done, done
        self.start = time.perf_counter()
        self.show("")

    def advance(self, count: int, name: str) -> None:
        self.done += count
        self.show(name)

    def rate(self) -> float:
        seconds = time.perf_counter() - self.start
        return (self.done - self.first) / seconds if seconds > 0 else 0.0

    def show(self, name: str) -> None:
        width = 24
        filled = width * self.done // max(self.total, 1)
        rate = self.rate()
        left = self.total - self.done
        eta = _clock(left / rate) if rate > 0 else "--:--" if left else "0:00"
        speed = f"{rate:.2f} images/s" if self.done > self.first else "-- images/s"
        line = (
            f"[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} {speed} ETA {eta} {name[:40]}"
        )
        if sys.stderr.isatty():
            print(f"\r{line:<100}", end="" if self.done < self.total else "\n", file=sys.stderr, flush=True)
        else:
            print(line.rstrip(), file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A line of its own, after the progress line when on a terminal."""
        print(("\n" if sys.stderr.isatty() else "") + text, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def summary_text(values: dict[str, float]) -> str:
    """One method's faithfulness over the folder, as one line (Average Drop and IiC in %)."""
    if values["average_drop"] != values["average_drop"]:
        return "not scored (guided or blank maps: see explainers.metrics.faithfulness)"
    line = (
        f"Average Drop {100 * values['average_drop']:.1f}%, Increase in Confidence "
        f"{100 * values['increase_in_confidence']:.1f}%"
    )
    if values["deletion_auc"] == values["deletion_auc"]:
        line += f", deletion AUC {values['deletion_auc']:.3f}, insertion AUC {values['insertion_auc']:.3f}"
    return line


def write_csv(path: Path, rows: Sequence[Row], methods: Sequence[str], boxed: bool, grouped: bool) -> None:
    """One row per image; every number a fraction in [0, 1] (or a 0/1 flag), its column says so."""
    columns = [s for s in SCORES if boxed or s != "energy_in_box"]
    header = ["image", "status", "reason"] + (["group"] if grouped else []) + (["box"] if boxed else [])
    header += ["prediction", "probability_fraction", "target", "target_probability_fraction"]
    header += [f"{m}_{s}_{CSV_UNITS[s]}" for m in methods for s in columns]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for row in rows:
            values = [row.image, row.status, row.reason]
            values += ([row.group] if grouped else []) + ([row.box] if boxed else [])
            values += [row.prediction, _num(row.probability), row.target, _num(row.target_probability)]
            values += [
                _csv_value(row.scores.get(m, {}).get(s, float("nan")), s) for m in methods for s in columns
            ]
            writer.writerow(values)


def _csv_value(value: float, score: str) -> str:
    if CSV_UNITS[score] == "flag" and value == value:
        return str(int(value))
    return _num(value)


def _num(value: float) -> str:
    return "" if value != value else f"{value:.4f}"  # NaN -> empty cell


class IncompleteAudit(RuntimeError):
    """Images of the folder still have no row once the engine has finished (exit status 1)."""


def _file_identity(path: str | None) -> dict | None:
    """A file argument as the manifest records it: where it is, and its size and time (changed -> other)."""
    if path is None:
        return None
    file = Path(path).expanduser().resolve()
    try:
        stat = file.stat()
    except OSError:
        return {"path": str(file)}
    return {"path": str(file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _versions(engine: str) -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }
    if engine == "ray":
        import ray

        versions["ray"] = ray.__version__
    return versions


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def run(args: argparse.Namespace) -> tuple[list[Row], list[GroupSummary]]:
    """Audit the folder (resuming a stopped run); returns the rows and the per-group summaries
    (all images first).

    Sets ``args.out`` to the run folder the files went to.
    """
    images, skipped = list_images(args.folder)
    methods = parse_methods(args.methods)
    box = parse_box(args.box) if args.box else None
    for option, value, least in (("--steps", args.steps, 0), ("--batch-size", args.batch_size, 1)):
        if value < least:
            raise ExplainerInputError(
                f"{option} {value}: give {least} or more (--steps 0 skips deletion/insertion)."
            )
    if args.workers < 1:
        raise ExplainerInputError(f"--workers {args.workers}: give 1 or more Ray actors.")
    if args.groups is None and (args.group_by or args.image_column):
        option = "--group-by" if args.group_by else "--image-column"
        raise ExplainerInputError(
            f"{option} names a column of the groups file: give the file with --groups FILE.csv."
        )
    if args.engine == "ray":
        try:
            import ray.data  # noqa: F401
        except ImportError as error:
            raise ExplainerInputError(
                f"--engine ray needs Ray Data ({error}): pip install -r requirements-ray.txt, or leave out --engine."
            ) from error
    names = [p.name for p in images]
    group_by, image_column = args.group_by or "group", args.image_column or "image"
    entries = read_groups(args.groups, names, args.folder, group_by, image_column) if args.groups else None

    zoo = load_zoo(args)
    args.layer = zoo.resolve_layer(args.layer) if args.layer else zoo.default_layer
    check_target(zoo.model, args.layer)
    if box is not None and (box[2] > zoo.input_size[1] or box[3] > zoo.input_size[0]):
        raise ExplainerInputError(
            f"--box {args.box} reaches outside the model input, {zoo.input_size[1]}×{zoo.input_size[0]}: "
            f"keep x1 <= {zoo.input_size[1]} and y1 <= {zoo.input_size[0]}."
        )
    if entries is not None:
        check_boxes(entries, args.groups, zoo.input_size)
    if args.target is not None:  # a name or an index, checked once: an index from here on
        args.target = find_class(zoo.labels, args.target)

    custom = args.weights is not None
    settings = AuditSettings(
        model=args.model,
        models_dir=args.models_dir,
        arch=args.arch,
        weights=str(Path(args.weights).expanduser().resolve()) if custom else None,
        labels=str(Path(args.labels).expanduser().resolve()) if args.labels else None,
        layer=args.layer,
        methods=tuple(methods),
        target=args.target,
        steps=args.steps,
    )
    arguments = {  # what decides the rows: the same values resume a run, others start a new one
        "folder": str(args.folder.resolve()),
        "model": None if custom else args.model,
        "models_dir": args.models_dir,
        "arch": args.arch,
        "weights": _file_identity(args.weights),
        "labels": _file_identity(args.labels),
        "layer": args.layer,
        "methods": methods,
        "target": args.target,
        "box": args.box and ",".join(str(v) for v in box),
        "steps": args.steps,
        "groups": args.groups
        and {
            "path": str(args.groups.resolve()),
            "sha256": hashlib.sha256(args.groups.read_bytes()).hexdigest(),
        },
        "group_by": group_by if args.groups else None,
        "image_column": image_column if args.groups else None,
    }
    versions = _versions(args.engine)
    details = {
        "model_name": zoo.name,
        "versions": versions,
        "engine": args.engine,
        "batch_size": args.batch_size,
    }
    args.out = run_folder(args.out, args.folder)
    store = RunStore(args.out, methods)
    previous = store.manifest()
    outcome = store.open(arguments, details, args.fresh)
    if skipped:  # said, not skipped silently: a misplaced image would otherwise just be missing
        print(skipped_note(skipped), file=sys.stderr)
    if outcome == "replaced":
        print(f"replacing the previous audit in {args.out} (other arguments)", file=sys.stderr)
    if outcome == "resumed" and previous and previous.get("versions") != versions:
        print(
            f"note: {args.out} was started with {previous.get('versions')}, now {versions}", file=sys.stderr
        )

    unlisted = []
    items = []
    for index, path in enumerate(images):
        entry = entries.get(path.name) if entries is not None else None
        if entries is not None and entry is None:
            unlisted.append(path.name)
        group = "" if entries is None else NOT_LISTED if entry is None else (entry.group or NO_GROUP)
        item_box = entry.box if entry is not None and entry.box is not None else box
        items.append(Item(index, path.name, str(path.resolve()), _stamp(path), group, item_box))
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        print(
            f"{len(unlisted)} images are not in {args.groups}: group {NOT_LISTED!r}: {shown}", file=sys.stderr
        )

    done = store.done()
    todo = [item for item in items if item.name not in done or done[item.name].stamp != item.stamp]
    if outcome == "resumed":
        print(
            f"resuming {args.out}: {len(items) - len(todo)} of {len(items)} images already done",
            file=sys.stderr,
        )
    batches = [todo[i : i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
    meter = Progress(len(items), len(items) - len(todo))

    def finished(results: list[tuple[Row, dict[str, bytes]]]) -> None:
        for row in store.write(results):
            if row.status != "ok":
                meter.note(f"skipped {row.image}: {row.reason}")
        meter.advance(len(results), results[-1][0].image if results else "")

    start = time.perf_counter()
    if args.engine == "ray" and batches:
        from explainers.services.audit_ray import run_on_ray

        nodes = run_on_ray(settings, batches, finished, args.workers)
        print("ray: images per node: " + ", ".join(f"{n}: {c}" for n, c in nodes.items()), file=sys.stderr)
    else:
        for batch in batches:
            finished(audit_batch(zoo, settings, batch))
    seconds = time.perf_counter() - start
    print(
        f"audited {len(todo)} images in {seconds:.1f} s ({len(todo) / seconds if seconds > 0 else 0:.2f} images/s)",
        file=sys.stderr,
    )

    final = store.done()
    missing = [item.name for item in items if item.name not in final]
    if missing:  # not expected: every batch is written before the loop ends
        raise IncompleteAudit(
            f"{len(missing)} images have no row in {store.shards} ({', '.join(missing[:3])}...): "
            "run the same command again to audit them."
        )
    rows = [final[item.name] for item in items]
    for row, item in zip(rows, items):  # the row's place in this listing of the folder
        row.index = item.index
    boxed = box is not None or any(item.box is not None for item in items)
    grouped = entries is not None
    write_csv(args.out / "audit.csv", rows, methods, boxed, grouped)
    summaries = summarise_groups(rows, methods, grouped)
    if grouped:
        write_groups_csv(args.out / "groups.csv", summaries, methods)
        write_predictions_csv(args.out / "group_predictions.csv", summaries)
    good = summaries[0].audited
    context = f"{zoo.name}, layer {args.layer}, {good} of {len(rows)} images from {args.folder}"
    if box is not None:
        context += f", box {box}"
    if grouped:
        context += f", groups from {args.groups} (column {group_by!r})"
    skipped_names = [entry_name(p) for p in skipped]
    write_report(args.out / "index.html", rows, methods, summaries, context, grouped, skipped_names)
    store.finish(len(rows))
    return rows, summaries


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows, summaries = run(args)
    except ExplainerInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except IncompleteAudit as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    overall = summaries[0]
    if overall.audited:
        for method, values in overall.methods.items():
            print(f"{method}: {summary_text(vars(values))}")
    print(
        f"{overall.audited} of {len(rows)} images explained -> {args.out / 'audit.csv'}, {args.out / 'index.html'}"
    )
    return 0 if overall.audited else 1


if __name__ == "__main__":
    sys.exit(main())
