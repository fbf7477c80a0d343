"""Finite differences: forward, central and complex-step gradients, and the step-size study.

A finite difference replaces the limit in ``f'(x) = lim (f(x + h) − f(x)) / h`` by a small but
finite ``h``. Two errors compete:

* truncation (Taylor): forward ``≈ h·|f''|/2`` (slope +1 in log-log), central ``≈ h²·|f'''|/6``
  (slope +2);
* round-off: ``f`` is only known to ``≈ eps·|f|``, divided by ``h`` (slope −1).

Balancing them gives the default steps below: forward ``h ≈ sqrt(eps)·max(1, |x|)`` (error
``≈ sqrt(eps)``), central ``h ≈ eps^(1/3)·max(1, |x|)`` (error ``≈ eps^(2/3)``), with ``eps`` the
machine epsilon of ``x``'s dtype. The complex step ``Im f(x + ih) / h`` has no subtraction, hence
no round-off term: ``h = 1e-20`` gives the derivative to working precision for real-analytic ``f``.

Every gradient here is vectorised: the ``n`` perturbed evaluations run as one ``jax.vmap`` over the
coordinates (no Python loop per coordinate). That materialises an ``(n, n)`` basis, so these are
for small ``n`` (reference values, tests); use :func:`jaxcalc.check_grads` with
``method="directional"`` for large inputs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "central_difference",
    "complex_step",
    "default_step",
    "difference_quotient",
    "forward_difference",
    "step_size_errors",
]

Method = Literal["forward", "central", "complex"]
_EXPONENT = {"forward": 1.0 / 2.0, "central": 1.0 / 3.0}


def _flat_float(x, what: str = "x"):
    """Ravel a pytree of real floating arrays into one vector; refuse integers and complex.

    Returns ``(flat, spec)``: ``spec = (treedef, shapes, dtypes)`` is hashable, so the compiled
    difference kernels below are cached per ``(f, spec)``.
    """
    with_path, treedef = jax.tree_util.tree_flatten_with_path(x)
    if not with_path:
        raise ValueError(f"{what} has no array leaves to differentiate")
    for path, leaf in with_path:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "<root>"
            raise TypeError(f"{what}{where} must be real floating-point to differentiate, got dtype {dtype}")
    flat = ravel_pytree(x)[0]
    leaves = [leaf for _, leaf in with_path]
    spec = (treedef, tuple(tuple(np.shape(v)) for v in leaves), tuple(jnp.result_type(v) for v in leaves))
    return flat, spec


def _unflatten(spec, flat, cast: bool = True):
    """Inverse of :func:`_flat_float`; ``cast=False`` keeps ``flat``'s dtype (complex steps)."""
    treedef, shapes, dtypes = spec
    out, i = [], 0
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = int(np.prod(shape, dtype=int))
        leaf = flat[i:i + size].reshape(shape)
        out.append(leaf.astype(dtype) if cast else leaf)
        i += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _quotients_impl(flat, hs, *, f, spec, method):
    """All ``n`` difference quotients as one vmap over the coordinates (``e_i h_i`` = rows of diag(h))."""

    def g(v):
        out = f(_unflatten(spec, v, cast=method != "complex"))
        if jnp.ndim(out) != 0:
            raise ValueError(f"f must return a scalar to take a gradient, got shape {jnp.shape(out)}")
        return jnp.imag(out) if method == "complex" else out

    if method == "forward":
        return (jax.vmap(lambda e: g(flat + e))(jnp.diag(hs)) - g(flat)) / hs
    if method == "central":
        return jax.vmap(lambda e: g(flat + e) - g(flat - e))(jnp.diag(hs)) / (2 * hs)
    cdtype = jnp.result_type(flat.dtype, jnp.complex64)
    z = flat.astype(cdtype)
    steps = jnp.diag(hs).astype(cdtype) * 1j
    return (jax.vmap(lambda e: g(z + e))(steps) / hs).astype(flat.dtype)


_quotients_cached = jax.jit(_quotients_impl, static_argnames=("f", "spec", "method"))


def _quotients(f, flat, hs, spec, method):
    """Compiled once per ``(f, structure of x, method)``; a fresh jit when ``f`` is not hashable."""
    try:
        hash(f)
    except TypeError:
        return jax.jit(lambda flat, hs: _quotients_impl(flat, hs, f=f, spec=spec, method=method))(flat, hs)
    return _quotients_cached(flat, hs, f=f, spec=spec, method=method)


def default_step(x, method: Literal["forward", "central"] = "central"):
    """The rule-of-thumb step per coordinate: ``eps^p · max(1, |x|)``.

    ``p = 1/2`` for forward and ``p = 1/3`` for central differences; ``eps`` is the machine epsilon
    of ``x``'s dtype (``2^-23`` for float32, ``2^-52`` for float64). The step is then rounded so that
    ``x + h`` is exactly representable (``h = (x + h) − x``), which removes one source of error.

    Args:
      x: ``(...)`` float array.
      method: ``"forward"`` or ``"central"``.

    Returns:
      ``(...)`` positive steps, same dtype as ``x``.
    """
    if method not in _EXPONENT:
        raise ValueError(f"method must be 'forward' or 'central', got {method!r}")
    x = jnp.asarray(x)
    eps = float(jnp.finfo(x.dtype).eps)
    h = eps ** _EXPONENT[method] * jnp.maximum(1.0, jnp.abs(x)).astype(x.dtype)
    return (x + h) - x


def _steps(flat, h, method):
    if h is None:
        return default_step(flat, method)
    h = jnp.asarray(h, dtype=flat.dtype)
    if jnp.ndim(h) not in (0, 1) or (jnp.ndim(h) == 1 and h.shape != flat.shape):
        raise ValueError(f"h must be a scalar or one step per coordinate ({flat.shape}), got shape {h.shape}")
    return jnp.broadcast_to(h, flat.shape)


def forward_difference(f: Callable, x, *, h=None):
    """Gradient of a scalar ``f`` at ``x`` by forward differences ``(f(x + h·e_i) − f(x)) / h``.

    Args:
      f: function of ``x`` returning a scalar.
      x: array ``(...)`` or pytree of float arrays.
      h: step: ``None`` (default: ``sqrt(eps)·max(1, |x_i|)`` per coordinate), a scalar, or one step
        per coordinate of the raveled ``x``.

    Returns:
      The gradient, same structure, shapes and dtype as ``x``. Error ``O(h) + O(eps/h)``.

    >>> float(forward_difference(jnp.exp, 1.0))   # e = 2.71828...   # doctest: +SKIP
    2.7182...
    """
    flat, spec = _flat_float(x)
    hs = _steps(flat, h, "forward")
    return _unflatten(spec, _quotients(f, flat, hs, spec, "forward"))


def central_difference(f: Callable, x, *, h=None):
    """Gradient of a scalar ``f`` at ``x`` by central differences ``(f(x + h e_i) − f(x − h e_i)) / 2h``.

    Args:
      f: function of ``x`` returning a scalar.
      x: array ``(...)`` or pytree of float arrays.
      h: step: ``None`` (default: ``eps^(1/3)·max(1, |x_i|)``), a scalar, or one per coordinate.

    Returns:
      The gradient, same structure as ``x``. Error ``O(h²) + O(eps/h)``.

    Note:
      At a kink the central difference averages the one-sided slopes: for ReLU at exactly 0 it
      returns ``(h − 0) / 2h = 0.5``, while ``jax.grad(jax.nn.relu)(0.0) = 0``. Neither is "the"
      derivative, which does not exist there.
    """
    flat, spec = _flat_float(x)
    hs = _steps(flat, h, "central")
    return _unflatten(spec, _quotients(f, flat, hs, spec, "central"))


def complex_step(f: Callable, x, *, h: float = 1e-20):
    """Gradient of a real-analytic scalar ``f`` by the complex step ``Im f(x + i h e_i) / h``.

    No difference of nearly equal numbers is taken, so there is no round-off term and ``h`` can be
    tiny: the result is exact to working precision. ``f`` must accept complex input and be
    analytic on the path (no ``abs``, ``maximum``, comparisons or ``conj`` of ``x``).

    Args:
      f: function of ``x`` returning a scalar; evaluated on complex arrays.
      x: array or pytree of float arrays (float32 evaluates in complex64, float64 in complex128).
      h: the imaginary step (default ``1e-20``).

    Returns:
      The gradient, same structure and dtype as ``x``.
    """
    flat, spec = _flat_float(x)
    hs = jnp.full(flat.shape, h, dtype=flat.dtype)
    return _unflatten(spec, _quotients(f, flat, hs, spec, "complex"))


def difference_quotient(f: Callable, x, h, method: Method = "central"):
    """One scalar difference quotient of a scalar function of a scalar: the building block of the study.

    ``forward``: ``(f(x + h) − f(x)) / h``; ``central``: ``(f(x + h) − f(x − h)) / 2h``;
    ``complex``: ``Im f(x + ih) / h``. ``x`` and ``h`` are scalars of the same float dtype; the
    arithmetic happens in that dtype (``h`` is *not* rounded, so the round-off of ``x + h`` shows).
    """
    if method == "forward":
        return (f(x + h) - f(x)) / h
    if method == "central":
        return (f(x + h) - f(x - h)) / (2 * h)
    if method == "complex":
        cdtype = jnp.result_type(jnp.result_type(x), jnp.complex64)
        return jnp.imag(f(x.astype(cdtype) + 1j * h.astype(cdtype))) / h
    raise ValueError(f"method must be 'forward', 'central' or 'complex', got {method!r}")


def step_size_errors(f: Callable, x, exact, hs, *, method: Method = "central"):
    """Relative error ``|D_h f(x) − f'(x)| / |f'(x)|`` for every step in ``hs``, vectorised over ``h``.

    Args:
      f: scalar function of a scalar.
      x: the point, a float scalar; its dtype is the working precision.
      exact: the exact derivative ``f'(x)`` (pass it in higher precision: a float64 value).
      hs: ``(m,)`` steps.
      method: ``"forward"``, ``"central"`` or ``"complex"``.

    Returns:
      ``(m,)`` relative errors in float64 when x64 is enabled (else float32).

    This is jit-able (``method`` static) and computes the whole sweep as one ``vmap`` over ``h``.
    """
    x = jnp.asarray(x)
    hs = jnp.asarray(hs, dtype=x.dtype)
    approx = jax.vmap(lambda h: difference_quotient(f, x, h, method))(hs)
    ref = jnp.asarray(exact)
    wide = jnp.result_type(ref.dtype, approx.dtype)
    return jnp.abs(approx.astype(wide) - ref.astype(wide)) / jnp.abs(ref.astype(wide))
