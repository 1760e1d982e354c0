"""The chart's Python files for the chart tests: helm/ci/check.py (render, validate, drift) and
helm/files/pin_version.py live outside any package, so they are loaded from their paths, once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm"


def load_module(path: Path, name: str) -> ModuleType:
    """The module at `path`, registered as `name` (so dataclasses and pickling inside it work)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def chart_check() -> ModuleType:
    return load_module(CHART / "ci" / "check.py", "kefu_chart_check")


def pin_version() -> ModuleType:
    return load_module(CHART / "files" / "pin_version.py", "kefu_pin_version")
