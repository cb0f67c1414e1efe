"""The scoring copy (`scoring_model`): BatchNorm and padding folded, outputs those of the model,
the model untouched, and no copy where folding is impossible or would be wrong."""

from __future__ import annotations

import threading

import pytest
import torch
import torchvision
from conftest import assert_untouched, frozen, module_state
from torch import nn
from torch.nn import functional as F

from explainers.methods import inference
from explainers.methods.inference import AGREEMENT, scoring_model


def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x).softmax(-1)


def calls_of(copy: nn.Module, kind: type) -> int:
    modules = dict(copy.named_modules())
    return sum(
        node.op == "call_module" and isinstance(modules[node.target], kind) for node in copy.graph.nodes
    )


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine terms far from the identity, so that a fold that is wrong shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(shape, generator=generator))
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.5)
    return model


def test_lite0_copy_folds_every_norm_and_the_symmetric_padding_and_agrees(lite0):
    model = lite0.model
    state, weights = module_state(model), {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, 224, 224)
    copy = scoring_model(model, x)
    assert copy is not model
    assert calls_of(copy, nn.BatchNorm2d) == 0  # all 49 folded
    # Lite0 pads 17 times; the 5 stride-2 paddings are one-sided (TensorFlow's "same") and stay.
    assert calls_of(copy, nn.ZeroPad2d) == 5
    in_place = [n for n in copy.graph.nodes if n.op == "call_function" and n.args[-1] is True]
    assert len(in_place) == 33  # every ReLU6 after a convolution
    assert (probabilities(copy, x) - probabilities(model, x)).abs().max() <= AGREEMENT
    assert torch.equal(probabilities(copy, x).argmax(-1), probabilities(model, x).argmax(-1))
    assert_untouched(model, state, weights)
    assert scoring_model(model, x[:1]) is copy  # remembered per model


def test_torchvision_resnet_folds_its_module_convolutions():
    model = frozen(randomise_norms(torchvision.models.resnet18(weights=None, num_classes=10)))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    copy = scoring_model(model, x)
    assert copy is not model and calls_of(copy, nn.BatchNorm2d) == 0
    torch.testing.assert_close(probabilities(copy, x), probabilities(model, x), atol=AGREEMENT, rtol=0)
    # The copy's own tensors: changing the copy leaves the model alone.
    assert not {p.data_ptr() for p in copy.parameters()} & {p.data_ptr() for p in model.parameters()}


def test_a_changed_weight_or_mode_gives_a_new_copy():
    model = frozen(
        randomise_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 5)))
    )
    x = torch.randn(2, 3, 8, 8)
    first = scoring_model(model, x)
    assert first is not model and scoring_model(model, x) is first
    with torch.no_grad():
        model[1].running_mean.add_(1.0)  # an in-place change: the old copy is stale
    second = scoring_model(model, x)
    assert second is not first
    torch.testing.assert_close(probabilities(second, x), probabilities(model, x), atol=AGREEMENT, rtol=0)
    model.train()
    assert scoring_model(model, x) is model  # training mode: BatchNorm uses the batch, nothing to fold
    model.eval()


class TwoReaders(nn.Module):
    """The convolution's output feeds the BatchNorm and a shortcut: folding would change the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head((F.relu(self.norm(y)) + y).mean((2, 3)))


class BranchingOnData(nn.Module):
    """fx cannot trace a branch on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        if y.sum() > 0:
            y = y * 2
        return self.head(y.mean((2, 3)))


class BiasIgnoringConv(nn.Conv2d):
    """A convolution subclass that drops its bias and branches on its input (so fx keeps it a
    module): folding a BatchNorm's shift into its bias would be silently lost."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            x = x / 2
        return F.conv2d(x, self.weight, None, self.stride, self.padding)


class WithBiasIgnoringConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = (
            BiasIgnoringConv(3, 4, 3, bias=False),
            nn.BatchNorm2d(4),
            nn.Linear(4, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("kind", [TwoReaders, BranchingOnData, WithBiasIgnoringConv])
def test_no_copy_where_folding_is_impossible_or_wrong(kind):
    torch.manual_seed(0)
    model = frozen(randomise_norms(kind()))
    x = torch.randn(2, 3, 8, 8)
    state = module_state(model)
    assert scoring_model(model, x) is model
    assert module_state(model) == state


def test_the_agreement_check_is_what_refuses_a_wrong_fold(monkeypatch):
    """Without the check, the bias-ignoring convolution's fold would be handed out, and be wrong."""
    torch.manual_seed(0)
    model = frozen(randomise_norms(WithBiasIgnoringConv()))
    x = torch.randn(2, 3, 8, 8)
    monkeypatch.setattr(inference, "_agrees", lambda *_: True)
    wrong = scoring_model(model, x)
    assert wrong is not model
    assert (probabilities(wrong, x) - probabilities(model, x)).abs().max() > 1e-3


def test_concurrent_first_calls_share_one_copy():
    model = frozen(randomise_norms(torchvision.models.resnet18(weights=None, num_classes=10), seed=3))
    x = torch.randn(2, 3, 64, 64)
    copies: list[nn.Module] = []
    threads = [threading.Thread(target=lambda: copies.append(scoring_model(model, x))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(copies) == 4 and all(c is copies[0] for c in copies) and copies[0] is not model


def test_audit_rows_equal_each_image_scored_on_the_model_itself(lite0):
    """The audit scores on the folded copy; every score equals the image's `faithfulness` on the
    unfolded model, for the same maps (the batch's: a batched map may differ from a single
    image's by 1e-5, and a pixel's rank with it), within the batched scores' tolerance."""
    from pathlib import Path

    from explainers import explain_batch
    from explainers.methods.metrics import faithfulness
    from explainers.services.audit_work import AuditSettings, Item, audit_batch
    from explainers.services.images import load_image

    samples = Path(__file__).resolve().parents[1] / "assets" / "samples"
    paths = [samples / name for name in ("grace_hopper.jpg", "two_cats.jpg", "rocket.jpg")]
    methods = ["gradcam", "gradcam++"]
    settings = AuditSettings(
        model="efficientnet_lite0",
        models_dir=None,
        arch=None,
        weights=None,
        labels=None,
        layer=lite0.default_layer,
        methods=tuple(methods),
        target=None,
        steps=4,
    )
    items = [Item(index=i, name=p.name, path=str(p), stamp="") for i, p in enumerate(paths)]
    rows = [row for row, _ in audit_batch(lite0, settings, items)]
    x = torch.cat([lite0.preprocess(load_image(str(path))) for path in paths])
    assert scoring_model(lite0.model, x) is not lite0.model  # the audit scored on a copy
    for i, (row, result) in enumerate(zip(rows, explain_batch(lite0.model, x, lite0.default_layer, methods))):
        single = faithfulness(lite0.model, x[i : i + 1], result.maps, result.target, steps=4)
        assert row.target == lite0.labels[result.target]
        for name in methods:
            ours, theirs = row.scores[name], single[name]
            assert abs(ours["average_drop"] - theirs.drop / 100) <= 1e-5 / max(theirs.original, 1e-3)
            assert abs(ours["deletion_auc"] - theirs.deletion_auc) <= 1e-5
            assert abs(ours["insertion_auc"] - theirs.insertion_auc) <= 1e-5
            assert ours["increase_in_confidence"] == float(theirs.increase)


def test_a_change_the_state_cannot_see_is_caught_by_the_check_on_each_use():
    """Weights replaced through ``.data`` keep ids, storage and versions; a changed eps is no
    tensor at all: the copy is checked again on each use, and a new one is made."""
    model = frozen(
        randomise_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 5)))
    )
    x = torch.randn(2, 3, 8, 8)
    first = scoring_model(model, x)
    assert first is not model
    model[0].weight.data.mul_(-3)
    second = scoring_model(model, x)
    assert second is not first
    torch.testing.assert_close(probabilities(second, x), probabilities(model, x), atol=AGREEMENT, rtol=0)
    model[1].eps = 10.0
    third = scoring_model(model, x)
    assert third is not second
    torch.testing.assert_close(probabilities(third, x), probabilities(model, x), atol=AGREEMENT, rtol=0)


def test_the_models_hooks_stay_on_the_model():
    model = frozen(randomise_norms(torchvision.models.resnet18(weights=None, num_classes=10), seed=4))
    x = torch.randn(2, 3, 64, 64)
    seen = []
    handle = model.conv1.register_forward_hook(lambda *_: seen.append(1))
    try:
        copy = scoring_model(model, x)
        assert copy is not model
        calls = len(seen)  # the probe's pass of the model itself
        probabilities(copy, x)
        assert len(seen) == calls
        assert all(not m._forward_hooks for m in copy.modules())
    finally:
        handle.remove()


def test_a_norm_in_training_mode_inside_an_eval_model_gets_no_copy_and_keeps_its_statistics():
    model = frozen(
        randomise_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 5)))
    )
    model[1].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert scoring_model(model, torch.randn(2, 3, 8, 8)) is model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_logits_that_disagree_are_refused_even_when_probabilities_are_near_uniform(monkeypatch):
    """With 1,000 near-equal classes a probability error of 1e-5 hides a logit error of 1e-2."""
    model = frozen(
        randomise_norms(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 1000))
        )
    )
    with torch.no_grad():
        model[3].weight.mul_(1e-3)
    x = torch.randn(2, 3, 8, 8)
    good = scoring_model(model, x)
    assert good is not model
    wrong = inference._folded(model, x)
    with torch.no_grad():
        wrong.get_submodule("3").bias.add_(0.01)  # every logit off by 0.01: probabilities barely move
    assert (probabilities(wrong, x) - probabilities(model, x)).abs().max() <= AGREEMENT
    assert not inference._agrees(wrong, model, x)
