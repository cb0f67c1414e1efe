"""In a real browser: a fine-tuned model larger than the image limit is uploaded and explained.

A ResNet-18 with a Dropout + Linear head (the common fine-tune) and 2 classes is 45 MB as
safetensors: above the images' 20 MB limit, under the weights uploader's 1 GB. Random weights,
written to a temporary folder (never committed). Needs Chromium, like test_browser.py.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from browser_support import assert_no_exception, wait_until_idle
from safetensors.torch import save_file
from torch import nn

pytestmark = pytest.mark.browser

SLOW_MS = 180_000
VIEWPORT = {"width": 1440, "height": 2000}


@pytest.fixture
def resnet18_files(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 2))
    weights = tmp_path / "nurse_doctor.safetensors"
    save_file(model.state_dict(), weights)
    labels = tmp_path / "classes.txt"
    labels.write_text("nurse\ndoctor\n")
    return weights, labels


def uploader(page, label: str):
    return page.locator('[data-testid="stFileUploader"]', has_text=label).locator('input[type="file"]')


def test_a_45_mb_fine_tuned_resnet18_is_uploaded_and_explained(browser, server, artifacts, resnet18_files):
    weights, labels = resnet18_files
    assert weights.stat().st_size > 44e6  # over the images' 20 MB limit
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(SLOW_MS)
    page.goto(server)
    captions = page.locator('[data-testid="stImageCaption"]')
    captions.filter(has_text="Grad-CAM · ").first.wait_for()
    wait_until_idle(page)

    page.get_by_role("combobox", name="Classifier").click()
    page.keyboard.type("Custom")  # the list is long and drawn lazily: filter it
    page.get_by_role("option", name="Custom (upload)").click()
    page.get_by_text("up to 1 GB").first.wait_for()  # the weights uploader states its own limit
    wait_until_idle(page)
    uploader(page, "Weights").set_input_files(weights)
    uploads = page.locator('[data-testid="stFileUploader"]', has_text="Weights")
    uploads.get_by_text("44.8MB").wait_for()  # uploaded (the name is shortened on screen)
    wait_until_idle(page)
    uploader(page, "Class names").set_input_files(labels)

    captions.filter(has_text="as resnet18 (custom) sees it").first.wait_for()
    for title in ("Grad-CAM", "Grad-CAM++", "LayerCAM"):
        captions.filter(has_text=f"{title} · ").first.wait_for()
    wait_until_idle(page)
    assert_no_exception(page)
    assert page.locator('[data-testid="stAlert"]').filter(has_text="must be").count() == 0
    shown = captions.all_inner_texts()
    maps = [c for c in shown if c.startswith("Grad-CAM · ")]
    assert maps and all(("nurse" in c) or ("doctor" in c) for c in maps), shown
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_by_text("nurse (").count() and sidebar.get_by_text("doctor (").count()
    page.get_by_text("as your model sees it").first.wait_for()
    page.screenshot(path=artifacts / "custom-model.png", full_page=True)
    page.context.close()
