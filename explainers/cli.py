"""What the command-line tools share: one-line argument errors, the methods option and the choice
of model."""

from __future__ import annotations

import argparse

from explainers.core import check_methods
from explainers.errors import ExplainerInputError

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
    return check_methods([name.strip() for name in text.split(",") if name.strip()])


def file_stem(method: str) -> str:
    """A method name usable in a file name ("gradcam++" -> "gradcampp")."""
    return method.replace("+", "p")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model for a zoo model, or --arch/--weights/--labels for a fine-tuned one."""
    from models_zoo import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a zoo model (default: {DEFAULT_MODEL})")
    parser.add_argument("--arch", help="custom model: a torchvision architecture, e.g. resnet18")
    parser.add_argument("--weights", help="custom model: .safetensors or a state_dict .pt/.pth")
    parser.add_argument("--labels", help="custom model: class names, one per line or a JSON list")


def load_zoo(args: argparse.Namespace):
    """The zoo model, or the custom model when --arch/--weights/--labels are given (all three).

    Raises:
        ExplainerInputError: an incomplete custom-model triple, or any loading error.
    """
    from models_zoo import load_custom_model, load_model

    custom = (args.arch, args.weights, args.labels)
    if any(value is not None for value in custom):
        if not all(value is not None for value in custom):
            raise ExplainerInputError("A custom model needs all three of --arch, --weights and --labels.")
        return load_custom_model(args.arch, args.weights, args.labels)
    return load_model(args.model)
