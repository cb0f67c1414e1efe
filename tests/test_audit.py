"""Batch audit CLI: CSV, gallery, skipped unreadable images, one-line errors with exit status 2."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from explainers.audit import main
from explainers.samples import SAMPLES_DIR

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
    out = tmp_path / "out"
    status = main([str(folder), "--box", "60,40,180,200", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0
    assert "skipped broken.png" in captured.err and "3/3" in captured.err
    assert "2 of 3 images explained" in captured.out
    rows = {row["image"]: row for row in read_csv(out / "audit.csv")}
    assert list(rows) == ["broken.png", "cat one.jpg", "coffee.jpg"]
    assert rows["broken.png"]["status"].startswith("unreadable") and rows["broken.png"]["prediction"] == ""
    cat = rows["cat one.jpg"]
    assert cat["status"] == "ok" and cat["prediction"] == "tiger cat" and cat["target"] == "tiger cat"
    for method in ("gradcam", "gradcam++"):
        assert 0 <= float(cat[f"{method}_energy_in_box"]) <= 1
        assert 0 <= float(cat[f"{method}_average_drop"]) <= 100
        assert cat[f"{method}_increase_in_confidence"] in ("0.0000", "1.0000")
        assert (
            0 <= float(cat[f"{method}_deletion_auc"]) <= 1 and 0 <= float(cat[f"{method}_insertion_auc"]) <= 1
        )
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
    out = tmp_path / "out"
    argv = [str(folder), "--arch", "resnet18", "--weights", str(tmp_path / "w.safetensors")]
    argv += ["--labels", str(tmp_path / "labels.txt"), "--methods", "gradcam", "--target", "doctor"]
    assert main(argv + ["--steps", "0", "--out", str(out)]) == 0
    (row,) = read_csv(out / "audit.csv")
    assert row["target"] == "doctor" and row["prediction"] in ("nurse", "doctor")
    assert row["gradcam_deletion_auc"] == "" and "gradcam_energy_in_box" not in row  # skipped, no box
    assert "resnet18 (custom)" in (out / "index.html").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "10,10,5,20"], "empty or negative"),
        (["--box", "0,0,300,300"], "outside the model input"),
        (["--methods", "gradcamm"], "Unknown method 'gradcamm'"),
        (["--model", "resnet-18"], "Unknown model"),
        (["--arch", "resnet18"], "needs --weights and --labels"),
        (["--target", "unicorn"], "no class named 'unicorn'"),
        (["--layer", "_bn2"], "no layer named '_bn2'"),
        (["--steps", "-1"], "--steps"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(folder, tmp_path, capsys, extra, message):
    assert main([str(folder), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and err.strip().count("\n") == 0


def test_missing_or_empty_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "No such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    assert main([str(tmp_path / "empty")]) == 2
    assert "No images" in capsys.readouterr().err


def test_command_line_error_has_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "explainers.audit", str(tmp_path), "--box", "1,2,3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
