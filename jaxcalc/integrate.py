"""Quadrature: trapezoid, Simpson, Gauss–Legendre and Monte Carlo, differentiable end to end.

Every rule is a weighted sum ``∫_a^b f(t) dt ≈ Σ_i w_i f(t_i)`` whose nodes ``t_i`` and weights
``w_i`` are smooth functions of the limits, so ``jax.grad`` differentiates through the limits (the
fundamental theorem of calculus, ``d/db ∫_a^b f = f(b)``, holds up to the rule's error) and through
parameters of ``f`` (the Leibniz rule, ``d/dθ ∫ f(t, θ) dt = ∫ ∂f/∂θ dt``).

Parameters of ``f``: pass them with ``args`` (``f(t, *args)``, like ``scipy.integrate.quad``) or
close over them; both are traced, so ``jax.vmap`` over parameters or limits and ``jax.grad`` with
respect to either work, and changing them does not recompile. ``n`` is static (a Python int: it
fixes the array shapes); ``f`` is applied to one node at a time (``jax.vmap`` over the nodes), so
it may be written for a scalar ``t`` and may return an array (integrated componentwise).

Errors, for ``f`` smooth on ``[a, b]`` with ``h = (b − a)/n``:

* trapezoid: ``−(b − a) h² f''(ξ)/12``, order 2 (halving ``h`` cuts the error ≈4×);
* Simpson (``n`` even): ``−(b − a) h⁴ f⁽⁴⁾(ξ)/180``, order 4 (≈16×);
* Gauss–Legendre with ``n`` nodes: exact for polynomials of degree ``<= 2n − 1``;
* Monte Carlo with ``n`` uniform samples: standard error ``(b − a)·std(f)/sqrt(n)``.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc._validate import is_concrete

__all__ = ["gauss_legendre", "monte_carlo", "simpson", "trapezoid"]


def _check_n(n, rule: str, minimum: int = 1) -> int:
    if isinstance(n, bool):
        raise TypeError(f"{rule}: n must be a Python int (it fixes array shapes), got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{rule}: n must be a Python int (static; it fixes array shapes), got {n!r}") from None
    if n < minimum:
        raise ValueError(f"{rule}: n must be >= {minimum}, got {n}")
    return n


def _limits(a, b, rule: str):
    """Limits as float scalars of a common dtype; refuse arrays and (on concrete input) non-finite values."""
    for name, v in (("a", a), ("b", b)):
        if jnp.ndim(v) != 0:
            raise ValueError(f"{rule}: limit {name} must be a scalar, got shape {jnp.shape(v)}; "
                             "use jax.vmap to integrate over many limits")
        if is_concrete(v) and not math.isfinite(float(np.asarray(v))):
            raise ValueError(f"{rule}: limit {name} = {float(np.asarray(v))} is not finite; "
                             "map an infinite interval to a finite one first (e.g. t = x / (1 − x²))")
    dtype = jnp.result_type(a, b, 1.0)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{rule}: limits must be real numbers, got dtype {dtype}")
    return jnp.asarray(a, dtype), jnp.asarray(b, dtype)


def _weighted_sum(f, nodes, weights, args):
    """``Σ_i weights_i · f(nodes_i, *args)``; ``f`` may return an array (one sum per component)."""
    values = jax.vmap(lambda t: f(t, *args))(nodes)
    return jnp.tensordot(weights.astype(values.dtype), values, axes=(0, 0))


def trapezoid(f: Callable, a, b, *, n: int, args: tuple = ()):
    """Composite trapezoid rule with ``n`` equal panels (``n + 1`` nodes).

    ``h·(f₀/2 + f₁ + ... + f_{n−1} + f_n/2)`` with ``h = (b − a)/n``; error ``O(h²)``.

    Args:
      f: integrand ``f(t, *args)``, ``t`` a scalar; returns a scalar or array.
      a, b: scalar limits (``b < a`` gives the negated integral).
      n: number of panels, a Python int ``>= 1``.
      args: extra (traced) arguments of ``f``.

    Returns:
      The integral, shape of ``f``'s output.

    >>> trapezoid(jnp.sin, 0.0, jnp.pi, n=64)   # ≈ 2   # doctest: +SKIP
    """
    n = _check_n(n, "trapezoid")
    a, b = _limits(a, b, "trapezoid")
    h = (b - a) / n
    nodes = a + h * jnp.arange(n + 1, dtype=a.dtype)
    w = np.ones(n + 1)
    w[[0, -1]] = 0.5
    return h * _weighted_sum(f, nodes, jnp.asarray(w, a.dtype), args)


def simpson(f: Callable, a, b, *, n: int, args: tuple = ()):
    """Composite Simpson rule with ``n`` panels (``n`` even, ``>= 2``).

    ``h/3·(f₀ + 4f₁ + 2f₂ + 4f₃ + ... + 4f_{n−1} + f_n)``; error ``O(h⁴)``.

    Args and Returns as :func:`trapezoid`. Raises ``ValueError`` for odd ``n``.
    """
    n = _check_n(n, "simpson", minimum=2)
    if n % 2:
        raise ValueError(f"simpson: n must be even (panels come in pairs), got {n}")
    a, b = _limits(a, b, "simpson")
    h = (b - a) / n
    nodes = a + h * jnp.arange(n + 1, dtype=a.dtype)
    w = np.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return h / 3 * _weighted_sum(f, nodes, jnp.asarray(w, a.dtype), args)


def gauss_legendre(f: Callable, a, b, *, n: int, args: tuple = ()):
    """Gauss–Legendre quadrature with ``n`` nodes, exact for polynomials of degree ``<= 2n − 1``.

    Nodes ``x_i`` and weights ``w_i`` on ``[−1, 1]`` come from ``numpy.polynomial.legendre.leggauss(n)``
    at trace time (``n`` is static), mapped to ``[a, b]``: ``t_i = (a + b)/2 + (b − a)/2·x_i``,
    integral ``≈ (b − a)/2 · Σ w_i f(t_i)``.

    Args and Returns as :func:`trapezoid` (``n >= 1`` nodes).
    """
    n = _check_n(n, "gauss_legendre")
    a, b = _limits(a, b, "gauss_legendre")
    x, w = np.polynomial.legendre.leggauss(n)
    half = (b - a) / 2
    nodes = (a + b) / 2 + half * jnp.asarray(x, a.dtype)
    return half * _weighted_sum(f, nodes, jnp.asarray(w, a.dtype), args)


def monte_carlo(f: Callable, a, b, *, n: int, key, args: tuple = ()):
    """Plain Monte Carlo: ``(b − a)·mean f(t_i)`` over ``n`` uniform samples ``t_i = a + (b − a)·u_i``.

    The samples are reparametrised (``u_i ~ U(0, 1)`` does not depend on the limits), so the estimate
    is differentiable in ``a``, ``b`` and the parameters of ``f``. Its standard error shrinks like
    ``1/sqrt(n)`` whatever the dimension, much slower than the deterministic rules in 1-D.

    Args:
      f, a, b, args: as :func:`trapezoid`.
      n: number of samples, a Python int ``>= 1``.
      key: a ``jax.random.key``; the same key gives the same estimate.

    Returns:
      The estimate, shape of ``f``'s output.
    """
    n = _check_n(n, "monte_carlo")
    a, b = _limits(a, b, "monte_carlo")
    u = jax.random.uniform(key, (n,), a.dtype)
    nodes = a + (b - a) * u
    return (b - a) * _weighted_sum(f, nodes, jnp.full((n,), 1.0 / n, a.dtype), args)
