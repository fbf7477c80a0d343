"""jaxcalc: the calculus behind machine learning as small, pure, verified JAX functions."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from jaxcalc import losses
from jaxcalc.errors import DivergenceError, GradientCheckError

# Heavier modules load on first use: `jaxcalc.check_grads`, `jaxcalc.train.fit`, ...
_LAZY_ATTRS = {"check_grads": "jaxcalc.gradcheck", "fit": "jaxcalc.train", "sweep": "jaxcalc.train",
               "lr_find": "jaxcalc.train", "diagnose": "jaxcalc.diagnosis"}
_SUBMODULES = {"derivatives", "gradcheck", "integrate", "optim", "train", "per_example", "backprop",
               "models", "data", "parallel", "checkpoint", "ops", "runio", "cli", "diagnosis"}


def __getattr__(name):
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxcalc.{name}")
    raise AttributeError(f"module 'jaxcalc' has no attribute {name!r}")


__all__ = ["DivergenceError", "GradientCheckError", "__version__", "check_grads", "diagnose", "fit", "losses",
           "lr_find", "sweep"]
