"""The article's worked cases as experiments.

Each module defines ``NAME`` (the CLI name), a frozen dataclass ``Config``, optional
``QUICK`` (field overrides for ``--quick``), and ``run(config, out_dir) -> dict``.
Modules are discovered automatically: adding a file here adds a ``jaxcalc run`` name.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def registry() -> dict[str, str]:
    """Map experiment name -> module name, without importing the heavy modules' deps twice."""
    names = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run") and hasattr(mod, "Config"):
            names[mod.NAME] = mod.__name__
    return dict(sorted(names.items()))


def get(name: str) -> ModuleType:
    reg = registry()
    if name not in reg:
        raise KeyError(name)
    return importlib.import_module(reg[name])
