"""Bring your own model: fine-tuning heads, timm, exported programs, grayscale input, the models
folder and its cards. Every model is built here with random weights; no weights are committed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file
from torch import nn

from explainers import METHODS, explain
from explainers.services.service import run_explanation
from models_zoo import Preprocessing
from models_zoo.custom import (
    EXPORT_SNIPPET,
    ArchitectureMismatchError,
    ClassCountError,
    CustomModelError,
    UnsafeWeightsError,
    load_custom_model,
    preprocessing_from,
    read_labels,
)
from models_zoo.folder import CardError, list_folder_models, load_folder_model, load_named, models_dir
from models_zoo.heads import fit_head

ROOT = Path(__file__).parents[1]
CAMS = [name for name, method in METHODS.items() if method.kind == "cam"]
timm = pytest.importorskip("timm")


def resnet18_with(head: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    model.fc = head
    return model.eval()


def assert_same_outputs(zoo, reference: nn.Module, channels: int = 3, size: int = 96) -> None:
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(zoo.model(x), reference(x), atol=1e-4)


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize(
    "head, description",
    [
        (nn.Sequential(nn.Dropout(0.3), nn.Linear(512, 2)), "Dropout → Linear(512, 2)"),
        (
            nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 2)),
            "Linear(512, 64) → ReLU → Linear(64, 2)",
        ),
        (
            nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 2)),
            "Linear(512, 64) → ReLU → Dropout → Linear(64, 2)",
        ),
        (
            nn.Sequential(nn.Dropout(), nn.Linear(512, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 2)),
            "Dropout → Linear(512, 64) → ReLU → Dropout → Linear(64, 2)",
        ),
    ],
)
def test_fine_tuning_heads_are_read_off_the_weights_and_predict_as_the_original(head, description):
    reference = resnet18_with(head)
    state = reference.state_dict()
    assert fit_head(torchvision.models.resnet18(num_classes=2), state).description == description
    zoo = load_custom_model("resnet18", save_safetensors(state), ["nurse", "doctor"], device="cpu")
    assert zoo.labels == ("nurse", "doctor")
    assert_same_outputs(zoo, reference)


def test_a_plain_linear_where_torchvision_has_dropout_plus_linear():
    torch.manual_seed(0)
    reference = torchvision.models.efficientnet_b0()
    reference.classifier = nn.Linear(1280, 2)  # replaces Sequential(Dropout, Linear): keys classifier.*
    zoo = load_custom_model(
        "efficientnet_b0", save_safetensors(reference.eval().state_dict()), ["a", "b"], device="cpu"
    )
    assert_same_outputs(zoo, reference.eval())


def test_an_unsupported_head_names_the_keys_that_did_not_fit():
    state = resnet18_with(
        nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.Linear(64, 2))
    ).state_dict()
    with pytest.raises(ArchitectureMismatchError) as caught:
        load_custom_model("resnet18", save_safetensors(state), ["a", "b"])
    message = str(caught.value)
    assert (
        "\n" not in message and "fc.1.running_mean" in message and "Linear-ReLU-(Dropout)-Linear" in message
    )


def test_a_head_with_the_wrong_class_count_is_named():
    state = resnet18_with(nn.Sequential(nn.Dropout(), nn.Linear(512, 3))).state_dict()
    with pytest.raises(
        ClassCountError, match=r"head \(fc: Dropout → Linear\(512, 3\)\) has 3 outputs.*lists 2"
    ):
        load_custom_model("resnet18", save_safetensors(state), ["a", "b"])


def test_a_head_that_does_not_take_the_backbone_features():
    state = resnet18_with(nn.Sequential(nn.Dropout(), nn.Linear(256, 2))).state_dict()
    state["fc.1.weight"] = torch.zeros(2, 256)
    with pytest.raises(ArchitectureMismatchError, match="takes 256 features but the backbone gives 512"):
        load_custom_model("resnet18", save_safetensors(state), ["a", "b"])


# ----------------------------------------------------------------------------- timm


def timm_two_classes(name: str = "efficientnet_b0") -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=2).eval()


def test_a_timm_model_with_its_own_preprocessing_and_a_replaced_head():
    reference = timm_two_classes()
    reference.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 2))  # a common fine-tune
    zoo = load_custom_model(
        "timm/efficientnet_b0", save_safetensors(reference.state_dict()), ["cat", "dog"], device="cpu"
    )
    cfg = reference.pretrained_cfg  # resize = crop / crop_pct, bicubic, timm's statistics
    assert zoo.preprocess.crop == cfg["input_size"][-1] == 224
    assert zoo.preprocess.resize == int(224 / cfg["crop_pct"]) == 256
    assert zoo.preprocess.interpolation.value == cfg["interpolation"] == "bicubic"
    assert zoo.preprocess.mean == pytest.approx(cfg["mean"]) and zoo.preprocess.std == pytest.approx(
        cfg["std"]
    )
    assert_same_outputs(zoo, reference.eval())
    x = zoo.preprocess(Image.open(ROOT / "assets" / "samples" / "chelsea.jpg"))
    result = explain(zoo.model, x, zoo.default_layer, ["gradcam"])
    assert result.maps["gradcam"].shape[-2:] == (224, 224) and torch.isfinite(result.maps["gradcam"]).all()


def test_timm_and_torchvision_names_are_told_apart():
    state = save_safetensors(timm_two_classes("resnet18").state_dict())
    with pytest.raises(
        CustomModelError, match="Unknown timm architecture 'resnet81'. Did you mean 'resnet18'"
    ):
        load_custom_model("timm/resnet81", state, ["a", "b"])
    with pytest.raises(CustomModelError, match="For timm's resnet10t, write timm/resnet10t"):
        load_custom_model("resnet10t", state, ["a", "b"])


# ----------------------------------------------------------------------------- exported programs


class FunctionalCNN(nn.Module):
    """A small custom CNN with a functional ReLU inside its forward (no module to hook there)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.act(self.bn(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def exported(model: nn.Module, size: int = 64, dynamic: bool = True) -> bytes:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model, (torch.randn(2, 3, size, size),), dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    model = FunctionalCNN().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def test_an_exported_program_works_with_every_cam_and_matches_the_eager_model(cnn, chelsea):
    zoo = load_custom_model(None, exported(cnn), ["stripes", "dots"], device="cpu")
    assert zoo.name == "exported program (custom)" and zoo.input_size == (64, 64)  # from the program
    assert isinstance(zoo.model.fc, nn.Linear)  # given back to CAM, which needs the classifier
    x = zoo.preprocess(chelsea)
    nonzero = 0
    for target in (0, 1):  # a random net's Grad-CAM can be all zero for one class, not for both
        ours = explain(zoo.model, x, "act", CAMS, target=target)
        eager = explain(cnn, x, "act", CAMS, target=target)  # the same methods on the original: the oracle
        assert set(ours.maps) == set(CAMS)
        for name in CAMS:
            assert torch.allclose(ours.maps[name], eager.maps[name], atol=1e-4), (name, target)
        nonzero += int(ours.maps["gradcam"].std() > 0)
    assert nonzero


def test_an_exported_program_has_a_final_feature_map_and_guided_maps(cnn, chelsea):
    """Its ATen calls (aten.relu, aten.adaptive_avg_pool2d) are seen as the eager model's are."""
    zoo = load_custom_model(None, exported(cnn), ["stripes", "dots"], device="cpu")
    assert zoo.default_layer == "final" and zoo.layers()[0].rectified
    x = zoo.preprocess(chelsea)
    methods = [*CAMS, "guided_backprop", "deconvnet", "guided_gradcam"]
    for target in (0, 1):
        ours = explain(zoo.model, x, "final", methods, target=target)
        eager = explain(cnn, x, "final", methods, target=target)
        for name in methods:
            assert torch.allclose(ours.maps[name], eager.maps[name], atol=1e-4), (name, target)


def test_an_exported_program_in_the_service_layer(cnn, chelsea):
    zoo = load_custom_model(None, exported(cnn), ["stripes", "dots"], device="cpu")
    result = run_explanation(zoo, chelsea, "act", CAMS, None, False)
    assert set(result.maps) == set(CAMS) and not result.errors


def test_an_exported_program_with_a_fixed_batch_or_another_class_count(cnn):
    with pytest.raises(CustomModelError, match="fixed batch size of 2.*dynamic_shapes"):
        load_custom_model(None, exported(cnn, dynamic=False), ["a", "b"])
    with pytest.raises(ClassCountError, match="exported program has 2 outputs.*lists 3"):
        load_custom_model(None, exported(cnn), ["a", "b", "c"])
    with pytest.raises(CustomModelError, match="takes 64×64 inputs.*set the size to 64"):
        load_custom_model(None, exported(cnn), ["a", "b"], preprocessing={"size": 128})


def test_loading_a_program_leaves_torch_load_as_it_was(cnn):
    before = torch.load
    load_custom_model(None, exported(cnn), ["a", "b"], device="cpu")
    assert torch.load is before


def test_a_pickled_whole_model_is_refused_with_the_export_snippet(cnn):
    buffer = io.BytesIO()
    torch.save(cnn, buffer)
    with pytest.raises(UnsafeWeightsError) as caught:
        load_custom_model("resnet18", buffer.getvalue(), ["a", "b"])
    assert EXPORT_SNIPPET in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- grayscale, preprocessing


def grayscale_resnet18() -> nn.Module:
    model = resnet18_with(nn.Linear(512, 2))
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model.eval()


def test_a_grayscale_model_at_320_px_with_mean_and_std_one_half(tmp_path, chelsea):
    reference = grayscale_resnet18()
    zoo = load_custom_model(
        "resnet18",
        save_safetensors(reference.state_dict()),
        ["normal", "pneumonia"],
        preprocessing={"size": 320, "mean": 0.5, "std": 0.5, "channels": 1, "policy": "squash"},
        device="cpu",
    )
    assert zoo.input_size == (320, 320) and zoo.preprocess.channels == 1
    x = zoo.preprocess(chelsea)
    # By hand: luminance, squashed to 320×320, (v - 0.5) / 0.5.
    gray = np.asarray(chelsea.convert("L").convert("RGB").resize((320, 320), Image.BILINEAR).convert("L"))
    assert x.shape == (1, 1, 320, 320)
    assert np.abs(x[0, 0].numpy() - (gray / 255 - 0.5) / 0.5).max() < 0.05
    assert_same_outputs(zoo, reference, channels=1, size=320)
    result = run_explanation(
        zoo, chelsea, zoo.default_layer, ["gradcam", "layercam", "guided_backprop"], None, False
    )
    assert result.image.shape == (320, 320, 3) and set(result.maps) == {
        "gradcam",
        "layercam",
        "guided_backprop",
    }
    assert "320×320 grayscale" in zoo.preprocess.describe()


def test_grayscale_weights_with_rgb_preprocessing_are_named():
    with pytest.raises(ArchitectureMismatchError, match="1-channel input.*set channels to 1"):
        load_custom_model(
            "resnet18",
            save_safetensors(grayscale_resnet18().state_dict()),
            ["a", "b"],
            preprocessing={"channels": 3},
        )


def test_grayscale_is_read_off_the_weights_when_not_given():
    zoo = load_custom_model(
        "resnet18", save_safetensors(grayscale_resnet18().state_dict()), ["a", "b"], device="cpu"
    )
    assert zoo.preprocess.channels == 1 and len(zoo.preprocess.mean) == 1


def test_preprocessing_changes_and_their_errors():
    base = Preprocessing(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    bigger = preprocessing_from(base, {"size": 384})
    assert (bigger.crop, bigger.resize, bigger.mean) == (384, 439, base.mean)  # resize in proportion
    for bad, message in [
        ({"sise": 224}, "unknown key.*'sise'.*Did you mean 'size'"),
        ({"size": 8}, "size must be"),
        ({"mean": [0.5, 0.5]}, "mean must be one number or 3"),
        ({"std": 0}, "std must be positive"),
        ({"channels": 2}, "channels must be 1"),
        ({"policy": "pad"}, "policy must be 'crop' or 'squash'"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
    ]:
        with pytest.raises(CustomModelError, match=message):
            preprocessing_from(base, bad)


def test_boxes_land_where_each_policy_puts_them():
    crop = Preprocessing(resize=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    # 512×256 image: scaled by 1, the centre crop starts at x = (512 - 224) / 2 = 144, y = 16.
    assert crop.to_crop((144, 16, 368, 240), (512, 256)) == (0, 0, 224, 224)
    squash = Preprocessing(resize=224, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3, policy="squash")
    assert squash.to_crop((0, 0, 512, 256), (512, 256)) == (0, 0, 224, 224)


def test_a_missing_class_names_file_is_named_with_the_fix(tmp_path):
    missing = tmp_path / "classes.txt"
    with pytest.raises(CustomModelError) as caught:
        read_labels(missing)
    message = str(caught.value)
    assert str(missing) in message and "no such file" in message and "Check the path" in message


# ----------------------------------------------------------------------------- the models folder


def write_card(folder: Path, name: str, card: dict, weights: bytes | None = None) -> Path:
    if weights is not None:
        (folder / f"{name}.safetensors").write_bytes(weights)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card))
    return path


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAM_MODELS_DIR", str(tmp_path))
    return tmp_path


def test_the_folder_comes_from_the_flag_the_environment_or_home(tmp_path, monkeypatch):
    monkeypatch.delenv("CAM_MODELS_DIR", raising=False)
    assert models_dir() == Path.home() / ".cam-explorer" / "models"
    monkeypatch.setenv("CAM_MODELS_DIR", str(tmp_path / "env"))
    assert models_dir() == tmp_path / "env" and models_dir(tmp_path / "flag") == tmp_path / "flag"
    assert list_folder_models(tmp_path / "missing") == []


def test_a_card_with_a_classes_file_and_its_own_preprocessing(folder):
    reference = resnet18_with(nn.Sequential(nn.Dropout(), nn.Linear(512, 2)))
    (folder / "classes.txt").write_text("nurse\ndoctor\n")
    card = {
        "architecture": "resnet18",
        "weights": "nurse_doctor.safetensors",
        "classes": "classes.txt",
        "preprocessing": {"size": 256, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "default_layer": "layer3",
    }
    write_card(folder, "nurse_doctor", card, save_safetensors(reference.state_dict()))
    assert list_folder_models() == ["nurse_doctor"]
    zoo = load_named("nurse_doctor")
    assert zoo.name == "nurse_doctor" and zoo.labels == ("nurse", "doctor") and zoo.default_layer == "layer3"
    assert zoo.input_size == (256, 256) and zoo.preprocess.mean == (0.5, 0.5, 0.5)
    assert_same_outputs(zoo, reference)


def test_a_yaml_card_and_a_pt2_without_architecture(folder, cnn):
    pytest.importorskip("yaml")
    (folder / "cnn.pt2").write_bytes(exported(cnn))
    (folder / "cnn.yaml").write_text("weights: cnn.pt2\nclasses: [stripes, dots]\ndefault_layer: act\n")
    zoo = load_folder_model("cnn")
    assert zoo.labels == ("stripes", "dots") and zoo.default_layer == "act"


@pytest.mark.parametrize(
    "card, message",
    [
        ({"architecture": "resnet18", "weights": "m.safetensors"}, "missing key(s) 'classes'"),
        ({"architecture": "resnet18", "classes": ["a", "b"]}, "missing key(s) 'weights'"),
        (
            {"architecture": "resnet18", "weights": "m.safetensors", "classes": ["a", "b"], "clases": []},
            "unknown key(s) 'clases'. Did you mean 'classes'",
        ),
        (
            {"architecture": "resnet18", "weights": "m.safetensors", "classes": ["a", "b", "c"]},
            "has 2 outputs, but the class-names file lists 3",
        ),
        (
            {"architecture": "resnet81", "weights": "m.safetensors", "classes": ["a", "b"]},
            "Unknown architecture 'resnet81'. Did you mean 'resnet18'",
        ),
        ({"weights": "m.safetensors", "classes": ["a", "b"]}, "No architecture given"),
        (
            {"architecture": "resnet18", "weights": "gone.safetensors", "classes": ["a", "b"]},
            "the weights file",
        ),
        (
            {"architecture": "resnet18", "weights": "m.safetensors", "classes": "gone.txt"},
            "the classes file",
        ),
        (
            {
                "architecture": "resnet18",
                "weights": "m.safetensors",
                "classes": ["a", "b"],
                "preprocessing": {"size": 1},
            },
            "size must be",
        ),
    ],
)
def test_bad_cards_each_get_one_clear_line(folder, card, message):
    weights = save_safetensors(resnet18_with(nn.Sequential(nn.Dropout(), nn.Linear(512, 2))).state_dict())
    write_card(folder, "m", card, weights)
    with pytest.raises(CardError) as caught:
        load_named("m")
    text = str(caught.value)
    assert text.startswith("Model card m.json: ") and message in text and "\n" not in text


def test_a_card_that_is_not_json_or_takes_a_builtin_name(folder):
    (folder / "broken.json").write_text("{architecture: resnet18")
    with pytest.raises(CardError, match="Model card broken.json: not valid JSON"):
        load_named("broken")
    write_card(folder, "resnet50", {"architecture": "resnet50", "weights": "w", "classes": ["a", "b"]})
    with pytest.raises(CardError, match="'resnet50' is a built-in model's name; rename the card"):
        load_named("resnet50")


def test_the_cli_explains_a_folder_model_by_name(folder, tmp_path, capsys):
    from explainers.__main__ import main

    reference = timm_two_classes()
    save_file(reference.state_dict(), folder / "effnet.safetensors")
    card = {
        "architecture": "timm/efficientnet_b0",
        "weights": "effnet.safetensors",
        "classes": ["cat", "dog"],
    }
    (folder / "effnet.json").write_text(json.dumps(card))
    image = str(ROOT / "assets" / "samples" / "chelsea.jpg")
    out = tmp_path / "out"
    assert main([image, "--model", "effnet", "--models-dir", str(folder), "--out", str(out)]) == 0
    summary = json.loads((out / "chelsea" / "predictions.json").read_text())  # the image's own folder
    assert summary["model"] == "effnet" and {p["label"] for p in summary["top5"]} == {"cat", "dog"}
    assert main([image, "--model", "efnet", "--models-dir", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Did you mean 'effnet'" in err and "\n" not in err


@pytest.mark.slow
def test_a_resnet50_sized_state_dict_loads_from_the_models_folder(folder):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    reference.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(2048, 2))
    save_file(reference.eval().state_dict(), folder / "big.safetensors")
    assert (folder / "big.safetensors").stat().st_size > 90e6  # ResNet-50 sized: 94 MB
    write_card(
        folder, "big", {"architecture": "resnet50", "weights": "big.safetensors", "classes": ["a", "b"]}
    )
    zoo = load_named("big", device="cpu")
    assert zoo.default_layer and zoo.labels == ("a", "b")
    assert_same_outputs(zoo, reference.eval())


# ----------------------------------------------------------------------------- in the app (AppTest)


def app_captions(at) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def test_a_timm_folder_model_in_the_app(folder):
    from conftest import run_page

    save_file(timm_two_classes().state_dict(), folder / "effnet.safetensors")
    card = {
        "architecture": "timm/efficientnet_b0",
        "weights": "effnet.safetensors",
        "classes": ["cat", "dog"],
        "preprocessing": {"size": 256},
    }
    (folder / "effnet.json").write_text(json.dumps(card))
    at = run_page("app.py", timeout=120)
    assert "effnet (models folder)" in at.selectbox(key="model").options  # options as shown
    at.selectbox(key="model").set_value("folder:effnet").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Chelsea the cat as effnet sees it (256×256)" in app_captions(at)
    assert any(c.startswith("Grad-CAM · ") for c in app_captions(at))
    radio = next(r for r in at.radio if r.label == "Class to explain")
    assert {option.split(" (")[0] for option in radio.options[:2]} == {"cat", "dog"}
    assert any("as your model sees it: 256×256 RGB" in c.value for c in at.caption)


def test_an_uploaded_grayscale_model_with_its_preprocessing_in_the_app():
    from conftest import run_page

    at = run_page("app.py", timeout=120)
    at.selectbox(key="model").set_value("Custom (upload)").run()
    at.file_uploader(key="custom_weights").set_value(
        ("xray.safetensors", save_safetensors(grayscale_resnet18().state_dict()), "application/octet-stream")
    )
    at.file_uploader(key="custom_labels").set_value(("classes.txt", b"normal\npneumonia\n", "text/plain"))
    at.toggle(key="custom_pre_own").set_value(False).run()
    at.number_input(key="custom_pre_size").set_value(320)
    at.toggle(key="custom_pre_gray").set_value(True)
    at.radio(key="custom_pre_policy").set_value("squash")
    at.text_input(key="custom_pre_mean").set_value("0.5")
    at.text_input(key="custom_pre_std").set_value("0.5").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Chelsea the cat as resnet18 (custom) sees it (320×320)" in app_captions(at)
    assert any("320×320 grayscale, squashed, mean (0.5), std (0.5)" in c.value for c in at.caption)
    at.text_input(key="custom_pre_std").set_value("0.5, x").run()
    assert [e.value for e in at.error] == [
        "Mean and std must be numbers separated by commas, e.g. 0.5, 0.5, 0.5."
    ]


def test_the_bias_demo_from_a_models_folder_as_the_readme_says(folder):
    """README, "The bias demo from a models folder": the trunk's weights plus a demo head, and a card."""
    from safetensors.torch import load_file

    from models_zoo import demo_image, load_bias_demo, load_model

    state = load_model("efficientnet_lite0", device="cpu").model.state_dict()
    state.update(load_file(ROOT / "assets" / "bias_demo" / "biased_head.safetensors"))
    save_file(state, folder / "stripes_dots_biased.safetensors")
    card = {
        "architecture": "efficientnet_lite0",
        "weights": "stripes_dots_biased.safetensors",
        "classes": ["stripes", "dots"],
        "preprocessing": {
            "size": 224,
            "resize": 224,
            "mean": 0.49804,
            "std": 0.50196,
            "interpolation": "bicubic",
        },
    }
    (folder / "stripes_dots_biased.json").write_text(json.dumps(card))
    ours, demo = load_named("stripes_dots_biased", device="cpu"), load_bias_demo("biased", device="cpu")
    image = demo_image(with_cue=True)
    with torch.no_grad():
        mine, theirs = ours.model(ours.preprocess(image)), demo.model(demo.preprocess(image))
    assert torch.allclose(mine, theirs, atol=1e-3) and ours.labels == demo.labels
