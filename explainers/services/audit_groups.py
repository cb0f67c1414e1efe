"""Groups and boxes for a dataset audit: the groups CSV, and the scores summarised per group.

The nurse/doctor question at scale: a CSV gives each image a group (any column: label, gender,
site...) and optionally a box (x0,y0,x1,y1 in pixels of the model input: the face, the
stethoscope, a tag). Per group the audit reports the prediction distribution, the mean share of
map energy inside each image's box (with its spread, and the box's share of the area: what a
uniform map would score), Average Drop, Increase in Confidence and deletion/insertion AUC.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from explainers import METHODS
from explainers.errors import ExplainerInputError, did_you_mean, reason
from explainers.methods.metrics import Box
from explainers.services.audit_work import SCORES, Row

BOX_COLUMNS = ("x0", "y0", "x1", "y1")
ALL = "all images"  # the summary over every image, first in each table
NOT_LISTED = "(not in the groups file)"  # the group of folder images the CSV does not list
NO_GROUP = "(empty group cell)"  # the group of images listed with an empty group cell


@dataclass(frozen=True)
class GroupEntry:
    """What the groups CSV says about one image."""

    group: str
    box: Box | None
    line: int  # its line in the CSV, for messages


def read_groups(
    path: Path, images: Sequence[str], folder: Path, group_by: str, image_column: str = "image"
) -> dict[str, GroupEntry]:
    """Read and check a groups CSV: image file name -> group and optional box.

    Args:
        path: the CSV (UTF-8, a header row; comma, semicolon or tab separated).
        images: the file names of the audited folder's images.
        folder: that folder, for messages.
        group_by: the column that holds the group.
        image_column: the column that holds the image's file name (a path's last part counts).

    Returns:
        Image name -> `GroupEntry`, for the images the CSV lists.

    Raises:
        ExplainerInputError: one line naming the file, the line and what to fix: an unreadable
            file, a missing or repeated column, a line with more or fewer cells than the header,
            an unclosed quote, a box that is not four numbers or is empty, an image that is not in
            the folder or listed twice.
    """
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as error:
        raise ExplainerInputError(f"--groups {where}: no such file (looked in {Path.cwd()}).") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ExplainerInputError(
            f"--groups {where}: cannot read it ({reason(error)}); save it as UTF-8 CSV."
        ) from error
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect, strict=True)
    try:
        columns = [c.strip() for c in reader.fieldnames or []]
    except csv.Error as error:
        raise _csv_error(where, 1, error) from error
    if not columns:
        raise ExplainerInputError(f"--groups {where} is empty: it needs a header row, e.g. image,{group_by}.")
    reader.fieldnames = columns
    listed = ", ".join(columns)
    if image_column not in columns:
        hint = did_you_mean(image_column, columns)
        raise ExplainerInputError(
            f"--groups {where} has no column {image_column!r} for the image file names (its columns: {listed});{hint} "
            "name it with --image-column."
        )
    if group_by not in columns:
        hint = did_you_mean(group_by, columns)
        raise ExplainerInputError(
            f"--groups {where} has no column {group_by!r} to group by (its columns: {listed});{hint} "
            "choose one with --group-by."
        )
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})  # "": empty trailing columns
    if repeated:
        raise ExplainerInputError(
            f"--groups {where} names the column {', '.join(map(repr, repeated))} twice (its columns: {listed}); "
            "give each column once."
        )
    present = [c for c in BOX_COLUMNS if c in columns]
    if present and len(present) < 4:
        missing = [c for c in BOX_COLUMNS if c not in columns]
        raise ExplainerInputError(
            f"--groups {where} has box columns {', '.join(present)} but not {', '.join(missing)}: "
            "give all four (x0,y0,x1,y1, pixels of the model input) or none."
        )
    known = set(images)
    entries: dict[str, GroupEntry] = {}
    records = iter(reader)
    while True:
        start = reader.line_num + 1  # where the next record begins
        try:
            record = next(records)
        except StopIteration:
            break
        except csv.Error as error:
            raise _csv_error(where, start, error) from error
        line = reader.line_num  # the file's line (blank lines are counted, and skipped)
        if all(not (v or "").strip() for v in record.values() if isinstance(v, str)):
            continue  # a blank line
        at = f"--groups {where} line {line}"
        if None in record or any(v is None for k, v in record.items() if k is not None):
            given = [v for k, v in record.items() if k is not None and v is not None]
            cells = len(given) + len(record.get(None) or [])
            raise ExplainerInputError(
                f"{at} has {cells} cells but the header has {len(columns)} columns; put a cell that "
                'holds the separator in quotes ("Smith, J"), and leave missing values empty.'
            )
        for column in (image_column, group_by):
            if "\n" in record[column] or "\r" in record[column]:
                raise ExplainerInputError(
                    f"--groups {where} line {start}: the {column!r} cell spans lines {start} to {line} "
                    "(a quote that closes too late?); one line per image."
                )
        name = Path((record.get(image_column) or "").strip()).name
        if not name:
            raise ExplainerInputError(
                f"{at}: the {image_column!r} cell is empty; give the image's file name."
            )
        if name not in known:
            hint = did_you_mean(name, images)
            raise ExplainerInputError(
                f"{at}: image {name!r} is not in {folder} ({len(images)} images there).{hint}"
            )
        if name in entries:
            raise ExplainerInputError(
                f"{at}: image {name!r} is listed twice (also on line {entries[name].line})."
            )
        box = _box(record, at) if present else None
        entries[name] = GroupEntry((record.get(group_by) or "").strip(), box, line)
    if not entries:
        raise ExplainerInputError(
            f"--groups {where} has a header but lists no image: add one line per image, e.g. "
            f"{images[0] if images else 'photo.jpg'},<its {group_by}>."
        )
    return entries


def _csv_error(where: str, line: int, error: csv.Error) -> ExplainerInputError:
    """A parse error of the groups CSV as one line naming where the faulty record begins."""
    if "unexpected end of data" in str(error):
        return ExplainerInputError(
            f'--groups {where} line {line}: a quoted cell is never closed (a " with no closing "); '
            "close it, or remove the stray quote."
        )
    return ExplainerInputError(f"--groups {where} line {line}: not valid CSV ({error}); fix that line.")


def _box(record: dict, at: str) -> Box | None:
    cells = {c: (record.get(c) or "").strip() for c in BOX_COLUMNS}
    if not any(cells.values()):
        return None  # no box for this image
    if not all(cells.values()):
        empty = [c for c, v in cells.items() if not v]
        raise ExplainerInputError(
            f"{at}: the box has no {', '.join(empty)}; give all of x0,y0,x1,y1 or leave all four empty."
        )
    values = []
    for column, cell in cells.items():
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ExplainerInputError(
                f"{at}: box {column}={cell!r} is not a number; give pixels of the model input, e.g. 40."
            )
        values.append(round(value))
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ExplainerInputError(
            f"{at}: the box ({x0}, {y0}, {x1}, {y1}) is empty or negative: need 0 <= x0 < x1 and 0 <= y0 < y1."
        )
    return (x0, y0, x1, y1)


def check_boxes(entries: dict[str, GroupEntry], where: Path, input_size: tuple[int, int]) -> None:
    """Every box inside the model input, (height, width).

    Raises:
        ExplainerInputError: the first box that reaches outside, with its line.
    """
    height, width = input_size
    for name, entry in entries.items():
        if entry.box is not None and (entry.box[2] > width or entry.box[3] > height):
            raise ExplainerInputError(
                f"--groups {where} line {entry.line}: the box of {name!r}, {entry.box}, reaches outside the "
                f"model input, {width}×{height}: keep x1 <= {width} and y1 <= {height}."
            )


# -- per-group summaries ------------------------------------------------------------------


@dataclass
class MethodSummary:
    """One method's scores over one group's images; NaN where no image could be scored."""

    box_shares: list[float]  # per image with a box and a map that is not blank
    box_share_mean: float
    box_share_std: float  # sample standard deviation; NaN under two images
    box_area_mean: float  # the boxes' share of the area: a uniform map's box share
    cannot_judge: int  # images whose map is blank: no box share, no faithfulness (see `is_blank_row`)
    average_drop: float  # fraction: mean of max(0, Y - O) / Y
    increase_in_confidence: float  # fraction of images whose score rose
    deletion_auc: float
    insertion_auc: float


@dataclass
class GroupSummary:
    name: str
    images: int
    audited: int  # readable images
    predictions: list[tuple[str, int]]  # (class, images), most frequent first
    methods: dict[str, MethodSummary]


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def is_blank_row(row: Row, scores: dict[str, float], method: str) -> bool:
    """Whether this image's map of ``method`` was blank (the same everywhere): with a box, its box
    share is NaN; without one, a CAM's Average Drop is (a guided map is never scored, blank or not)."""
    if row.box:
        return math.isnan(scores["energy_in_box"])
    return METHODS[method].kind == "cam" and math.isnan(scores["average_drop"])


def summarise_method(rows: Sequence[Row], method: str) -> MethodSummary:
    scores = [row.scores[method] for row in rows]
    with_box = [(row, s) for row, s in zip(rows, scores) if row.box]
    shares = [s["energy_in_box"] for _, s in with_box if not math.isnan(s["energy_in_box"])]
    return MethodSummary(
        box_shares=shares,
        box_share_mean=_mean(shares),
        box_share_std=statistics.stdev(shares) if len(shares) > 1 else math.nan,
        box_area_mean=_mean([row.box_area for row, _ in with_box]),
        cannot_judge=sum(is_blank_row(row, s, method) for row, s in zip(rows, scores)),
        **{score: _mean([s[score] for s in scores]) for score in SCORES[1:]},
    )


def summarise_groups(rows: Sequence[Row], methods: Iterable[str], grouped: bool) -> list[GroupSummary]:
    """Per group (all images first, then the groups by name when ``grouped``) the summaries."""
    methods = list(methods)
    groups: dict[str, list[Row]] = {}
    if grouped:
        for row in sorted(rows, key=lambda r: r.group):
            groups.setdefault(row.group, []).append(row)
    summaries = []
    for name, members in [(ALL, list(rows)), *groups.items()]:
        good = [row for row in members if row.status == "ok"]
        summaries.append(
            GroupSummary(
                name=name,
                images=len(members),
                audited=len(good),
                predictions=Counter(row.prediction for row in good).most_common(),
                methods={m: summarise_method(good, m) for m in methods},
            )
        )
    return summaries


def write_groups_csv(path: Path, summaries: Sequence[GroupSummary], methods: Sequence[str]) -> None:
    """groups.csv: one row per group; counts say _count, shares are fractions in [0, 1]."""
    header = ["group", "images_count", "audited_count", "top_prediction", "top_prediction_fraction"]
    for m in methods:
        header += [
            f"{m}_energy_in_box_mean_fraction",
            f"{m}_energy_in_box_std_fraction",
            f"{m}_box_area_mean_fraction",
            f"{m}_energy_in_box_count",
            f"{m}_cannot_judge_count",
            f"{m}_average_drop_fraction",
            f"{m}_increase_in_confidence_fraction",
            f"{m}_deletion_auc_fraction",
            f"{m}_insertion_auc_fraction",
        ]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for g in summaries:
            top, count = g.predictions[0] if g.predictions else ("", 0)
            values = [g.name, g.images, g.audited, top, _num(count / g.audited if g.audited else math.nan)]
            for m in methods:
                s = g.methods[m]
                values += [_num(s.box_share_mean), _num(s.box_share_std), _num(s.box_area_mean)]
                values += [len(s.box_shares), s.cannot_judge, _num(s.average_drop)]
                values += [_num(s.increase_in_confidence), _num(s.deletion_auc), _num(s.insertion_auc)]
            writer.writerow(values)


def write_predictions_csv(path: Path, summaries: Sequence[GroupSummary]) -> None:
    """group_predictions.csv: the prediction distribution, one row per (group, class)."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["group", "prediction", "images_count", "share_fraction"])
        for g in summaries:
            for label, count in g.predictions:
                writer.writerow([g.name, label, count, _num(count / g.audited)])


def _num(value: float) -> str:
    return "" if value != value else f"{value:.4f}"
