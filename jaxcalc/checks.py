"""Value checks that hold on concrete arrays, under ``jit``/``vmap``/``grad`` and inside ``fit``.

Static properties (shape, rank, dtype) are checked in Python at trace time (``jaxcalc._validate``).
A *value* check (a label outside ``[0, k)``, a probability target outside ``[0, 1]``) depends on
data, which a trace does not have. :func:`check_entries` therefore acts by context:

* **concrete arrays** (an eager call): raises ``ValueError`` at once, naming the first bad
  index, its value and how many entries are bad;
* **traced, under** :func:`checkify_fn` (what ``jaxcalc.train.fit`` and the experiments use): a
  ``jax.experimental.checkify.debug_check`` with the same message, which the compiled program
  returns as an error value; :func:`raise_if_failed` turns it into the same ``ValueError``;
* **traced otherwise** (a user's own ``jax.jit(loss)``): the ``debug_check`` compiles to nothing
  (it costs nothing), so the caller must make its result NaN where the input is bad
  (:func:`poison`): a wrong number never comes back silently, NaN at worst.

To get the checked error from your own jitted code, wrap it::

    err, out = jax.jit(checks.checkify_fn(loss))(params, batch)
    checks.raise_if_failed(err)          # ValueError: labels[3] = 10 is outside ...
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["check_entries", "checkify_fn", "poison", "raise_if_failed"]


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _template(name: str, ndim: int, condition: str, noun: str) -> str:
    index = ", ".join(["{}"] * max(ndim, 1))
    return f"{name}[{index}] = {{}} {condition} ({{}} bad {noun} in all)"


def check_entries(bad, values, *, name: str, condition: str, noun: str = "entries") -> None:
    """Fail where ``bad`` holds, naming the first bad entry of ``values``.

    The message reads ``"{name}[i] = v {condition} (n bad {noun} in all)"``, e.g.
    ``labels[3] = 10 is outside the valid class range [0, 10) (1 bad label(s) in all)``, the
    same eagerly and from a compiled program.

    Args:
      bad: bool array, same shape as ``values``: True where an entry is invalid.
      values: the checked array (its entry at the first bad index is quoted).
      name: the argument's name in the message.
      condition: what is wrong with a bad entry, e.g. ``"is outside [0, 1]"``.
      noun: the plural in ``"(n bad {noun} in all)"``.

    Raises:
      ValueError: on concrete inputs with any bad entry. Under a trace nothing is raised here:
        see the module docstring (``checkify_fn`` reports it; otherwise use :func:`poison`).
    """
    shape = tuple(np.shape(values))
    template = _template(name, len(shape), condition, noun)
    if not (_is_traced(bad) or _is_traced(values)):
        bad_np = np.asarray(bad)
        if bad_np.any():
            idx = tuple(int(i) for i in np.argwhere(bad_np)[0]) if bad_np.ndim else (0,)
            value = np.asarray(values)[idx] if shape else np.asarray(values)
            raise ValueError(template.format(*idx, value.item(), int(bad_np.sum())))
        return
    bad = jnp.asarray(bad)
    flat = jnp.ravel(bad)
    first = jnp.argmax(flat)
    idx = jnp.unravel_index(first, shape) if shape else (first,)
    value = jnp.ravel(jnp.asarray(values))[first]
    checkify.debug_check(~jnp.any(flat), template, *idx, value, jnp.sum(flat))


def poison(x, bad):
    """``x`` with NaN where ``bad`` (broadcast to ``x``'s shape by the caller): a bad input gives
    NaN under a plain ``jit`` instead of a plausible wrong number."""
    return jnp.where(bad, jnp.asarray(jnp.nan, jnp.result_type(x)), x)


def checkify_fn(fn):
    """``fn`` functionalized for jaxcalc's value checks: ``checkify_fn(fn)(*args) -> (err, out)``.

    Jit-compatible (``jax.jit(checkify_fn(fn))``), composes with ``vmap``, ``grad`` inside ``fn``
    and ``lax.scan``; only user checks (``check_entries``) are enabled, so valid inputs cost one
    compare-and-reduce per checked array. Pass ``err`` to :func:`raise_if_failed`.
    """
    return checkify.checkify(fn, errors=checkify.user_checks)


_SUFFIX = re.compile(r"\s*\(`check` failed\)\s*$")


def raise_if_failed(err) -> None:
    """Raise the ``ValueError`` recorded in ``err`` (from :func:`checkify_fn`), if any.

    The message is the check's own (as :func:`check_entries` would raise eagerly), without
    checkify's decorations; one device-to-host read of the error code when nothing failed.
    """
    message = err.get()
    if message is not None:
        first = _SUFFIX.sub("", message.strip().splitlines()[0])
        raise ValueError(first) from None

