"""jaxcalc: the calculus behind machine learning as small, pure, verified JAX functions."""
from __future__ import annotations

__version__ = "0.1.0"

from jaxcalc import losses  # noqa: E402
from jaxcalc.errors import DivergenceError, GradientCheckError  # noqa: E402

__all__ = ["losses", "DivergenceError", "GradientCheckError", "__version__"]
