"""Benchmark cases for the guided family: ours against the `grad-cam` package, on resnet50 at 224x224.

    python -m benchmarks.cases_guided --device cpu --repeats 5 [--threads 1]

Each case times the median wall time of one explanation, ours and the package's, alternating the
two so that a noisy machine slows both alike; ratio = ours_ms / reference_ms (below 1: ours is
faster). Random weights (weights=None): speed does not depend on them. Each case first checks that
both sides compute the same map (Pearson >= 0.999), so the figures compare like with like.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torchvision
from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from benchmarks.common import pearson, time_ms
from explainers import explain

LAYER = "layer4"


def run(device: str | torch.device = "cpu", repeats: int = 5) -> list[dict]:
    """Time our guided maps against the `grad-cam` package's.

    Cases: guided backprop with the model's parameters trainable (as torchvision builds it; the
    package's ``loss.backward()`` then also computes weight gradients) and frozen; guided Grad-CAM
    (ours: one call; the package: `GradCAM` plus `GuidedBackpropReLUModel`).

    Args:
        device: where to run, e.g. "cpu" or "cuda".
        repeats: timed calls per side and case, after one untimed warm-up call.

    Returns:
        One dict per case: case, ours_ms, reference_ms, ratio (= ours_ms / reference_ms).
    """
    device = torch.device(device)
    torch.manual_seed(0)
    base = torchvision.models.resnet50(weights=None).eval().to(device)
    x = torch.randn(1, 3, 224, 224, device=device)
    target = int(base(x).argmax())
    rows = []

    for frozen in (False, True):
        model = copy.deepcopy(base).requires_grad_(not frozen)
        package = GuidedBackpropReLUModel(copy.deepcopy(model), device=device)  # it swaps modules: a copy

        def ours(model=model):
            return explain(model, x, LAYER, ["guided_backprop"], target=target).maps["guided_backprop"]

        def reference(package=package):
            return package(x.clone(), target_category=target)  # (H, W, 3) numpy

        agreement = pearson(ours(), reference())
        if agreement < 0.999:
            raise RuntimeError(f"ours and the package disagree (Pearson {agreement:.4f})")
        ours_ms, reference_ms = time_ms({"ours": ours, "reference": reference}, device, repeats).values()
        case = f"guided_backprop resnet50 224 ({'frozen' if frozen else 'trainable'} params)"
        rows.append(
            {"case": case, "ours_ms": ours_ms, "reference_ms": reference_ms, "ratio": ours_ms / reference_ms}
        )

    model = copy.deepcopy(base)
    package_gb = GuidedBackpropReLUModel(copy.deepcopy(model), device=device)
    cam_model = copy.deepcopy(model)
    package_cam = GradCAM(model=cam_model, target_layers=[cam_model.layer4])

    def ours_ggc():
        return explain(model, x, LAYER, ["guided_gradcam"], target=target).maps["guided_gradcam"]

    def reference_ggc():
        mask = package_cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]  # (H, W)
        return package_gb(x.clone(), target_category=target) * mask[..., None]

    agreement = pearson(ours_ggc(), reference_ggc())
    if agreement < 0.999:
        raise RuntimeError(f"ours and the package disagree on guided Grad-CAM (Pearson {agreement:.4f})")
    ours_ms, reference_ms = time_ms({"ours": ours_ggc, "reference": reference_ggc}, device, repeats).values()
    rows.append(
        {
            "case": "guided_gradcam resnet50 224 (trainable params)",
            "ours_ms": ours_ms,
            "reference_ms": reference_ms,
            "ratio": ours_ms / reference_ms,
        }
    )
    package_cam.activations_and_grads.release()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (one is steadiest on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.repeats)
    print(f"device {args.device}, {torch.get_num_threads()} CPU threads, median of {args.repeats}")
    print(f"{'case':<50} {'ours ms':>9} {'grad-cam ms':>12} {'ratio':>6}")
    for row in rows:
        print(f"{row['case']:<50} {row['ours_ms']:>9.1f} {row['reference_ms']:>12.1f} {row['ratio']:>6.2f}")


if __name__ == "__main__":
    main()
