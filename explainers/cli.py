"""What the command-line tools share: one-line argument errors, the methods option and the choice
of model."""

from __future__ import annotations

import argparse

from explainers.core import check_methods
from explainers.errors import ExplainerInputError, MethodError, did_you_mean

DEFAULT_METHODS = "gradcam,gradcam++"


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
    from models_zoo import ModelError, list_zoo, load_custom_model, load_model

    custom = {"--arch": args.arch, "--weights": args.weights, "--labels": args.labels}
    if any(value is not None for value in custom.values()):
        missing = [option for option, value in custom.items() if value is None]
        if missing:
            raise ExplainerInputError(
                f"A custom model needs all three of --arch, --weights and --labels; "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing. "
                "Or leave out all three to use a zoo model (--model)."
            )
        return load_custom_model(args.arch, args.weights, args.labels)
    if args.model not in list_zoo():
        raise ModelError(
            f"Unknown model {args.model!r} (--model).{did_you_mean(args.model, list_zoo())} "
            "`python -m explainers --list-models` lists them all."
        )
    return load_model(args.model)
