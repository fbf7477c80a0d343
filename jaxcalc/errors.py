"""Exceptions jaxcalc raises beyond the built-in ValueError/TypeError."""
from __future__ import annotations


class GradientCheckError(AssertionError):
    """Autodiff and finite differences disagree; the message names the leaf and index."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameters.

    Attributes:
      epoch, step: where the first non-finite value appeared (0-based).
      last_finite_loss: the last finite loss seen.
      last_finite_params: the parameters before the step that diverged.
      history: the history up to the divergence.
    """

    def __init__(self, message: str, *, epoch=None, step=None, last_finite_loss=None,
                 last_finite_params=None, history=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.last_finite_loss = last_finite_loss
        self.last_finite_params = last_finite_params
        self.history = history
