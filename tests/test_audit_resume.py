"""A stopped audit resumes: kill -9 or a failure mid-run, then the same command ends with one row
per image; other arguments are refused for an unfinished run (--fresh starts over)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import explainers.services.audit as audit
from explainers.services.audit_store import RunStore
from explainers.services.audit_work import Row
from explainers.services.samples import SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--methods", "gradcam", "--steps", "0"]


def photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    samples = sorted(SAMPLES_DIR.glob("*.jpg"))
    for i in range(count):
        shutil.copy(samples[i % len(samples)], folder / f"img{i:02d}.jpg")
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def shards(run: Path) -> list[Path]:
    return sorted((run / "shards").glob("*.csv")) if (run / "shards").is_dir() else []


def test_killed_run_resumes_with_one_row_per_image(tmp_path, capsys):
    folder = photos(tmp_path / "photos", 8)
    out = tmp_path / "out"
    argv = [str(folder), *FAST, "--batch-size", "1", "--out", str(out)]
    child = subprocess.Popen(
        [sys.executable, "-m", "explainers.audit", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = out / "photos"
    try:
        deadline = time.monotonic() + 300
        while len(shards(run)) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # no clean-up of any kind
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    before = len(shards(run))
    assert 2 <= before < 8 and not (run / "audit.csv").exists()

    assert audit.main(argv) == 0
    err = capsys.readouterr().err
    done = int(err.split("resuming ")[1].split(": ")[1].split(" of 8")[0])
    assert done >= before and f"audited {8 - done} images" in err
    rows = read_csv(run / "audit.csv")
    assert [r["image"] for r in rows] == [f"img{i:02d}.jpg" for i in range(8)]  # none lost, none doubled
    assert all(r["status"] == "ok" and r["prediction"] for r in rows)
    assert '"finished": true' in (run / "manifest.json").read_text()


def test_failure_mid_run_then_resume_refuse_and_fresh(tmp_path, capsys, monkeypatch):
    folder = photos(tmp_path / "photos", 5)
    (folder / "broken.png").write_bytes((SAMPLES_DIR / "rocket.jpg").read_bytes()[:2000])
    out = tmp_path / "out"
    argv = [str(folder), *FAST, "--batch-size", "2", "--out", str(out)]
    real, seen, armed = audit.audit_batch, [], [True]

    def failing(zoo, settings, items):
        if armed[0] and len(seen) == 2:
            raise RuntimeError("power cut")
        seen.append([i.name for i in items])
        return real(zoo, settings, items)

    monkeypatch.setattr(audit, "audit_batch", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        audit.main(argv)
    assert seen == [["broken.png", "img00.jpg"], ["img01.jpg", "img02.jpg"]]
    err = capsys.readouterr().err
    assert "skipped broken.png: " in err and "images/s ETA" in err  # the progress line: rate and ETA

    # Other arguments would lose the unfinished run: refused with one line, unless --fresh.
    other = [str(folder), "--methods", "gradcam", "--steps", "1", "--out", str(out)]
    assert audit.main(other) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "holds an unfinished audit with other arguments (--steps 0 there, 1 here)" in err
    )
    assert "--fresh" in err

    seen.clear()
    armed[0] = False
    assert audit.main(argv) == 0
    assert seen == [["img03.jpg", "img04.jpg"]]  # only what was not done
    err = capsys.readouterr().err
    assert "resuming" in err and "4 of 6 images already done" in err
    rows = read_csv(out / "photos" / "audit.csv")
    assert [r["image"] for r in rows] == ["broken.png"] + [f"img{i:02d}.jpg" for i in range(5)]
    assert rows[0]["status"] == "unreadable" and rows[0]["reason"] and rows[0]["prediction"] == ""

    # The same command once more: nothing to do; an image changed since is audited again.
    seen.clear()
    assert audit.main(argv) == 0 and seen == []
    os.utime(folder / "img01.jpg", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert audit.main(argv) == 0 and seen == [["img01.jpg"]]
    assert [r["image"] for r in read_csv(out / "photos" / "audit.csv")][1:3] == ["img00.jpg", "img01.jpg"]

    # --fresh starts over whatever the arguments.
    seen.clear()
    assert audit.main([*argv, "--fresh"]) == 0 and len(seen) == 3
    assert len(read_csv(out / "photos" / "audit.csv")) == 6


def test_shards_are_whole_and_a_row_written_twice_counts_once(tmp_path):
    store = RunStore(tmp_path / "run", ["gradcam"])
    assert store.open({"steps": 0}, {}, fresh=False) == "new"
    scores = {"gradcam": dict.fromkeys(audit.SCORES, 0.5)}
    first = Row(0, "a.jpg", "1-1", prediction="cat", probability=0.9, scores=scores)
    store.write([(first, {"overlays/0000_a.png": b"png"})])
    again = Row(0, "a.jpg", "1-1", prediction="dog", probability=0.8, scores=scores)
    store.write([(again, {}), (Row(1, "b.jpg", "1-1", status="unreadable", reason="cut off"), {})])
    (store.shards / "999-half-written.csv.123.tmp").write_text("index,ima")  # a run killed mid-write
    assert (tmp_path / "run" / "overlays" / "0000_a.png").read_bytes() == b"png"
    done = store.done()
    assert sorted(done) == ["a.jpg", "b.jpg"] and done["a.jpg"].prediction == "dog"  # the later shard
    assert done["a.jpg"].probability == 0.8 and done["b.jpg"].reason == "cut off"
    assert store.open({"steps": 0}, {}, fresh=False) == "resumed"
    assert not list(store.shards.glob("*.tmp")) and len(shards(tmp_path / "run")) == 2
    store.finish(2)
    assert store.open({"steps": 3}, {}, fresh=False) == "replaced"  # a finished run: replaced
    assert store.done() == {} and not (tmp_path / "run" / "overlays" / "0000_a.png").exists()


def test_an_image_left_without_a_row_is_an_error_and_the_next_run_audits_it(tmp_path, capsys, monkeypatch):
    folder = photos(tmp_path / "photos", 3)
    argv = [str(folder), *FAST, "--batch-size", "3", "--out", str(tmp_path / "out")]
    real = audit.audit_batch
    monkeypatch.setattr(audit, "audit_batch", lambda zoo, settings, items: real(zoo, settings, items)[:-1])
    assert audit.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: 1 images have no row in" in err and "(img02.jpg...): run the same command again" in err
    monkeypatch.setattr(audit, "audit_batch", real)
    assert audit.main(argv) == 0
    assert "2 of 3 images already done" in capsys.readouterr().err
    assert [r["image"] for r in read_csv(tmp_path / "out" / "photos" / "audit.csv")] == [
        "img00.jpg",
        "img01.jpg",
        "img02.jpg",
    ]
