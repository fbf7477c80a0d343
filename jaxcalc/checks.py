"""Value checks that hold on concrete arrays, under ``jit``/``vmap``/``grad`` and inside ``fit``.

Static properties (shape, rank, dtype) are checked in Python at trace time (``jaxcalc._validate``).
A *value* check (a label outside ``[0, k)``, a probability target outside ``[0, 1]``) depends on
data, which a trace does not have. :func:`check_entries` therefore acts by context:

* **concrete arrays** (an eager call): raises ``ValueError`` at once, naming the first bad
  index, its value and how many entries are bad;
* **traced, under** :func:`checkify_fn` (what ``jaxcalc.train.fit`` and the experiments use): a
  ``jax.experimental.checkify.debug_check`` with the same message, which the compiled program
  returns as an error value; :func:`raise_if_failed` turns it into the same ``ValueError``;
* **traced otherwise** (a user's own ``jax.jit(loss)``): nothing is emitted, so the caller must
  make its result NaN where the input is bad (:func:`poison`): a wrong number never comes back
  silently, NaN at worst. (Even a dropped ``debug_check`` would cost: it marks the jitted
  function as effectful, which takes every call off jax's fast C++ dispatch path, about
  0.1 ms per call on CPU; ``benchmarks/bench_loss_checks.py`` measures it.)

The checks are emitted only while :func:`checkify_fn` traces (a thread-local switch); it also
traces inside a ``jax.experimental.xla_metadata`` context, which is part of jit's cache key, so a
function jitted earlier without checks is traced again with them. A bare
``jax.experimental.checkify.checkify`` does not turn them on: use :func:`checkify_fn`.

To get the checked error from your own jitted code, wrap it::

    err, out = jax.jit(checks.checkify_fn(loss))(params, batch)
    checks.raise_if_failed(err)          # ValueError: labels[3] = 10 is outside ...
"""
from __future__ import annotations

import contextlib
import functools
import re
import threading

import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxcalc._validate import is_concrete

__all__ = ["check_entries", "checkify_fn", "poison", "raise_if_failed"]


_state = threading.local()


def _checking() -> bool:
    """True while :func:`checkify_fn` traces (the checks are functionalized there)."""
    return getattr(_state, "depth", 0) > 0


def _fresh_jit_key():
    # Part of jit's cache key: a function jitted (and cached) outside checkify_fn is traced again here.
    try:
        from jax.experimental.xla_metadata import set_xla_metadata
    except ImportError:  # an older or newer jax without it: such functions keep their unchecked trace
        return contextlib.nullcontext()
    return set_xla_metadata(jaxcalc_checks="on")


def _template(name: str, ndim: int, condition: str, noun: str) -> str:
    # "{!s}" prints a value in its own dtype, the same eagerly (a numpy scalar) and from checkify (a
    # jax scalar): float32 0.9 reads "0.9", not "0.8999999761581421".
    value = "{!s}"
    if ndim == 0:
        return f"{name} = {value} {condition}"
    index = ", ".join(["{}"] * ndim)
    return f"{name}[{index}] = {value} {condition} ({{}} bad {noun} in all)"


def check_entries(bad, values, *, name: str, condition: str, noun: str = "entries") -> None:
    """Fail where ``bad`` holds, naming the first bad entry of ``values``.

    The message reads ``"{name}[i] = v {condition} (n bad {noun} in all)"``, e.g.
    ``labels[3] = 10 is outside the valid class range [0, 10) (1 bad label(s) in all)``, the
    same eagerly and from a compiled program; for a scalar (a hyperparameter) it reads
    ``"{name} = v {condition}"``, e.g. ``delta = 0.0 is not positive``. Values print in their own
    dtype (float32 0.9 as ``0.9``).

    Args:
      bad: bool array, same shape as ``values``: True where an entry is invalid.
      values: the checked array (its entry at the first bad index is quoted).
      name: the argument's name in the message.
      condition: what is wrong with a bad entry, e.g. ``"is outside [0, 1]"``.
      noun: the plural in ``"(n bad {noun} in all)"``.

    Raises:
      ValueError: on concrete inputs with any bad entry. Under a trace nothing is raised here:
        see the module docstring (:func:`checkify_fn` reports it; the caller uses :func:`poison`).
    """
    shape = tuple(np.shape(values))
    template = _template(name, len(shape), condition, noun)
    if is_concrete(bad) and is_concrete(values):
        bad_np = np.asarray(bad)
        if bad_np.any():
            if not shape:
                raise ValueError(template.format(np.asarray(values)[()]))
            idx = tuple(int(i) for i in np.argwhere(bad_np)[0])
            raise ValueError(template.format(*idx, np.asarray(values)[idx], int(bad_np.sum())))
        return
    if not _checking():  # a plain trace: no effect, the caller's poison() gives NaN
        return
    if not shape:
        checkify.debug_check(~jnp.asarray(bad), template, values)
        return
    flat = jnp.ravel(jnp.asarray(bad))
    first = jnp.argmax(flat)
    idx = jnp.unravel_index(first, shape)
    value = jnp.ravel(jnp.asarray(values))[first]
    checkify.debug_check(~jnp.any(flat), template, *idx, value, jnp.sum(flat))


def poison(x, bad):
    """``x`` with NaN where ``bad`` (broadcast to ``x``'s shape by the caller): a bad input gives
    NaN under a plain ``jit`` instead of a plausible wrong number.

    A concrete ``bad`` with no True entry (the eager path, after :func:`check_entries` passed)
    returns ``x`` unchanged, so eager calls and constant-folded checks add no operation.
    """
    if is_concrete(bad) and not np.any(np.asarray(bad)):
        return x
    return jnp.where(bad, jnp.asarray(jnp.nan, jnp.result_type(x)), x)


def checkify_fn(fn):
    """``fn`` functionalized for jaxcalc's value checks: ``checkify_fn(fn)(*args) -> (err, out)``.

    Jit-compatible (``jax.jit(checkify_fn(fn))``), composes with ``vmap``, ``grad`` inside ``fn``
    and ``lax.scan``; only user checks (``check_entries``) are enabled, so valid inputs cost one
    compare-and-reduce per checked array. Pass ``err`` to :func:`raise_if_failed`.

    JAX limitation (jax 0.10): a check inside a ``lax.scan`` is lost when the *whole* scan is
    differentiated (``grad`` of a function that runs the scan); checkify reports it when the
    gradient is taken inside each scan step (``scan`` of ``value_and_grad`` steps, the shape of
    ``jaxcalc.train.fit``). Differentiate inside the scan, or check the data before it.
    """
    checked = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            with _fresh_jit_key():
                return checked(*args, **kwargs)
        finally:
            _state.depth -= 1

    return run


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

