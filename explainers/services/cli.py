"""What the command-line tools share: one-line argument errors, the methods option and the choice
of model."""

from __future__ import annotations

import argparse

from explainers.errors import ExplainerInputError, MethodError
from explainers.methods.core import check_methods

DEFAULT_METHODS = "gradcam,gradcam++"
LAYER_HELP = (
    "where to explain (default: 'final', the final feature map: the rectified map the classifier "
    "head pools); also 'stage 1'..'stage N' (shallow to deep), a module name such as 'layer3', "
    "'MODULE:relu' (its rectified output) or 'MODULE:input'"
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def parse_methods(text: str) -> list[str]:
    """A comma-separated --methods value -> registered method names, checked before any work.

    Raises:
        MethodError: none given, or an unknown name (the message names close matches).
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise MethodError(
            f"--methods {text!r} names no method; give one or more, comma-separated, e.g. "
            f"--methods {DEFAULT_METHODS} (see --help for the list)."
        )
    return check_methods(names)


def file_stem(method: str) -> str:
    """A method name usable in a file name ("gradcam++" -> "gradcampp")."""
    return method.replace("+", "p")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model for a zoo or models-folder model, or --arch/--weights/--labels for a fine-tuned one."""
    from models_zoo import DEFAULT_MODEL
    from models_zoo.folder import ENV

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a zoo model, or a model of the models folder by its card's name (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--models-dir",
        help=f"the models folder: model cards + weights (default: ${ENV} or ~/.cam-explorer/models)",
    )
    parser.add_argument(
        "--arch", help="custom model: a torchvision architecture (resnet18) or timm/<name>; none for a .pt2"
    )
    parser.add_argument(
        "--weights", help="custom model: .safetensors, a state_dict .pt/.pth, or an exported .pt2"
    )
    parser.add_argument("--labels", help="custom model: class names, one per line or a JSON list")


def load_zoo(args: argparse.Namespace):
    """The custom model when --weights/--labels are given, else --model from the folder or the zoo.

    Raises:
        ExplainerInputError: an incomplete custom model, an unknown name, or any loading error.
    """
    from models_zoo import ModelError, load_custom_model
    from models_zoo.folder import load_named

    custom = {"--arch": args.arch, "--weights": args.weights, "--labels": args.labels}
    if any(value is not None for value in custom.values()):
        missing = [option for option in ("--weights", "--labels") if custom[option] is None]
        if missing:
            raise ExplainerInputError(
                "A custom model needs --weights and --labels (and --arch, unless the weights are a "
                f".pt2); {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing. "
                "Or leave out all three to use a zoo model (--model)."
            )
        return load_custom_model(args.arch, args.weights, args.labels)
    try:
        return load_named(args.model, getattr(args, "models_dir", None))
    except ModelError as error:  # an unknown name: say where the names are listed
        raise ModelError(f"{error} `python -m explainers --list-models` lists them all.") from error
