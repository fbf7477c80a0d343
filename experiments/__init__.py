"""The article's worked cases as experiments.

Each module defines ``NAME`` (the CLI name: the module name with ``_`` written ``-``), a frozen
dataclass ``Config``, optional ``QUICK`` (field overrides for ``--quick``), and
``run(config, out_dir) -> dict``. Adding a module here adds a ``jaxcalc run`` name.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def registry() -> dict[str, str]:
    """Map experiment name -> module name (found by file name; nothing is imported)."""
    return dict(sorted(
        (info.name.replace("_", "-"), f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ))


def get(name: str) -> ModuleType:
    """Import the experiment ``name``; ``KeyError`` if there is none."""
    reg = registry()
    if name not in reg:
        raise KeyError(name)
    module = importlib.import_module(reg[name])
    if getattr(module, "NAME", None) != name or not hasattr(module, "run") or not hasattr(module, "Config"):
        raise ImportError(f"{reg[name]} must define NAME = {name!r}, Config and run(config, out_dir)")
    return module
