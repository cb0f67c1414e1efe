"""Custom models: good files load and predict as the original; every bad file gets one clear line."""

from __future__ import annotations

import io
import json
import os
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import save as save_safetensors

from models_zoo.custom import (
    ArchitectureMismatchError,
    ClassCountError,
    CorruptWeightsError,
    CustomModelError,
    UnsafeWeightsError,
    load_custom_model,
    read_labels,
    read_state_dict,
)

LABELS = ["cat", "dog", "stethoscope"]


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=len(LABELS)).eval().state_dict()


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_safetensors_and_state_dict_load_and_predict_as_the_original(tmp_path, resnet18_state):
    (tmp_path / "w.safetensors").write_bytes(save_safetensors(resnet18_state))
    (tmp_path / "w.pth").write_bytes(torch_bytes({"state_dict": resnet18_state, "epoch": 3}))
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nstethoscope\n")
    reference = torchvision.models.resnet18(num_classes=3).eval()
    reference.load_state_dict(resnet18_state)
    x = torch.randn(1, 3, 64, 64)
    for weights in (tmp_path / "w.safetensors", str(tmp_path / "w.pth")):
        zoo = load_custom_model("resnet18", weights, tmp_path / "labels.txt", device="cpu")
        assert zoo.labels == tuple(LABELS)
        assert zoo.name == "resnet18 (custom)" and zoo.default_layer == "final"
        assert zoo.input_size == (224, 224) and zoo.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
        assert torch.allclose(zoo.model(x), reference(x), atol=1e-5)
        assert not zoo.model.training and not any(p.requires_grad for p in zoo.model.parameters())


def test_format_is_told_by_content_not_name(tmp_path, resnet18_state):
    path = tmp_path / "weights.pth"  # safetensors bytes under a .pth name
    path.write_bytes(save_safetensors(resnet18_state))
    assert read_state_dict(path).keys() == resnet18_state.keys()


def test_data_parallel_prefix_and_json_labels(resnet18_state):
    wrapped = {f"module.{k}": v for k, v in resnet18_state.items()}
    zoo = load_custom_model(
        "resnet18", torch_bytes(wrapped), json.dumps(LABELS).encode(), name="mine", device="cpu"
    )
    assert zoo.name == "mine" and zoo.labels == tuple(LABELS)


def test_pickle_carrying_code_is_refused_and_never_run(tmp_path, resnet18_state):
    marker = tmp_path / "created-by-the-payload"
    for data in (
        torch_bytes({"fc.weight": torch.zeros(3, 512), "x": Payload(str(marker))}),
        pickle.dumps({"x": Payload(str(marker))}),
    ):
        with pytest.raises(UnsafeWeightsError, match="other than tensors; refusing to unpickle"):
            load_custom_model("resnet18", data, LABELS)
        assert not marker.exists()


def test_whole_pickled_model_is_refused():
    with pytest.raises(UnsafeWeightsError, match="state_dict"):
        read_state_dict(torch_bytes(torchvision.models.resnet18(num_classes=3)))


@pytest.mark.parametrize("cut", [4, 100, 0.5])
def test_truncated_files(resnet18_state, cut):
    for data in (save_safetensors(resnet18_state), torch_bytes(resnet18_state)):
        size = int(len(data) * cut) if isinstance(cut, float) else cut
        with pytest.raises(CorruptWeightsError, match="truncated or corrupt|neither"):
            load_custom_model("resnet18", data[:size], LABELS)


def test_not_a_weights_file():
    with pytest.raises(CorruptWeightsError, match="neither a safetensors file nor a PyTorch"):
        read_state_dict(b"just some text, not weights")
    with pytest.raises(CorruptWeightsError, match="empty"):
        read_state_dict(b"")
    with pytest.raises(CorruptWeightsError, match="no state_dict"):
        read_state_dict(torch_bytes([1, 2, 3]))


def test_wrong_architecture_names_the_likely_one(resnet18_state):
    with pytest.raises(ArchitectureMismatchError, match="not a vgg11: they look like a resnet18"):
        load_custom_model("vgg11", save_safetensors(resnet18_state), LABELS)
    with pytest.raises(ArchitectureMismatchError, match="not a resnet34: they look like a resnet18"):
        load_custom_model("resnet34", save_safetensors(resnet18_state), LABELS)


def test_wrong_class_count(resnet18_state):
    with pytest.raises(
        ClassCountError, match=r"classifier \(fc\) has 3 outputs, but the class-names file lists 2"
    ):
        load_custom_model("resnet18", save_safetensors(resnet18_state), ["cat", "dog"])


def test_unknown_architecture_close_matches(resnet18_state):
    with pytest.raises(CustomModelError, match="Unknown architecture 'resnet81'. Did you mean 'resnet18'"):
        load_custom_model("resnet81", save_safetensors(resnet18_state), LABELS)
    with pytest.raises(CustomModelError, match="not a vit_b_16: they look like a resnet18"):
        load_custom_model("vit_b_16", save_safetensors(resnet18_state), LABELS)


def test_labels_files(tmp_path):
    assert read_labels(b"\xef\xbb\xbfa\r\nb\r\n") == ("a", "b")  # BOM and Windows line ends
    assert read_labels(b' ["nurse", "doctor"] ') == ("nurse", "doctor")
    for bad, message in [
        (b"only-one\n", "at least 2"),
        (b'["a", 1]', "list of strings"),
        (b"[not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (tmp_path / "missing.txt", "Cannot read the class-names file"),
    ]:
        with pytest.raises(CustomModelError, match=message):
            read_labels(bad)
