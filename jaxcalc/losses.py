"""Losses: per-example functions under optax's names, and mean reductions under the article's names.

Per-example losses keep optax's (0.2.8) names, argument names, defaults and semantics, so code written
for ``optax.losses`` runs unchanged on them: ``squared_error``, ``l2_loss``, ``huber_loss``
(per element, like optax's), ``sigmoid_binary_cross_entropy``, ``softmax_cross_entropy`` and
``softmax_cross_entropy_with_integer_labels`` (both with ``axis=`` and ``where=``), plus
``absolute_error``. Reductions are separate and are means: ``mse``, ``mae``, ``mean_huber``,
``cross_entropy`` (integer labels) and ``binary_cross_entropy``.

jaxcalc adds checks that optax does not make:

* **Shapes are checked, never broadcast**: the article's example 1 subtracts ``y`` of shape ``(3,)``
  from predictions of shape ``(3, 1)``, which numpy broadcasts to ``(3, 3)``; here that raises
  ``ValueError`` naming both shapes (also under ``jit``: shapes are static).
* **Values are checked** (integer labels in ``[0, k)``; probability targets in ``[0, 1]`` and
  summing to 1 along the class axis; binary labels in ``[0, 1]``; ``delta > 0``) through
  :mod:`jaxcalc.checks`: on concrete inputs a ``ValueError`` names the first bad index, its value
  and the count; under your own ``jax.jit``/``vmap``/``grad`` the bad examples' losses are NaN
  (never a plausible wrong number: label -1 is not scored as the last class); to get the
  ``ValueError`` from compiled code, functionalize the checks::

      err, value = jax.jit(checks.checkify_fn(loss))(params, batch)
      checks.raise_if_failed(err)   # ValueError: labels[1] = 10 is outside the valid class range [0, 10) ...

  ``jaxcalc.train.fit`` does this for you. JAX limitation: a check inside a ``lax.scan`` is lost
  when the whole scan is differentiated (``grad`` of the scan); take the gradient inside each
  step (``scan`` of ``value_and_grad``, as ``fit`` does). Probability checks allow a float
  tolerance of ``max(1e-3, 8·eps(dtype))``. On valid inputs under a plain ``jit`` the checks
  emit no effect (jax's fast dispatch is kept) and cost a compare and a ``where`` per element:
  within timing noise of optax for integer labels, binary labels and Huber; one more reduction
  over the targets for probability targets (``benchmarks/bench_loss_checks.py``).

Classification losses take *logits* (unnormalised scores), never probabilities, and use
``logsumexp`` / ``log_sigmoid`` so that logits of magnitude 1e4 give finite losses and gradients
in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc._validate import check_floating, check_integer, check_nonempty, check_same_shape, is_concrete, shape_of
from jaxcalc.checks import check_entries, poison

__all__ = [
    "absolute_error",
    "binary_cross_entropy",
    "cross_entropy",
    "huber_loss",
    "l2_loss",
    "mae",
    "mean_huber",
    "mse",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "squared_error",
]

# --- checks shared by the losses -------------------------------------------------------------


def _errors(predictions, targets):
    """``predictions − targets`` (or ``predictions`` when ``targets`` is None), shapes equal."""
    check_floating(predictions, "predictions")
    if targets is not None:
        check_same_shape(predictions, targets, ("predictions", "targets"))
    check_nonempty(predictions, "predictions")
    p = jnp.asarray(predictions)
    return p if targets is None else p - jnp.asarray(targets, dtype=p.dtype)


def _prob_tolerance(dtype) -> float:
    return max(1e-3, 8 * float(jnp.finfo(dtype).eps))


def _xp(*arrays):
    """numpy when every array is concrete (an eager call: checks run on the host, no device op, no
    compile), ``jax.numpy`` when one is traced (checks become ``debug_check`` + NaN poisoning)."""
    return np if all(is_concrete(a) for a in arrays) else jnp


def _check_positive_scalar(value, name: str):
    """Value check ``value > 0`` for a scalar hyperparameter (concrete or traced); returns ``bad``."""
    v = _xp(value).asarray(value)
    if v.ndim:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    bad = ~(v > 0)  # NaN is bad too
    check_entries(bad, v, name=name, condition="is not positive")
    return bad


def _class_axes(axis, ndim: int, *, allow_none: bool) -> tuple[int, ...]:
    """``axis`` (int, tuple of ints, or None for all axes) as non-negative axes of ``ndim`` dims."""
    if axis is None and allow_none:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        axes = (int(axis),)
    elif isinstance(axis, tuple) and axis and all(isinstance(a, (int, np.integer)) for a in axis):
        axes = tuple(int(a) for a in axis)
    else:
        raise TypeError(f"axis must be an int or a non-empty tuple of ints, got {axis!r}")
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for logits with {ndim} dimension(s)")
    axes = tuple(a % ndim for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} repeats an axis")
    return axes


def _where_mask(where, shape: tuple[int, ...], axes: tuple[int, ...]):
    """``where`` as a bool mask of the logits' ``shape``: given per logit, or per example (batch shape)."""
    if where is None:
        return None
    w = jnp.asarray(where)
    if w.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean mask, got dtype {w.dtype}")
    batch = tuple(s for i, s in enumerate(shape) if i not in axes)
    if w.shape == shape:
        return w
    if w.shape == batch:
        return jnp.broadcast_to(jnp.expand_dims(w, axes), shape)
    raise ValueError(
        f"where has shape {w.shape}; it must be the logits' shape {shape} (a mask per logit) or the "
        f"batch shape {batch} (a mask per example)"
    )


def _check_unit_interval(labels, dtype, noun: str, included=None):
    """Check every (included) entry of ``labels`` is in ``[0, 1]`` up to the dtype's tolerance (NaN
    is not): see :func:`check_entries`. Returns ``(labels as dtype, bad)``, numpy when concrete."""
    xp = _xp(labels, included)
    y = xp.asarray(labels).astype(dtype)
    tol = _prob_tolerance(dtype)
    bad = ~((y >= -tol) & (y <= 1 + tol))  # NaN is bad too
    if included is not None:
        bad = bad & included
    check_entries(bad, y, name="labels", condition="is outside [0, 1]", noun=noun)
    return y, bad


def _check_distributions(labels, dtype, axes, w, axis):
    """Each included row of ``labels`` is a distribution over ``axes``; returns the batch-shaped ``bad``."""
    xp = _xp(labels, w)
    included = None if w is None else xp.any(xp.asarray(w), axis=axes)  # `where` may leave out padding rows
    entry_mask = None if w is None else xp.broadcast_to(xp.expand_dims(included, axes), np.shape(labels))
    y, bad_entry = _check_unit_interval(labels, dtype, "label entries", entry_mask)
    tol = _prob_tolerance(dtype)
    sums = xp.sum(y, axis=axes)
    bad_sum = ~(xp.abs(sums - 1) <= tol)
    if included is not None:
        bad_sum = bad_sum & included
    check_entries(bad_sum, sums, name=f"labels.sum(axis={axis})",
                  condition=f"is not 1 ± {tol:g}: each row of labels must be a probability distribution",
                  noun="row(s)")
    return bad_sum | xp.any(bad_entry, axis=axes)


# --- regression ------------------------------------------------------------------------------


def squared_error(predictions, targets=None):
    """Per-element squared error ``(ŷ − y)²`` (``optax.losses.squared_error``).

    Args:
      predictions: ``(...)`` float.
      targets: same shape as ``predictions`` (never broadcast), or None for zeros.

    Returns:
      ``(...)``, elementwise ``(predictions − targets)²``.

    >>> squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]))
    Array([1., 4.], dtype=float32)
    """
    return _errors(predictions, targets) ** 2


def l2_loss(predictions, targets=None):
    """Per-element ``½(ŷ − y)²`` (``optax.losses.l2_loss``; Bishop's ½, whose gradient is ``ŷ − y``).

    Shapes as :func:`squared_error`.
    """
    return 0.5 * squared_error(predictions, targets)


def absolute_error(predictions, targets=None):
    """Per-element absolute error ``|ŷ − y|``; shapes as :func:`squared_error`."""
    return jnp.abs(_errors(predictions, targets))


def huber_loss(predictions, targets=None, *, delta=1.0):
    """Per-element Huber loss (``optax.losses.huber_loss``).

    ``½e²`` where ``|e| ≤ δ`` and ``δ(|e| − ½δ)`` beyond, with ``e = ŷ − y``: quadratic near zero,
    linear in the tails, so its gradient is ``e`` clipped to ``[−δ, δ]``. Reference: Huber (1964),
    "Robust Estimation of a Location Parameter".

    Args:
      predictions: ``(...)`` float.
      targets: same shape as ``predictions``, or None for zeros.
      delta: scalar ``δ > 0``; may be traced (``jit``, ``vmap`` over deltas) without recompiling.

    Returns:
      ``(...)`` per-element losses.

    Raises:
      ValueError: ``delta`` is not positive (or not a scalar); under a trace the result is NaN
        instead (wrap your jitted function in ``checks.checkify_fn`` to get this error).
    """
    e = _errors(predictions, targets)
    bad = _check_positive_scalar(delta, "delta")
    d = jnp.asarray(delta, dtype=e.dtype)
    abs_e = jnp.abs(e)
    quadratic = jnp.minimum(abs_e, d)
    linear = abs_e - quadratic  # max(|e| − δ, 0) without a doubled gradient at the kink
    return poison(0.5 * quadratic**2 + d * linear, bad)


# --- classification --------------------------------------------------------------------------


def sigmoid_binary_cross_entropy(logits, labels):
    """Per-element binary cross-entropy on logits (``optax.losses.sigmoid_binary_cross_entropy``).

    ``−y·log σ(z) − (1 − y)·log σ(−z)``, computed with ``log_sigmoid`` (stable for ``|z|`` of 1e4
    and beyond).

    Args:
      logits: ``(...)`` float scores of the positive class.
      labels: same shape, in ``[0, 1]`` (hard 0/1 or soft targets).

    Returns:
      ``(...)`` per-element losses.

    Raises:
      ValueError: a label outside ``[0, 1]`` (say 2 or −1), naming the first; under a trace that
        element's loss is NaN instead (wrap your jitted function in ``checks.checkify_fn`` to
        get this error).
    """
    check_floating(logits, "logits")
    check_same_shape(logits, labels, ("logits", "labels"))
    check_nonempty(logits, "logits")
    z = jnp.asarray(logits)
    _, bad = _check_unit_interval(labels, z.dtype, "label(s)")
    y = jnp.asarray(labels).astype(z.dtype)
    return poison(-(y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z)), bad)


def softmax_cross_entropy(logits, labels, axis=-1, where=None):
    """Per-example cross-entropy between ``softmax(logits)`` and target distributions
    (``optax.losses.softmax_cross_entropy``).

    ``−Σ_j labels_j · log_softmax(logits)_j`` over the class axis (or axes), restricted to the
    entries ``where`` includes (softmax over those entries only).

    Args:
      logits: ``(..., k)`` float scores (not probabilities).
      labels: same shape as ``logits``: probabilities in ``[0, 1]`` summing to 1 along ``axis``
        (e.g. one-hot).
      axis: the class axis, a tuple of axes, or None for all axes.
      where: optional bool mask, the logits' shape (per logit) or their shape without ``axis``
        (per example); an example with nothing included has loss 0 and is not checked.

    Returns:
      ``logits``' shape without ``axis``.

    Raises:
      ValueError: a label outside ``[0, 1]`` or an included row not summing to 1 (within
        ``max(1e-3, 8·eps)``), naming the first; under a trace that example's loss is NaN
        instead (wrap your jitted function in ``checks.checkify_fn`` to get this error).
    """
    check_floating(logits, "logits")
    check_same_shape(logits, labels, ("logits", "labels"))
    check_nonempty(logits, "logits")
    z = jnp.asarray(logits)
    if z.ndim < 1:
        raise ValueError("logits must have a class axis (shape (..., k))")
    axes = _class_axes(axis, z.ndim, allow_none=True)
    w = _where_mask(where, z.shape, axes)
    bad = _check_distributions(labels, z.dtype, axes, w, axis)
    y = jnp.asarray(labels).astype(z.dtype)
    log_probs = jax.nn.log_softmax(z, axis=axes, where=w)
    return poison(-jnp.sum(y * log_probs, axis=axes, where=w), bad)


def softmax_cross_entropy_with_integer_labels(logits, labels, axis=-1, where=None):
    """Per-example cross-entropy with integer class labels
    (``optax.losses.softmax_cross_entropy_with_integer_labels``).

    ``logsumexp(logits) − logits[label]``; its gradient with respect to the logits is
    ``softmax(logits) − one_hot(label)``.

    Args:
      logits: ``(..., k)`` float scores.
      labels: integers in ``[0, k)``, ``logits``' shape without ``axis``.
      axis: the class axis, or a tuple of axes whose ``k = Π sizes`` entries are the classes
        (a label is then a flat C-order index into ``logits[axis]``, as in optax).
      where: optional bool mask, the logits' shape (per logit) or the labels' shape (per example);
        an example with nothing included has loss 0 and its label is not checked (padding may
        carry any label, e.g. −1).

    Returns:
      the labels' shape.

    Raises:
      ValueError: a label outside ``[0, k)`` (say k or −1), naming the first; under a trace that
        example's loss is NaN instead (wrap your jitted function in ``checks.checkify_fn`` to
        get this error).
    """
    check_floating(logits, "logits")
    check_integer(labels, "labels")
    z = jnp.asarray(logits)
    if z.ndim < 1:
        raise ValueError("logits must have a class axis (shape (..., k))")
    axes = _class_axes(axis, z.ndim, allow_none=False)
    batch_axes = tuple(i for i in range(z.ndim) if i not in axes)
    batch_shape = tuple(z.shape[i] for i in batch_axes)
    if shape_of(labels) != batch_shape:
        raise ValueError(
            f"shape mismatch: logits {z.shape} need labels of shape {batch_shape} (axis={axis!r}), "
            f"got labels {shape_of(labels)}"
        )
    check_nonempty(logits, "logits")
    w = _where_mask(where, z.shape, axes)
    if len(axes) == 1:
        a = axes[0]
    else:  # the class axes, in the order given, flattened into one last axis
        perm = batch_axes + axes
        z = z.transpose(perm).reshape((*batch_shape, -1))
        w = None if w is None else w.transpose(perm).reshape((*batch_shape, -1))
        a = len(batch_shape)
    k = z.shape[a]
    xp = _xp(labels, w)
    labels = xp.asarray(labels)
    outside = (labels < 0) | (labels >= k)
    included = None if w is None else xp.any(xp.asarray(w), axis=a)
    bad = outside if included is None else outside & included
    check_entries(bad, labels, name="labels", condition=f"is outside the valid class range [0, {k})",
                  noun="label(s)")
    # never index with a bad label (−1 would pick the last class); eagerly, only padding can hold one
    safe = xp.where(outside, 0, labels) if xp is jnp or outside.any() else labels
    label_logits = jnp.squeeze(jnp.take_along_axis(z, jnp.expand_dims(safe, a), axis=a), axis=a)
    out = jax.nn.logsumexp(z, axis=a, where=w) - label_logits
    if included is not None:
        out = jnp.where(included, out, 0.0)
    return poison(out, bad)


# --- mean reductions (the article's names) ---------------------------------------------------


def mse(predictions, targets):
    """Mean squared error, ``mean((ŷ − y)²)``; ``∂/∂ŷ = 2(ŷ − y)/n``."""
    return jnp.mean(squared_error(predictions, targets))


def mae(predictions, targets):
    """Mean absolute error, ``mean(|ŷ − y|)``."""
    return jnp.mean(absolute_error(predictions, targets))


def mean_huber(predictions, targets, *, delta=1.0):
    """Mean Huber loss, ``mean(huber_loss(ŷ, y, delta=δ))`` (:func:`huber_loss` is per element)."""
    return jnp.mean(huber_loss(predictions, targets, delta=delta))


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy with integer labels; ``∂/∂logits = (softmax − one_hot)/n``.

    ``logits`` ``(n, k)`` float, ``labels`` ``(n,)`` int in ``[0, k)``: see
    :func:`softmax_cross_entropy_with_integer_labels` for the checks.
    """
    return jnp.mean(softmax_cross_entropy_with_integer_labels(logits, labels))


def binary_cross_entropy(logits, labels):
    """Mean sigmoid binary cross-entropy on logits; labels in ``[0, 1]``, see
    :func:`sigmoid_binary_cross_entropy` for the checks."""
    return jnp.mean(sigmoid_binary_cross_entropy(logits, labels))

