"""The command line: outputs on a sample, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explainers.samples import SAMPLES_DIR

ROOT = Path(__file__).parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "explainers", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_explains_a_sample_with_the_defaults(tmp_path):
    done = cli(str(SAMPLES_DIR / "coffee.jpg"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "espresso" in done.stdout
    summary = json.loads((tmp_path / "predictions.json").read_text())
    assert summary["model"] == "efficientnet_lite0" and summary["layer"] == "final"
    assert summary["target"]["label"] == "espresso"
    assert [row["label"] for row in summary["top5"]][0] == "espresso"
    assert len(summary["top5"]) == 5 and summary["device"] == "cpu" and summary["seconds"] > 0
    for stem in ["gradcam", "gradcampp"]:
        assert Image.open(tmp_path / f"{stem}.png").size == (224, 224)
        heatmap = np.load(tmp_path / f"{stem}.npy")
        assert heatmap.shape == (224, 224) and 0 <= heatmap.min() and heatmap.max() <= 1


def test_layer_target_methods_and_counterfactual(tmp_path):
    done = cli(
        str(SAMPLES_DIR / "cat_and_coffee.jpg"),
        "--layer",
        "_blocks.12",
        "--target",
        "967",
        "--methods",
        "layercam,hirescam",
        "--counterfactual",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "predictions.json").read_text())
    assert summary["target"]["index"] == 967 and summary["counterfactual"]
    assert (tmp_path / "counterfactual_layercam.png").exists()
    assert np.load(tmp_path / "counterfactual_hirescam.npy").shape == (224, 224)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg"], "No such image file"),
        (["README.md"], "image"),
        (["{sample}", "--model", "resnet5O"], "Did you mean 'resnet50'"),
        (["{sample}", "--methods", "gradcam,gradcma"], "Unknown method 'gradcma'"),
        (["{sample}", "--layer", "_bn2"], "no layer named '_bn2'"),
        (["{sample}", "--layer", "_fc"], "not a feature map"),
        (["{sample}", "--target", "1000"], "out of range"),
        (["{sample}", "--target", "cat"], "invalid int value"),
        (["{sample}", "--methods", "cam", "--layer", "_bn1"], "global average pooling"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    args = [a.replace("{sample}", str(SAMPLES_DIR / "chelsea.jpg")) for a in args]
    done = cli(*args, "--out", str(tmp_path))
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_custom_model_from_files(tmp_path):
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "head.safetensors")
    (tmp_path / "labels.txt").write_text("nurse\ndoctor\nsurgeon\n")
    done = cli(
        str(SAMPLES_DIR / "grace_hopper.jpg"),
        "--arch",
        "resnet18",
        "--weights",
        str(tmp_path / "head.safetensors"),
        "--labels",
        str(tmp_path / "labels.txt"),
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["target"]["label"] in {"nurse", "doctor", "surgeon"} and len(summary["top5"]) == 3
    incomplete = cli(str(SAMPLES_DIR / "grace_hopper.jpg"), "--arch", "resnet18")
    assert incomplete.returncode == 2 and "needs --weights and --labels" in incomplete.stderr
