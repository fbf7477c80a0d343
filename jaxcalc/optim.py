"""From-scratch first-order optimizers as optax ``GradientTransformation``\\ s.

Each optimizer is an ``(init, update)`` pair of pure functions over pytrees, with a typed
``NamedTuple`` state, so it is interchangeable with optax's: ``optax.apply_updates``,
``optax.chain``, ``optax.inject_hyperparams`` all accept them. ``update(grads, state, params)``
returns the *update* ``u`` (already multiplied by ``-learning_rate``) and the new state; the
step is ``params ← params + u``.

Notation in the docstrings: ``g_t`` the gradient at step ``t = 1, 2, ...``, ``θ`` the
parameters, ``η_t`` the learning rate at step ``t``; squares, square roots and divisions act
element by element.

The learning rate is a float, a (traced) scalar array, or an optax schedule
``count -> η``. A schedule is evaluated at the state's step count, which starts at 0, so
the first step uses ``schedule(0)`` (as optax does). Because a learning rate given as an
array is an ordinary traced value, a jitted training function that takes it as an argument
compiles once for every learning rate (see ``tests/test_optim.py``).

The defaults equal those of the optax twins (``optax.sgd``, ``optax.sgd(momentum=β)``,
``optax.sgd(momentum=β, nesterov=True)``, ``optax.adagrad``, ``optax.rmsprop``,
``optax.adam``, ``optax.adamw``), and the arithmetic is done in the same order, so the
trajectories agree to rounding.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "AdagradState",
    "AdamState",
    "GDState",
    "MomentumState",
    "RMSPropState",
    "adagrad",
    "adam",
    "adamw",
    "gd",
    "momentum",
    "nesterov",
    "rmsprop",
]

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


class GDState(NamedTuple):
    """State of :func:`gd`: only the step count (for learning-rate schedules)."""

    count: jax.Array  # () int32


class MomentumState(NamedTuple):
    """State of :func:`momentum` and :func:`nesterov`."""

    count: jax.Array  # () int32
    velocity: Any  # pytree like params: v_t


class AdagradState(NamedTuple):
    """State of :func:`adagrad`."""

    count: jax.Array
    sum_of_squares: Any  # s_t = s_0 + Σ_k g_k²


class RMSPropState(NamedTuple):
    """State of :func:`rmsprop`."""

    count: jax.Array
    nu: Any  # exponential moving average of g²


class AdamState(NamedTuple):
    """State of :func:`adam` and :func:`adamw`."""

    count: jax.Array  # t, number of updates made
    mu: Any  # first moment m_t
    nu: Any  # second moment v_t


# --------------------------------------------------------------------------- helpers


def _check_lr(learning_rate) -> None:
    if callable(learning_rate):
        return
    if isinstance(learning_rate, (str, bytes)) or not (
        isinstance(learning_rate, (int, float, jax.Array, jax.core.Tracer, np.ndarray, np.generic))
    ):
        raise TypeError(f"learning_rate must be a number, a scalar array or a schedule, got {learning_rate!r}")
    shape = jnp.shape(learning_rate)
    if shape != ():
        raise ValueError(f"learning_rate must be a scalar, got shape {shape}")
    if not isinstance(learning_rate, jax.core.Tracer):
        value = float(learning_rate)
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"learning_rate must be a finite positive number, got {value}")


def _check_unit_interval(value, name: str, *, closed_left: bool = True) -> None:
    """Raise ValueError unless ``0 <= value < 1`` (concrete values only)."""
    if isinstance(value, jax.core.Tracer):
        return
    v = float(value)
    ok = (0.0 <= v < 1.0) if closed_left else (0.0 < v < 1.0)
    if not ok:
        interval = "[0, 1)" if closed_left else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {v}")


def _check_nonneg(value, name: str, *, strict: bool = False) -> None:
    if isinstance(value, jax.core.Tracer) or callable(value):
        return
    v = float(value)
    if (v <= 0.0 if strict else v < 0.0) or v != v:
        raise ValueError(f"{name} must be {'positive' if strict else 'non-negative'}, got {v}")


def _lr_at(learning_rate, count):
    """η at this step: ``schedule(count)`` for a schedule, else the constant."""
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _scale(step_size, tree):
    """``-η · tree``, leaf by leaf in each leaf's dtype (optax's ``scale_by_learning_rate``)."""
    return jax.tree.map(lambda g: jnp.asarray(-step_size, dtype=g.dtype) * g, tree)


def _zeros_count():
    return jnp.zeros([], jnp.int32)


def _increment(count):
    return optax.safe_increment(count)


# --------------------------------------------------------------------------- optimizers


def gd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Plain gradient descent.

    .. math::  θ_t = θ_{t-1} − η_t\\, g_t

    Args:
      learning_rate: ``η``: a positive float, a scalar array, or a schedule ``count -> η``.

    Returns:
      An optax ``GradientTransformation``; matches ``optax.sgd(learning_rate)``.
    """
    _check_lr(learning_rate)

    def init(params):
        del params
        return GDState(count=_zeros_count())

    def update(grads, state, params=None):
        del params
        eta = _lr_at(learning_rate, state.count)
        return _scale(eta, grads), GDState(count=_increment(state.count))

    return optax.GradientTransformation(init, update)


def _momentum(learning_rate, beta, use_nesterov: bool):
    _check_lr(learning_rate)
    _check_unit_interval(beta, "beta")

    def init(params):
        return MomentumState(count=_zeros_count(), velocity=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        velocity = jax.tree.map(lambda g, v: g + beta * v, grads, state.velocity)
        direction = jax.tree.map(lambda g, v: g + beta * v, grads, velocity) if use_nesterov else velocity
        eta = _lr_at(learning_rate, state.count)
        return _scale(eta, direction), MomentumState(count=_increment(state.count), velocity=velocity)

    return optax.GradientTransformation(init, update)


def momentum(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> optax.GradientTransformation:
    """Heavy-ball momentum (Polyak), without dampening.

    .. math::
        v_t = g_t + β\\, v_{t-1},\\quad v_0 = 0 \\\\
        θ_t = θ_{t-1} − η_t\\, v_t

    Args:
      learning_rate: ``η`` (float, scalar array or schedule).
      beta: ``β ∈ [0, 1)``, the decay of the velocity.

    Returns:
      A ``GradientTransformation``; matches ``optax.sgd(learning_rate, momentum=beta)``.
    """
    return _momentum(learning_rate, beta, use_nesterov=False)


def nesterov(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> optax.GradientTransformation:
    """Nesterov momentum in the "look-ahead" form of Sutskever et al. (2013).

    .. math::
        v_t = g_t + β\\, v_{t-1},\\quad v_0 = 0 \\\\
        θ_t = θ_{t-1} − η_t\\,(g_t + β\\, v_t)

    Args:
      learning_rate: ``η`` (float, scalar array or schedule).
      beta: ``β ∈ [0, 1)``.

    Returns:
      A ``GradientTransformation``; matches ``optax.sgd(learning_rate, momentum=beta, nesterov=True)``.
    """
    return _momentum(learning_rate, beta, use_nesterov=True)


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
) -> optax.GradientTransformation:
    """AdaGrad (Duchi, Hazan & Singer, 2011): per-coordinate steps shrink with the gradients seen.

    .. math::
        s_t = s_{t-1} + g_t^2,\\quad s_0 = \\text{initial\\_accumulator\\_value} \\\\
        θ_t = θ_{t-1} − η_t\\, g_t / \\sqrt{s_t + ε}

    (a coordinate with ``s_t = 0`` is left unchanged).

    Args:
      learning_rate: ``η`` (float, scalar array or schedule).
      initial_accumulator_value: ``s_0 >= 0``.
      eps: ``ε >= 0``, added inside the square root.

    Returns:
      A ``GradientTransformation``; matches ``optax.adagrad`` with the same arguments.
    """
    _check_lr(learning_rate)
    _check_nonneg(initial_accumulator_value, "initial_accumulator_value")
    _check_nonneg(eps, "eps")

    def init(params):
        return AdagradState(
            count=_zeros_count(),
            sum_of_squares=jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params),
        )

    def update(grads, state, params=None):
        del params
        s = jax.tree.map(lambda g, t: g * g + t, grads, state.sum_of_squares)
        direction = jax.tree.map(lambda g, t: jnp.where(t > 0, jax.lax.rsqrt(t + eps), 0.0) * g, grads, s)
        eta = _lr_at(learning_rate, state.count)
        return _scale(eta, direction), AdagradState(count=_increment(state.count), sum_of_squares=s)

    return optax.GradientTransformation(init, update)


def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8) -> optax.GradientTransformation:
    """RMSProp (Tieleman & Hinton, 2012): divide by a running root-mean-square of the gradient.

    .. math::
        ν_t = ρ\\, ν_{t-1} + (1 − ρ)\\, g_t^2,\\quad ν_0 = 0 \\\\
        θ_t = θ_{t-1} − η_t\\, g_t / \\sqrt{ν_t + ε}

    Args:
      learning_rate: ``η`` (float, scalar array or schedule).
      decay: ``ρ ∈ [0, 1)``.
      eps: ``ε >= 0``, added inside the square root (as optax does by default).

    Returns:
      A ``GradientTransformation``; matches ``optax.rmsprop`` with the same arguments.
    """
    _check_lr(learning_rate)
    _check_unit_interval(decay, "decay")
    _check_nonneg(eps, "eps")

    def init(params):
        return RMSPropState(count=_zeros_count(), nu=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        nu = jax.tree.map(lambda g, n: (1 - decay) * (g * g) + decay * n, grads, state.nu)
        direction = jax.tree.map(lambda g, n: jax.lax.rsqrt(n + eps) * g, grads, nu)
        eta = _lr_at(learning_rate, state.count)
        return _scale(eta, direction), RMSPropState(count=_increment(state.count), nu=nu)

    return optax.GradientTransformation(init, update)


def _adam_direction(grads, state, b1, b2, eps):
    """Adam's bias-corrected direction ``m̂_t / (sqrt(v̂_t) + ε)`` and the new state."""
    mu = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, grads, state.mu)
    nu = jax.tree.map(lambda g, v: (1 - b2) * (g * g) + b2 * v, grads, state.nu)
    count = _increment(state.count)
    c1 = 1 - b1**count  # bias corrections 1 − β^t
    c2 = 1 - b2**count
    direction = jax.tree.map(
        lambda m, v: (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps), mu, nu
    )
    return direction, AdamState(count=count, mu=mu, nu=nu)


def _check_adam(learning_rate, b1, b2, eps):
    _check_lr(learning_rate)
    _check_unit_interval(b1, "b1")
    _check_unit_interval(b2, "b2")
    _check_nonneg(eps, "eps")


def _adam_init(params):
    return AdamState(
        count=_zeros_count(),
        mu=jax.tree.map(jnp.zeros_like, params),
        nu=jax.tree.map(jnp.zeros_like, params),
    )


def adam(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba, 2015).

    .. math::
        m_t = β_1 m_{t-1} + (1 − β_1)\\, g_t,\\quad v_t = β_2 v_{t-1} + (1 − β_2)\\, g_t^2 \\\\
        \\hat m_t = m_t / (1 − β_1^t),\\quad \\hat v_t = v_t / (1 − β_2^t) \\\\
        θ_t = θ_{t-1} − η_t\\, \\hat m_t / (\\sqrt{\\hat v_t} + ε)

    with ``m_0 = v_0 = 0``.

    Args:
      learning_rate: ``η`` (float, scalar array or schedule).
      b1: ``β_1 ∈ [0, 1)``.
      b2: ``β_2 ∈ [0, 1)``.
      eps: ``ε >= 0``, added outside the square root.

    Returns:
      A ``GradientTransformation``; matches ``optax.adam`` with the same arguments.
    """
    _check_adam(learning_rate, b1, b2, eps)

    def update(grads, state, params=None):
        del params
        eta = _lr_at(learning_rate, state.count)
        direction, new_state = _adam_direction(grads, state, b1, b2, eps)
        return _scale(eta, direction), new_state

    return optax.GradientTransformation(_adam_init, update)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    .. math::
        θ_t = θ_{t-1} − η_t \\left( \\hat m_t / (\\sqrt{\\hat v_t} + ε) + λ_t\\, θ_{t-1} \\right)

    with ``m̂, v̂`` as in :func:`adam`. The decay ``λ θ`` is added to the Adam direction, not to
    the gradient, so it is not rescaled by ``1/sqrt(v̂)`` (that is what "decoupled" means).

    Args:
      learning_rate: ``η`` (float, scalar array or schedule).
      b1, b2, eps: as in :func:`adam`.
      weight_decay: ``λ >= 0`` (float, scalar array or schedule of the step count).

    Returns:
      A ``GradientTransformation`` whose ``update`` needs ``params``; matches ``optax.adamw``.
    """
    _check_adam(learning_rate, b1, b2, eps)
    _check_nonneg(weight_decay, "weight_decay")

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("adamw.update needs the current params (weight decay is λ·θ): "
                             "call update(grads, state, params)")
        eta = _lr_at(learning_rate, state.count)
        lam = _lr_at(weight_decay, state.count)
        direction, new_state = _adam_direction(grads, state, b1, b2, eps)
        direction = jax.tree.map(lambda d, p: d + lam * p, direction, params)
        return _scale(eta, direction), new_state

    return optax.GradientTransformation(_adam_init, update)
