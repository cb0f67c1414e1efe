"""Speed of CAM Explorer against a plain forward pass and the `grad-cam` package.

    python -m benchmarks.bench [--repeats N] [--device cpu|cuda] [--json FILE]

For resnet50 (random weights) and efficientnet_lite0 at 224x224 it prints medians of: a no-grad
forward pass (the floor), our five gradient CAMs in one `explain` call, and the package computing
the same five (one object per method, as its users do); then the cases the method families add
(benchmarks/cases_*.py). Medians over repeats after one warm-up call.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from collections.abc import Callable

import torch

from benchmarks.common import GRADIENT_CAMS, time_ms
from explainers import explain
from models_zoo import load_model

# Further benchmark families: modules defining run(device, repeats) -> list of row dicts.
CASE_MODULES = ["benchmarks.cases_guided", "benchmarks.cases_score", "benchmarks.cases_batch"]


def package_five(model: torch.nn.Module, layer: str) -> Callable[[torch.Tensor, int], None]:
    """The grad-cam package's five CAMs, one object each, on its own copy with gradients on."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    module = dict(model.named_modules())[layer]
    cams = [
        cls(model=model, target_layers=[module])
        for cls in (GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM)
    ]

    def run(x: torch.Tensor, target: int) -> None:
        for cam in cams:
            cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])

    return run


def core_rows(device: torch.device, repeats: int) -> list[dict]:
    rows = []
    for name, weights in [("resnet50", None), ("efficientnet_lite0", "default")]:
        zoo = load_model(name, weights=weights, device=device)
        torch.manual_seed(0)
        x = torch.randn(1, 3, 224, 224, device=device)
        layer = zoo.default_layer

        def forward() -> None:
            with torch.no_grad():
                zoo.model(x)

        times = time_ms(
            {"floor": forward, "ours": lambda: explain(zoo.model, x, layer, GRADIENT_CAMS)}, device, repeats
        )
        floor, ours = times["floor"], times["ours"]
        with torch.no_grad():
            target = int(zoo.model(x).argmax())
        package = package_five(zoo.model, layer)
        theirs = time_ms({"package": lambda: package(x, target)}, device, max(3, repeats // 2))["package"]
        rows += [
            {"case": f"{name} forward (floor)", "ours_ms": floor},
            {
                "case": f"{name} 5 CAMs, one explain",
                "ours_ms": ours,
                "reference_ms": theirs,
                "vs_forward": ours / floor,
                "ratio": ours / theirs,
                "note": f"layer {layer}; reference: grad-cam package, 5 objects",
            },
        ]
    return rows


def print_table(rows: list[dict]) -> None:
    # ratio = ours / reference: below 1, ours is faster.
    print(f"| {'case':<44} | {'ours ms':>9} | {'ref ms':>9} | {'x forward':>9} | {'ratio':>8} | note")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 10}|------")
    for row in rows:

        def cell(key: str, fmt: str) -> str:
            return format(row[key], fmt) if key in row else ""

        print(
            f"| {row['case']:<44} | {cell('ours_ms', '9.1f'):>9} | {cell('reference_ms', '9.1f'):>9} | "
            f"{cell('vs_forward', '9.2f'):>9} | {cell('ratio', '8.2f'):>8} | {row.get('note', '')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["core", "cases"], help="run one part only")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}; torch {torch.__version__}; medians of {args.repeats} runs\n")

    rows = [] if args.only == "cases" else core_rows(device, args.repeats)
    if args.only != "core":
        for module_name in CASE_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as error:  # e.g. the `grad-cam` package is not installed
                print(f"skipped {module_name}: {error}", file=sys.stderr)
                continue
            rows += module.run(str(device), args.repeats)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"device": name, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
