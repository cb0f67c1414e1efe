"""The methods/services split keeps the flat module paths that users and scripts import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from explainers.moved import MOVED


@pytest.mark.parametrize("old_name", sorted(MOVED))
def test_old_path_is_the_same_module(old_name: str) -> None:
    old = importlib.import_module(old_name)
    new = importlib.import_module(MOVED[old_name])
    assert old is new
    assert new.__spec__.name == MOVED[old_name]  # the alias leaves the module its own spec


def test_from_import_of_an_old_path_reaches_the_registry() -> None:
    namespace: dict[str, object] = {}
    exec("from explainers.core import METHODS", namespace)
    from explainers.methods.core import METHODS

    assert namespace["METHODS"] is METHODS and "gradcam" in METHODS


def test_methods_do_not_import_services() -> None:
    code = (
        "import sys, explainers, explainers.methods.core, explainers.methods.metrics, "
        "explainers.methods.sanity, explainers.methods.multi\n"
        "print(sorted(m for m in sys.modules if m.startswith('explainers.services')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_old_cli_path_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "explainers.audit", "--help"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("usage: python -m explainers.audit")
