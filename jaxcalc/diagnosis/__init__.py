"""Diagnose a loss: the line that makes a NaN, breaks a gradient or loses float32 precision.

``report = jaxcalc.diagnose(f, *args, argnums=0)`` traces ``f`` and ``jax.grad(f)`` to jaxprs, evaluates them
equation by equation in one compiled program (a jaxpr interpreter with a float64 shadow of every value;
:mod:`jaxcalc.diagnosis.interpret`), and reports :class:`Finding` s at the user's source lines:
``nonfinite_forward``, ``where_nan``, ``nonfinite_backward``, ``wrong_derivative`` (custom_jvp/custom_vjp
rules checked in place, :mod:`jaxcalc.diagnosis.rules`) and ``precision_loss`` (local error in bits).

Modules: ``api`` (the entry point), ``interpret`` (the interpreter), ``analysis`` (origins, where-trap,
patterns), ``rules`` (custom rule checks), ``report`` (:class:`Report`, :class:`Finding`), ``_jax`` (the only
place that reads JAX internals: source lines and primitive parameters).
"""
from __future__ import annotations

from jaxcalc.diagnosis.api import DEFAULT_RULE_RTOL, DEFAULT_THRESHOLD_BITS, diagnose
from jaxcalc.diagnosis.report import KINDS, Finding, Report

__all__ = ["DEFAULT_RULE_RTOL", "DEFAULT_THRESHOLD_BITS", "KINDS", "Finding", "Report", "diagnose"]
