"""The audit's per-image scores on a hand-built model: each holds, fails or cannot be judged.

The model sees two colour channels (red for the class "red", green against it) through a 1×1
convolution, a ReLU, global average pooling and a linear layer, so its Grad-CAM map is known
exactly: the red pixels. Box share, Average Drop, Increase in Confidence and deletion/insertion
are checked on images where the answer is known, and on a black image whose map is blank.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explainers.services.audit import write_csv
from explainers.services.audit_store import RunStore
from explainers.services.audit_work import AuditSettings, Item, audit_batch
from models_zoo.zoo import Preprocessing

SIDE = 32
LEFT, RIGHT = (0, 0, SIDE // 2, SIDE), (SIDE // 2, 0, SIDE, SIDE)


class RedMinusGreen(nn.Module):
    """logit("red") = mean(red) - mean(green); logit("other") = its negative."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0  # channel 0: red
            self.conv.weight[1, 1] = 1.0  # channel 1: green
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def zoo():
    model = RedMinusGreen().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    preprocess = Preprocessing(resize=SIDE, crop=SIDE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return SimpleNamespace(model=model, preprocess=preprocess, labels=["red", "other"])


def halves(folder: Path, name: str, left: tuple[int, int, int], right: tuple[int, int, int]) -> str:
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[:, : SIDE // 2], pixels[:, SIDE // 2 :] = left, right
    path = folder / name
    Image.fromarray(pixels).save(path)
    return str(path)


def audit(zoo, tmp_path: Path, images: dict[str, tuple], box=LEFT, steps: int = 4):
    settings = AuditSettings("m", None, None, None, None, "relu", ("gradcam",), 0, steps)
    items = [
        Item(i, name, halves(tmp_path, name, *colours), "1-1", box=box)
        for i, (name, colours) in enumerate(images.items())
    ]
    return {row.image: (row, pictures) for row, pictures in audit_batch(zoo, settings, items)}


RED, DIM, GREEN, BLACK = (255, 0, 0), (128, 0, 0), (0, 255, 0), (0, 0, 0)


def test_box_share_holds_fails_and_cannot_judge(zoo, tmp_path):
    inside = audit(zoo, tmp_path, {"red_left.png": (RED, BLACK), "black.png": (BLACK, BLACK)}, box=LEFT)
    outside = audit(zoo, tmp_path, {"red_left.png": (RED, BLACK)}, box=RIGHT)
    row = inside["red_left.png"][0]
    assert row.prediction == "red" and row.box == "0,0,16,32" and row.box_area == 0.5
    assert row.scores["gradcam"]["energy_in_box"] == pytest.approx(1.0)  # the map is the red half
    assert outside["red_left.png"][0].scores["gradcam"]["energy_in_box"] == pytest.approx(0.0)
    blank = inside["black.png"][0]
    assert blank.status == "ok" and math.isnan(blank.scores["gradcam"]["energy_in_box"])  # cannot judge
    assert set(inside["red_left.png"][1]) == {
        "overlays/0000_red_left.png",
        "overlays/0000_red_left_gradcam.png",
    }


def test_average_drop_and_increase_hold_fail_and_cannot_judge(zoo, tmp_path):
    rows = audit(
        zoo,
        tmp_path,
        {
            "red.png": (RED, BLACK),
            "dim.png": (RED, DIM),
            "green.png": (RED, GREEN),
            "black.png": (BLACK, BLACK),
        },
    )
    kept = rows["red.png"][0].scores["gradcam"]
    assert kept["average_drop"] == pytest.approx(0.0, abs=1e-6) and kept["increase_in_confidence"] == 0.0
    # Dim red on the right: the map keeps only the left, so the class score falls, by exactly this.
    a, b = 1.0, 128 / 255
    p = lambda logit: 1 / (1 + math.exp(-2 * logit))  # noqa: E731  two classes, logits l and -l
    expected = (p((a + b) / 2) - p(a / 2)) / p((a + b) / 2)
    dropped = rows["dim.png"][0].scores["gradcam"]
    assert (
        dropped["average_drop"] == pytest.approx(expected, rel=1e-4)
        and dropped["increase_in_confidence"] == 0.0
    )
    # Green (evidence against) on the right: image ⊙ map removes it and the score rises.
    rose = rows["green.png"][0].scores["gradcam"]
    assert rose["average_drop"] == 0.0 and rose["increase_in_confidence"] == 1.0
    blank = rows["black.png"][0].scores["gradcam"]
    assert all(math.isnan(blank[s]) for s in ("average_drop", "increase_in_confidence", "deletion_auc"))


def test_deletion_insertion_measured_or_not(zoo, tmp_path):
    rows = audit(zoo, tmp_path, {"red.png": (RED, BLACK), "black.png": (BLACK, BLACK)}, steps=8)
    scores = rows["red.png"][0].scores["gradcam"]
    # The map ranks the evidence first: deleting it loses the class fast, inserting it gains it fast.
    assert 0 <= scores["deletion_auc"] < scores["insertion_auc"] <= 1
    assert math.isnan(rows["black.png"][0].scores["gradcam"]["insertion_auc"])
    unmeasured = audit(zoo, tmp_path, {"red.png": (RED, BLACK)}, steps=0)["red.png"][0].scores["gradcam"]
    assert math.isnan(unmeasured["deletion_auc"]) and unmeasured["average_drop"] == pytest.approx(
        0.0, abs=1e-6
    )


def test_cannot_judge_is_an_empty_cell_not_a_number(zoo, tmp_path):
    rows = audit(zoo, tmp_path, {"red.png": (RED, BLACK), "black.png": (BLACK, BLACK)})
    store = RunStore(tmp_path / "run", ["gradcam"])
    blank = store.record(rows["black.png"][0])
    assert blank["gradcam_energy_in_box"] == "" and blank["gradcam_average_drop"] == ""
    assert (
        store.row(blank).scores["gradcam"]["energy_in_box"]
        != store.row(blank).scores["gradcam"]["energy_in_box"]
    )
    write_csv(tmp_path / "a.csv", [r for r, _ in rows.values()], ["gradcam"], boxed=True, grouped=False)
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[1].startswith("red.png,ok,,") and ",1.0000," in lines[1]  # box share 1
    assert lines[2] == 'black.png,ok,,"0,0,16,32",red,0.5000,red,0.5000,,,,,'


def test_unreadable_image_gets_a_row_and_the_batch_goes_on(zoo, tmp_path):
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    settings = AuditSettings("m", None, None, None, None, "relu", ("gradcam",), None, 0)
    items = [
        Item(0, "cut.png", str(tmp_path / "cut.png"), "1-1"),
        Item(1, "red.png", halves(tmp_path, "red.png", RED, BLACK), "1-1"),
    ]
    (cut, none), (red, pictures) = audit_batch(zoo, settings, items)
    assert cut.status == "unreadable" and "image" in cut.reason.lower() and none == {}
    assert red.status == "ok" and red.prediction == "red" and len(pictures) == 2
