"""The module paths from before the methods/services split keep working.

``import explainers.core``, ``from explainers.service import predict`` and
``python -m explainers.audit`` reach the same module objects as their new homes
(`explainers.methods.core`, `explainers.services.service`, …), so code written against the
flat layout, and mocks that patch it, keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

METHOD_MODULES = (
    "core",
    "cam",
    "guided",
    "score",
    "smooth",
    "multi",
    "metrics",
    "sanity",
    "capture",
    "batch",
)
SERVICE_MODULES = (
    "service",
    "figures",
    "render",
    "lessons",
    "compare",
    "audit",
    "cli",
    "formats",
    "images",
    "samples",
)
MOVED: dict[str, str] = {
    **{f"explainers.{name}": f"explainers.methods.{name}" for name in METHOD_MODULES},
    **{f"explainers.{name}": f"explainers.services.{name}" for name in SERVICE_MODULES},
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module already imported (or imported now) under its new name."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.new_name)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias spec on the shared module object; give it back its own.
        module.__spec__ = self._real_spec

    def get_code(self, fullname: str) -> CodeType | None:
        # `python -m explainers.audit` runs the new module's code as __main__.
        spec = importlib.util.find_spec(self.new_name)
        return spec.loader.get_code(self.new_name)  # type: ignore[union-attr]


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None):
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        origin = importlib.util.find_spec(new_name).origin  # type: ignore[union-attr]
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new_name), origin=origin)


def install() -> None:
    """Put the finder on `sys.meta_path`, once."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
