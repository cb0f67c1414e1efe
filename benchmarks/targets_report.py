"""Faithfulness of each method at two targets of the offline default model: a table for the README.

    python -m benchmarks.targets_report [--old _bn1] [--new final] [--steps 16] [IMAGE ...]

Average Drop %, Increase in Confidence % and deletion / insertion AUC (explainers.methods.metrics), means
over the bundled samples plus photos that scikit-image ships and the tests never use (astronaut,
motorcycle, clock), or over the images given. The old default `_bn1` is the BatchNorm output before
EfficientNet-Lite0's last ReLU6 (signed); the new default is the rectified final feature map.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from explainers import ExplainerInputError, explain
from explainers.methods.core import method_title
from explainers.methods.metrics import faithfulness, summarise
from explainers.services.images import load_image
from explainers.services.samples import SAMPLES_DIR
from models_zoo import load_model

METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam"]
EXTRA = ("astronaut.png", "motorcycle_left.png", "clock_motion.png")  # scikit-image's data folder


def default_images() -> list[Path]:
    images = sorted(SAMPLES_DIR.glob("*.jpg"))
    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        images += [folder / name for name in EXTRA if (folder / name).exists()]
    except ImportError:
        pass
    return images


def measure(layer: str, images: list[Path], steps: int) -> dict[str, dict[str, float]]:
    zoo = load_model("efficientnet_lite0", device="cpu")
    per_method: dict[str, list] = {name: [] for name in METHODS}
    for path in images:
        x = zoo.preprocess(load_image(path))
        for name in METHODS:
            try:
                result = explain(zoo.model, x, layer, [name])
            except ExplainerInputError:  # CAM where the head does not pool this layer
                continue
            scores = faithfulness(zoo.model, x, result.maps, result.target, steps=steps)
            per_method[name].append(scores[name])
    return {name: summarise(scores) for name, scores in per_method.items() if scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--old", default="_bn1")
    parser.add_argument("--new", default="final")
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    images = args.images or default_images()
    print(f"EfficientNet-Lite0, {len(images)} images: {', '.join(p.name for p in images)}\n")
    columns = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")
    print("| method | target | Average Drop % | Increase in Conf. % | deletion AUC ↓ | insertion AUC ↑ |")
    print("|---|---|---|---|---|---|")
    table = {layer: measure(layer, images, args.steps) for layer in (args.old, args.new)}
    for name in METHODS:
        for layer in (args.old, args.new):
            row = table[layer].get(name)
            cells = (
                [f"{row[c]:.1f}" if "auc" not in c else f"{row[c]:.3f}" for c in columns]
                if row
                else ["n/a"] * 4
            )
            print(f"| {method_title(name)} | `{layer}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
