"""The command line: outputs on a sample, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explainers.services.samples import SAMPLES_DIR

ROOT = Path(__file__).parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "explainers", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's main() in this process (no second PyTorch start-up): status, stdout, stderr."""
    from explainers.__main__ import main

    try:
        status = main(list(args))
    except SystemExit as done:  # argparse's --help and its one-line errors
        status = done.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_explains_a_sample_with_the_defaults(tmp_path):
    done = cli(str(SAMPLES_DIR / "coffee.jpg"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "espresso" in done.stdout and str(tmp_path / "coffee") in done.stdout
    out = tmp_path / "coffee"  # the image's own folder
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["model"] == "efficientnet_lite0" and summary["layer"] == "final"
    assert summary["target"]["label"] == "espresso"
    assert [row["label"] for row in summary["top5"]][0] == "espresso"
    assert len(summary["top5"]) == 5 and summary["device"] == "cpu" and summary["seconds"] > 0
    for stem in ["gradcam", "gradcampp"]:
        assert Image.open(out / f"{stem}.png").size == (224, 224)
        heatmap = np.load(out / f"{stem}.npy")
        assert heatmap.shape == (224, 224) and 0 <= heatmap.min() and heatmap.max() <= 1


def test_layer_target_methods_and_counterfactual(tmp_path, capsys):
    status, _, err = in_process(
        capsys,
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
    assert status == 0, err
    out = tmp_path / "cat_and_coffee"
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["target"]["index"] == 967 and summary["counterfactual"]
    assert (out / "counterfactual_layercam.png").exists()
    assert np.load(out / "counterfactual_hirescam.npy").shape == (224, 224)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg"], "No such image file: missing.jpg"),
        (["README.md"], "README.md: Could not read the image"),
        (["assets"], "assets is a folder"),
        (["{sample}", "--model", "resnet5O"], "Did you mean 'resnet50'"),
        (["{sample}", "--methods", "gradcam,gradcma"], "Unknown method 'gradcma'"),
        (["{sample}", "--layer", "_bn2"], "no layer named '_bn2'"),
        (["{sample}", "--layer", "_fc"], "not a feature map"),
        (["{sample}", "--target", "1000"], "out of range"),
        (["{sample}", "--target", "cat"], "invalid int value"),
        (["{sample}", "--methods", "cam", "--layer", "_bn1"], "global average pooling"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    # In this process: an exception other than the one-line error would fail the test itself.
    args = [a.replace("{sample}", str(SAMPLES_DIR / "chelsea.jpg")) for a in args]
    status, _, err = in_process(capsys, *args, "--out", str(tmp_path))
    assert status == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_bad_input_from_the_shell_is_one_line_without_traceback(tmp_path):
    done = cli("README.md", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: README.md: ") and len(done.stderr.strip().splitlines()) == 1


def test_a_custom_model_from_files(tmp_path, capsys):
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "head.safetensors")
    (tmp_path / "labels.txt").write_text("nurse\ndoctor\nsurgeon\n")
    status, _, err = in_process(
        capsys,
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
    assert status == 0, err
    summary = json.loads((tmp_path / "out" / "grace_hopper" / "predictions.json").read_text())
    assert summary["target"]["label"] in {"nurse", "doctor", "surgeon"} and len(summary["top5"]) == 3
    status, _, err = in_process(capsys, str(SAMPLES_DIR / "grace_hopper.jpg"), "--arch", "resnet18")
    assert status == 2 and "--weights and --labels are missing" in err


def test_runs_on_different_images_stay_apart_and_a_rerun_replaces_its_files(tmp_path, capsys):
    # The README's examples in a row: each image gets its own folder, nothing mixes.
    assert in_process(capsys, str(SAMPLES_DIR / "chelsea.jpg"), "--out", str(tmp_path))[0] == 0
    status, out, err = in_process(
        capsys, str(SAMPLES_DIR / "coffee.jpg"), "--methods", "layercam", "--out", str(tmp_path)
    )
    assert status == 0, err
    assert out.rstrip().endswith(f"-> {tmp_path / 'coffee'}/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chelsea", "coffee"]
    first = sorted(p.name for p in (tmp_path / "chelsea").iterdir())
    assert first == ["gradcam.npy", "gradcam.png", "gradcampp.npy", "gradcampp.png", "predictions.json"]
    assert sorted(p.name for p in (tmp_path / "coffee").iterdir()) == [
        "layercam.npy",
        "layercam.png",
        "predictions.json",
    ]
    # The same image again with other methods: the previous run's maps go, a user's file stays.
    (tmp_path / "chelsea" / "notes.txt").write_text("mine")
    again = in_process(
        capsys, str(SAMPLES_DIR / "chelsea.jpg"), "--methods", "hirescam", "--out", str(tmp_path)
    )
    assert again[0] == 0, again[2]
    assert sorted(p.name for p in (tmp_path / "chelsea").iterdir()) == [
        "hirescam.npy",
        "hirescam.png",
        "notes.txt",
        "predictions.json",
    ]
    assert json.loads((tmp_path / "chelsea" / "predictions.json").read_text())["files"] == [
        "hirescam.png",
        "hirescam.npy",
    ]


def test_run_folder_names():
    from explainers.__main__ import run_folder

    assert run_folder(Path("out"), Path("a/b/cat photo (1).JPG")) == Path("out/cat_photo_1")
    assert run_folder(Path("out"), Path("....png")) == Path("out/image")


@pytest.mark.parametrize(
    "args, named, fix",
    [
        (["{sample}", "--methods", ","], "--methods ','", "--methods gradcam,gradcam++"),
        (["{sample}", "--model", "resnet5O"], "'resnet5O'", "--list-models"),
        (["{sample}", "--weights", "w.pt"], "--labels is missing", "leave out all three"),
        (["{empty}"], "empty.jpg", "save or upload it again"),
        (["{sample}", "--out", "{file}"], "Cannot write to", "Choose a folder you can write to"),
        (["nowhere.jpg"], "nowhere.jpg", "Check the path"),
        (["{folder}"], "is a folder", "python -m explainers.audit"),
    ],
)
def test_errors_name_the_value_and_the_fix(args, named, fix, tmp_path, capsys):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "a_file").write_text("a file where --out wants a folder")
    where = {"{sample}": str(SAMPLES_DIR / "chelsea.jpg"), "{empty}": str(tmp_path / "empty.jpg")}
    where |= {"{file}": str(tmp_path / "a_file"), "{folder}": str(tmp_path)}
    status, _, err = in_process(capsys, *[where.get(a, a) for a in args])
    assert status == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert named in err and fix in err, err


def test_lists_the_models_and_explains_its_output_folders(capsys):
    status, out, _ = in_process(capsys, "--list-models")
    assert status == 0 and out.splitlines()[0] == "efficientnet_lite0" and "resnet50" in out.splitlines()
    status, out, _ = in_process(capsys, "--help")
    assert status == 0 and "OUT/<image name>/" in " ".join(out.split())
    status, _, err = in_process(capsys)
    assert status == 2 and "required: image" in err
