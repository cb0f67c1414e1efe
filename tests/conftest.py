"""Shared fixtures: tiny hand-built models and the offline default model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from browser_support import CHROMIUM, CHROMIUM_ARGS, streamlit_app
from torch import nn

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).parents[1]


class GapLinear(nn.Module):
    """conv -> ReLU -> global average pool -> linear: the net CAM was defined for."""

    def __init__(self, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def pearson(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Pearson correlation of two maps, flattened, in float64 (NumPy's, independent of ours)."""
    a, b = (np.asarray(torch.as_tensor(v).detach().cpu(), dtype=np.float64).ravel() for v in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


def frozen(model: nn.Module) -> nn.Module:
    """Eval mode and no parameter grads, as the zoo hands models out."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@pytest.fixture
def gap_linear() -> nn.Module:
    torch.manual_seed(0)
    return frozen(GapLinear())


@pytest.fixture(scope="session")
def lite0():
    from models_zoo import load_model

    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def chelsea():
    """The bundled tabby-cat sample (scikit-image's chelsea)."""
    from PIL import Image

    return Image.open(Path(__file__).parents[1] / "assets" / "samples" / "chelsea.jpg").convert("RGB")


def module_state(model: nn.Module) -> dict:
    """Everything an explanation could leave behind on a model: hooks, attributes, flags."""
    return {
        name: (
            sorted(vars(module).keys()),
            len(module._forward_hooks),
            len(module._forward_pre_hooks),
            len(module._backward_hooks),
            len(getattr(module, "_backward_pre_hooks", {})),
            module.training,
            tuple(p.requires_grad for p in module.parameters(recurse=False)),
        )
        for name, module in model.named_modules()
    }


def assert_untouched(model: nn.Module, state_before: dict, weights_before: dict) -> None:
    assert module_state(model) == state_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights_before[key]), key
    assert all(p.grad is None for p in model.parameters())


def run_page(path: str, timeout: float = 120) -> AppTest:
    """Run a Streamlit script (relative to the repository root) headless; it must not raise."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / path), default_timeout=timeout).run()
    assert not at.exception, at.exception
    return at


# ----------------------------------------------------------------------------- real browser
# A `streamlit run` server and Debian's Chromium for each browser test module (test_browser*.py).


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("CAM_ARTIFACTS") or tmp_path_factory.mktemp("browser"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A `streamlit run app.py` server with the shipped settings: its URL and its log file."""
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with log_path.open("w") as log, streamlit_app(log) as (url, _):
        yield url, log_path


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CAM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and CAM_REQUIRE_BROWSER=1 (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
