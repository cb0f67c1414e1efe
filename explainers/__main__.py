"""Command line: explain one image and write overlays, raw maps and predictions.

    python -m explainers IMAGE [--model NAME [--models-dir DIR] | [--arch ARCH] --weights FILE --labels FILE]
                               [--layer NAME] [--target N]
                               [--methods gradcam,gradcam++] [--counterfactual] [--out DIR]

Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from explainers import METHODS, explain
from explainers.cli import (
    DEFAULT_METHODS,
    LAYER_HELP,
    OneLineParser,
    add_model_arguments,
    file_stem,
    load_zoo,
    parse_methods,
)
from explainers.errors import ExplainerInputError
from explainers.images import load_image
from explainers.render import picture, to_numpy
from explainers.service import top_predictions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m explainers",
        description="Explain a classifier's decision on IMAGE with Grad-CAM and its relatives.",
    )
    parser.add_argument("image", type=Path, help="the image file to explain")
    add_model_arguments(parser)
    parser.add_argument("--layer", help=LAYER_HELP)
    parser.add_argument("--target", type=int, help="class index to explain (default: the top-1 class)")
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated methods (default: {DEFAULT_METHODS}); available: {', '.join(METHODS)}",
    )
    parser.add_argument("--counterfactual", action="store_true", help="explain what lowers the score")
    parser.add_argument("--out", type=Path, default=Path("explanations"), help="output folder")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Explain one image and write the outputs; returns what predictions.json holds."""
    if not args.image.is_file():
        raise ExplainerInputError(f"No such image file: {args.image}")
    methods = parse_methods(args.methods)
    image = load_image(args.image)
    zoo = load_zoo(args)
    layer = zoo.resolve_layer(args.layer) if args.layer else zoo.default_layer
    crop, x = zoo.preprocess.crop_and_tensor(image)
    result = explain(zoo.model, x, layer, methods, target=args.target, counterfactual=args.counterfactual)

    crop = np.asarray(crop)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "counterfactual_" if args.counterfactual else ""
    for name in methods:
        heatmap = to_numpy(result.maps[name])
        file = f"{stem}{file_stem(name)}"
        Image.fromarray(picture(METHODS[name].kind, heatmap, crop)).save(args.out / f"{file}.png")
        np.save(args.out / f"{file}.npy", heatmap)

    summary = {
        "image": str(args.image),
        "model": zoo.name,
        "layer": layer,
        "target": {
            "index": result.target,
            "label": zoo.labels[result.target],
            "probability": float(result.probabilities[result.target]),
        },
        "counterfactual": args.counterfactual,
        "top5": [p._asdict() for p in top_predictions(result.probabilities, zoo.labels)],
        "methods": methods,
        "device": result.device,
        "seconds": round(result.seconds, 4),
    }
    (args.out / "predictions.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except ExplainerInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    target = summary["target"]
    print(
        f"{target['label']} ({target['probability']:.1%}) at {summary['layer']}: "
        f"{len(summary['methods'])} maps in {summary['seconds']:.2f} s on {summary['device']} -> {args.out}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
