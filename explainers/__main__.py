"""Command line: explain one image and write overlays, raw maps and predictions.

    python -m explainers IMAGE [--model NAME [--models-dir DIR] | [--arch ARCH] --weights FILE --labels FILE]
                               [--layer NAME] [--target N]
                               [--methods gradcam,gradcam++] [--counterfactual] [--out DIR]
    python -m explainers --list-models

Each image's files go to their own folder, DIR/<image name>/ (default DIR: explanations), so
runs on different images never mix; a new run on the same image replaces that folder's files
from the previous run. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from explainers import METHODS, explain
from explainers.errors import ExplainerInputError, ImageError, reason
from explainers.services.cli import (
    DEFAULT_METHODS,
    LAYER_HELP,
    OneLineParser,
    add_model_arguments,
    file_stem,
    load_zoo,
    parse_methods,
)
from explainers.services.images import load_image
from explainers.services.render import picture, to_numpy
from explainers.services.service import top_predictions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m explainers",
        description="Explain a classifier's decision on IMAGE with Grad-CAM and its relatives.",
        epilog="Each image's files go to OUT/<image name>/: overlay PNGs, .npy maps, predictions.json. "
        "A new run on the same image replaces the files of the previous one.",
    )
    parser.add_argument("image", type=Path, nargs="?", help="the image file to explain")
    add_model_arguments(parser)
    parser.add_argument("--layer", help=LAYER_HELP)
    parser.add_argument("--target", type=int, help="class index to explain (default: the top-1 class)")
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated methods (default: {DEFAULT_METHODS}); available: {', '.join(METHODS)}",
    )
    parser.add_argument("--counterfactual", action="store_true", help="explain what lowers the score")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("explanations"),
        help="parent folder: this image's files go to OUT/<image name>/ (default: explanations)",
    )
    parser.add_argument("--list-models", action="store_true", help="print the zoo's model names and exit")
    args = parser.parse_args(argv)
    if args.image is None and not args.list_models:
        parser.error("the following arguments are required: image")
    return args


def run_folder(out: Path, image: Path) -> Path:
    """The image's own output folder, OUT/<image name> (characters a file name may not hold -> _)."""
    return out / (re.sub(r"[^\w.-]+", "_", image.stem).strip("._") or "image")


def clear_previous_run(folder: Path) -> None:
    """Delete the files a previous run on this image wrote (listed in its predictions.json), so
    the folder holds one run; nothing else in the folder is touched."""
    try:
        files = json.loads((folder / "predictions.json").read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return  # no previous run here (or not one of ours): nothing to clear
    for name in files:
        if isinstance(name, str) and Path(name).name == name:  # only plain names inside the folder
            (folder / name).unlink(missing_ok=True)


def run(args: argparse.Namespace) -> dict:
    """Explain one image and write the outputs; returns what predictions.json holds."""
    if args.image.is_dir():
        raise ExplainerInputError(
            f"{args.image} is a folder; give one image file, or audit the whole folder with "
            f"`python -m explainers.audit {args.image}`."
        )
    if not args.image.is_file():
        raise ExplainerInputError(
            f"No such image file: {args.image} (looked in {Path.cwd()}). Check the path and its spelling."
        )
    methods = parse_methods(args.methods)
    try:
        image = load_image(args.image)
    except ImageError as error:  # the library's message does not know the file's name
        raise ImageError(f"{args.image}: {error}") from error
    zoo = load_zoo(args)
    layer = zoo.resolve_layer(args.layer) if args.layer else zoo.default_layer
    crop, x = zoo.preprocess.crop_and_tensor(image)
    result = explain(zoo.model, x, layer, methods, target=args.target, counterfactual=args.counterfactual)

    folder = run_folder(args.out, args.image)
    prefix = "counterfactual_" if args.counterfactual else ""
    files = []
    for name in methods:
        stem = f"{prefix}{file_stem(name)}"
        files += [f"{stem}.png", f"{stem}.npy"]
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
        "files": files,
    }
    crop = np.asarray(crop)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clear_previous_run(folder)
        for name in methods:
            heatmap = to_numpy(result.maps[name])
            stem = f"{prefix}{file_stem(name)}"
            Image.fromarray(picture(METHODS[name].kind, heatmap, crop)).save(folder / f"{stem}.png")
            np.save(folder / f"{stem}.npy", heatmap)
        (folder / "predictions.json").write_text(json.dumps(summary, indent=2))
    except OSError as error:
        raise ExplainerInputError(
            f"Cannot write to {folder}: {reason(error)}. Choose a folder you can write to with --out."
        ) from error
    summary["folder"] = str(folder)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_models:
        from models_zoo import list_zoo

        print("\n".join(list_zoo()))
        return 0
    try:
        summary = run(args)
    except ExplainerInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    target = summary["target"]
    print(
        f"{target['label']} ({target['probability']:.1%}) at {summary['layer']}: "
        f"{len(summary['methods'])} maps in {summary['seconds']:.2f} s on {summary['device']} -> {summary['folder']}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
