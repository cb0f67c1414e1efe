"""Batch audit CLI: CSV, gallery, skipped unreadable images, one-line errors with exit status 2."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from explainers.services.audit import main
from explainers.services.samples import SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES_DIR / "chelsea.jpg", images / "cat one.jpg")
    shutil.copy(SAMPLES_DIR / "coffee.jpg", images / "coffee.jpg")
    (images / "broken.png").write_bytes((SAMPLES_DIR / "rocket.jpg").read_bytes()[:2000])
    (images / "notes.txt").write_text("not an image, not listed")
    return images


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_audit_folder_with_box(folder, tmp_path, capsys):
    status = main([str(folder), "--box", "60,40,180,200", "--steps", "2", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert status == 0
    out = tmp_path / "out" / "images"  # the audited folder's own run folder
    assert "skipped broken.png" in captured.err and "3/3" in captured.err
    assert "2 of 3 images explained" in captured.out and str(out / "audit.csv") in captured.out
    rows = {row["image"]: row for row in read_csv(out / "audit.csv")}
    assert list(rows) == ["broken.png", "cat one.jpg", "coffee.jpg"]
    broken = rows["broken.png"]
    assert broken["status"] == "unreadable" and "truncated" in broken["reason"] and broken["prediction"] == ""
    cat = rows["cat one.jpg"]
    assert cat["status"] == "ok" and cat["prediction"] == "tiger cat" and cat["target"] == "tiger cat"
    for method in ("gradcam", "gradcam++"):
        assert 0 <= float(cat[f"{method}_energy_in_box_fraction"]) <= 1
        assert 0 <= float(cat[f"{method}_average_drop_fraction"]) <= 1
        assert cat[f"{method}_increase_in_confidence_flag"] in ("0", "1")
        assert 0 <= float(cat[f"{method}_deletion_auc_fraction"]) <= 1
        assert 0 <= float(cat[f"{method}_insertion_auc_fraction"]) <= 1
    page = (out / "index.html").read_text()
    assert "cat one.jpg" in page and "broken.png" in page and "Grad-CAM++" in page
    for link in (
        "overlays/0001_cat_one.png",
        "overlays/0001_cat_one_gradcam.png",
        "overlays/0002_coffee_gradcampp.png",
    ):
        assert f'src="{link}"' in page and (out / link).is_file()


def test_audit_custom_model_with_a_target(folder, tmp_path, capsys):
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "w.safetensors")
    (tmp_path / "labels.txt").write_text("nurse\ndoctor\n")
    (folder / "broken.png").unlink()
    (folder / "coffee.jpg").unlink()
    argv = [str(folder), "--arch", "resnet18", "--weights", str(tmp_path / "w.safetensors")]
    argv += ["--labels", str(tmp_path / "labels.txt"), "--methods", "gradcam", "--target", "doctor"]
    assert main(argv + ["--steps", "0", "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "images"
    (row,) = read_csv(out / "audit.csv")
    assert row["target"] == "doctor" and row["prediction"] in ("nurse", "doctor")
    assert row["gradcam_deletion_auc_fraction"] == ""  # --steps 0: not computed
    assert not any("energy_in_box" in column for column in row)  # no box
    assert "resnet18 (custom)" in (out / "index.html").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "10,10,5,20"], "empty or negative"),
        (
            ["--box", "0,0,300,300"],
            "--box 0,0,300,300 reaches outside the model input, 224×224: keep x1 <= 224",
        ),
        (["--methods", "gradcamm"], "Unknown method 'gradcamm'"),
        (["--model", "resnet-18"], "Unknown model"),
        (["--arch", "resnet18"], "needs --weights and --labels"),
        (["--target", "unicorn"], "no class named 'unicorn'"),
        (["--layer", "_bn2"], "no layer named '_bn2'"),
        (["--steps", "-1"], "--steps -1: give 0 or more"),
        (["--batch-size", "0"], "--batch-size 0: give 1 or more"),
        (["--workers", "0"], "--workers 0: give 1 or more Ray actors"),
        (
            ["--group-by", "label"],
            "--group-by names a column of the groups file: give the file with --groups",
        ),
        (["--groups", "nowhere.csv"], "--groups nowhere.csv: no such file"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(folder, tmp_path, capsys, extra, message):
    assert main([str(folder), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and err.strip().count("\n") == 0


def test_missing_or_empty_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert f"No such folder: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    assert main([str(tmp_path / "empty")]) == 2
    assert "subfolders are not searched" in capsys.readouterr().err
    assert main([str(tmp_path / "empty" / "readme.md")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_command_line_error_has_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "explainers.services.audit", str(tmp_path), "--box", "1,2,3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_units_stated_non_images_listed_and_audits_kept_apart(folder, tmp_path, capsys):
    (folder / "broken.png").unlink()
    (folder / "README.md").write_text("# my photos")
    (folder / "more").mkdir()
    out = tmp_path / "out"
    assert main([str(folder), "--methods", "gradcam", "--steps", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    err = captured.err
    # Every entry that is not audited is named, on one line, before the progress bar.
    (note,) = [line for line in err.splitlines() if line.startswith("skipped 3 entries")]
    assert note.endswith(": README.md, more/, notes.txt")
    assert "README.md, more/, notes.txt" in (out / "images" / "index.html").read_text()
    # One unit throughout: each number column names it, and the values are fractions (or 0/1 flags).
    rows = read_csv(out / "images" / "audit.csv")
    numeric = [c for c in rows[0] if c not in ("image", "status", "reason", "prediction", "target")]
    assert numeric and all(c.endswith(("_fraction", "_flag")) for c in numeric)
    assert all(0 <= float(row[c]) <= 1 for row in rows for c in numeric)
    # The drops as fractions average to the folder's Average Drop, which the terminal prints in %.
    drops = [float(row["gradcam_average_drop_fraction"]) for row in rows]
    printed = float(re.search(r"gradcam: Average Drop ([\d.]+)%", captured.out).group(1))
    assert abs(100 * sum(drops) / len(drops) - printed) <= 0.05 + 1e-9
    # A second folder into the same --out gets its own run folder; nothing of the first is touched.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(SAMPLES_DIR / "rocket.jpg", other / "rocket.jpg")
    assert main([str(other), "--methods", "gradcam", "--steps", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["images", "other"]
    assert [
        float(row["gradcam_average_drop_fraction"]) for row in read_csv(out / "images" / "audit.csv")
    ] == drops
    assert sorted(p.name for p in (out / "other" / "overlays").iterdir()) == [
        "0000_rocket.png",
        "0000_rocket_gradcam.png",
    ]
    # The same folder again, with fewer images: the old overlays go.
    (folder / "coffee.jpg").unlink()
    assert main([str(folder), "--methods", "gradcam", "--steps", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "images" / "overlays").iterdir()) == [
        "0000_cat_one.png",
        "0000_cat_one_gradcam.png",
    ]


def test_html_is_styled_inline_and_full_width(folder, tmp_path):
    (folder / "broken.png").unlink()
    (folder / "coffee.jpg").unlink()
    assert main([str(folder), "--methods", "gradcam", "--steps", "0", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "images" / "index.html").read_text()
    assert "<style>" in page and "table{width:100%" in page and 'name="viewport"' in page
    # Offline: no stylesheet, font or script from elsewhere (plotly's JavaScript is inline).
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=[\"']?(https?:)?//", page)


def test_an_empty_group_cell_and_an_unlisted_image_are_named_apart(folder, tmp_path, capsys):
    groups = tmp_path / "groups.csv"
    groups.write_text("image,label\ncat one.jpg,\nbroken.png,cats\n", encoding="utf-8")
    out = tmp_path / "out"
    status = main(
        [str(folder), "--groups", str(groups), "--group-by", "label", "--steps", "0", "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert status == 0
    rows = {row["image"]: row for row in read_csv(out / "images" / "audit.csv")}
    assert rows["cat one.jpg"]["group"] == "(empty group cell)"
    assert rows["coffee.jpg"]["group"] == "(not in the groups file)"
    assert rows["broken.png"]["group"] == "cats"
    assert "1 images are not in" in captured.err and "coffee.jpg" in captured.err
