"""An audit's run folder as a resumable store: a manifest, one shard per finished batch, overlays.

    RUN/manifest.json    what the audit is (its arguments, model, layer, methods, versions) and
                         whether it finished
    RUN/shards/*.csv     the rows of each finished batch, full precision, written atomically
    RUN/overlays/*.png   the pictures, written before their batch's shard

A shard is written to a temporary name and renamed once complete, after its pictures, so a run
killed at any moment (kill -9) leaves whole shards only; started again with the same arguments
it skips the images whose row is in a shard and whose file has not changed since (same size
and modification time). The final CSV is assembled from the shards, one row per image of the
folder (the last written, should a batch have been written twice), so none is lost or doubled.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from explainers.errors import ExplainerInputError, reason
from explainers.services.audit_work import SCORES, Row

MANIFEST = "manifest.json"
SHARDS = "shards"
# Files a run writes at the top of its folder; --fresh and a replaced audit remove these only.
OUTPUTS = ("audit.csv", "groups.csv", "group_predictions.csv", "index.html")
_FIXED = ("index", "image", "stamp", "status", "reason", "group", "box", "box_area")
_FIXED += ("prediction", "probability", "target", "target_probability")


class RunStore:
    """The run folder of one audit.

    Args:
        folder: the run folder (created if missing).
        methods: the audited methods (the shards' score columns).
    """

    def __init__(self, folder: Path, methods: Iterable[str]) -> None:
        self.folder = folder
        self.methods = list(methods)
        self.shards = folder / SHARDS
        self.overlays = folder / "overlays"

    # -- the manifest ----------------------------------------------------------------------

    def manifest(self) -> dict | None:
        """The manifest of a previous run in this folder, or None."""
        try:
            return json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable: treated as no run to resume
            return {}

    def open(self, arguments: Mapping[str, object], details: Mapping[str, object], fresh: bool) -> str:
        """Start or resume the audit described by ``arguments`` in this folder.

        The same arguments resume a previous run; different ones replace a finished run (as a new
        audit of a folder always has) and are refused for an unfinished one, which would be
        lost, unless ``fresh``.

        Args:
            arguments: what decides the rows (folder, model, layer, methods, target, boxes,
                groups, steps), as JSON values.
            details: recorded only: model name, versions, engine.
            fresh: discard any previous run.

        Returns:
            "new", "resumed" or "replaced".

        Raises:
            ExplainerInputError: an unfinished run with other arguments, or an unwritable folder.
        """
        previous = self.manifest()
        outcome = "new"
        if previous is not None and not fresh:
            if previous.get("arguments") == dict(arguments):
                outcome = "resumed"
            elif previous.get("finished") or not previous:
                outcome = "replaced"
            else:
                raise ExplainerInputError(
                    f"{self.folder} holds an unfinished audit with other arguments ({difference(previous['arguments'], arguments)}): "
                    "run again with the same arguments to resume it, or add --fresh to discard it."
                )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if outcome != "resumed":
                self.clear()
            self.shards.mkdir(exist_ok=True)
            self.overlays.mkdir(exist_ok=True)
            for leftover in [*self.shards.glob("*.tmp"), *self.overlays.glob("*.tmp")]:
                leftover.unlink()  # a file being written when the run died
            manifest = {"arguments": dict(arguments), **details, "finished": False}
            if outcome == "resumed":
                manifest["started"] = previous.get("started")
                manifest["resumed"] = [*previous.get("resumed", []), _now()]
            else:
                manifest["started"] = _now()
            self._write_manifest(manifest)
        except OSError as error:
            raise ExplainerInputError(
                f"Cannot write to {self.folder}: {reason(error)}. Choose a folder you can write to with --out."
            ) from error
        return outcome

    def finish(self, images: int) -> None:
        """Mark the run finished, with the number of images in its CSV."""
        manifest = self.manifest() or {}
        manifest.update(finished=True, finished_at=_now(), images=images)
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict) -> None:
        _atomic_write(self.folder / MANIFEST, json.dumps(manifest, indent=2).encode("utf-8"))

    def clear(self) -> None:
        """Delete a previous run's files (manifest, shards, overlays, outputs); nothing else."""
        for name in (MANIFEST, *OUTPUTS):
            (self.folder / name).unlink(missing_ok=True)
        if self.shards.is_dir():
            for path in self.shards.iterdir():
                if path.suffix in (".csv", ".tmp"):
                    path.unlink()
        if self.overlays.is_dir():  # overlays are written as overlays/NNNN_*.png
            for path in self.overlays.iterdir():
                if path.is_file() and re.fullmatch(r"\d{4,}_.*\.png", path.name):
                    path.unlink()

    # -- shards ----------------------------------------------------------------------------

    def write(self, results: Iterable[tuple[Row, Mapping[str, bytes]]]) -> list[Row]:
        """Write a finished batch: its pictures, then its rows as one shard (atomically)."""
        rows = []
        for row, pictures in results:
            for relative, data in pictures.items():
                _atomic_write(self.folder / relative, data, sync=False)
            rows.append(row)
        if rows:
            name = f"{time.time_ns()}-{rows[0].index:06d}-{uuid.uuid4().hex[:8]}.csv"
            lines = _ShardLines()
            writer = csv.DictWriter(lines, fieldnames=self.columns())
            writer.writeheader()
            writer.writerows(self.record(row) for row in rows)
            _atomic_write(self.shards / name, "".join(lines).encode("utf-8"))
        return rows

    def done(self) -> dict[str, Row]:
        """The rows in the shards, by image name; a later shard's row wins over an earlier one."""
        rows: dict[str, Row] = {}
        if not self.shards.is_dir():
            return rows
        for path in sorted(self.shards.glob("*.csv")):  # names start with the time written
            try:
                with path.open(newline="", encoding="utf-8") as file:
                    records = list(csv.DictReader(file))
                parsed = [self.row(record) for record in records]
            except (OSError, ValueError, KeyError, csv.Error):
                continue  # a damaged shard: its images are audited again
            rows.update((row.image, row) for row in parsed)
        return rows

    def columns(self) -> list[str]:
        scores = [f"{m}_{s}" for m in self.methods for s in SCORES]
        return [*_FIXED, *scores, "picture_image", *(f"picture_{m}" for m in self.methods)]

    def record(self, row: Row) -> dict[str, str]:
        """A row as a shard's record: floats in full precision (repr), NaN as an empty cell."""
        record = {name: _text(getattr(row, name)) for name in _FIXED}
        for m in self.methods:
            for s in SCORES:
                record[f"{m}_{s}"] = _text(row.scores.get(m, {}).get(s, math.nan))
        for key in ("image", *self.methods):
            record[f"picture_{key}"] = row.pictures.get(key, "")
        return record

    def row(self, record: Mapping[str, str]) -> Row:
        floats = {"box_area", "probability", "target_probability"}
        values = {name: (_float(record[name]) if name in floats else record[name]) for name in _FIXED}
        values["index"] = int(values["index"])
        row = Row(**values)
        if row.status == "ok":
            row.scores = {m: {s: _float(record[f"{m}_{s}"]) for s in SCORES} for m in self.methods}
            row.pictures = {k: record[f"picture_{k}"] for k in ("image", *self.methods)}
        return row


class _ShardLines(list):
    """A list that csv.writer can write lines into."""

    def write(self, text: str) -> None:
        self.append(text)


def difference(before: Mapping[str, object], now: Mapping[str, object]) -> str:
    """The first argument that differs, as "--steps 16 there, 2 here"."""
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            return f"--{key.replace('_', '-')} {_shown(before.get(key))} there, {_shown(now.get(key))} here"
    return "none"


def _shown(value: object) -> str:
    if value is None:
        return "(not given)"
    if isinstance(value, dict):
        return str(value.get("path", value))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _atomic_write(path: Path, data: bytes, sync: bool = True) -> None:
    """Write a file whole or not at all: to a temporary name, then renamed over the target."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        if sync:
            file.flush()
            os.fsync(file.fileno())
    os.replace(temporary, path)


def _text(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _float(text: str) -> float:
    return float(text) if text != "" else math.nan


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
