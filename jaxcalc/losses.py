"""Losses: per-example functions, and mean reductions under the article's names.

Every per-example loss maps ``(predictions, targets)`` (or ``(logits, labels)``) to an
array of per-example values; reductions are separate (``mse = mean(squared_error)``).
Shapes are checked, never broadcast: the article's example 1 subtracts ``y`` of shape
``(3,)`` from predictions of shape ``(3, 1)``, which numpy broadcasts to ``(3, 3)``; here
that raises ``ValueError`` naming both shapes.

Classification losses take *logits* (unnormalised scores), never probabilities, and use
``logsumexp`` / ``log_sigmoid`` so that logits of magnitude 1e4 give finite losses and
gradients in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcalc._validate import (
    check_floating,
    check_integer,
    check_label_range,
    check_nonempty,
    check_same_shape,
)

__all__ = [
    "absolute_error",
    "binary_cross_entropy",
    "cross_entropy",
    "huber",
    "huber_loss",
    "mae",
    "mse",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "squared_error",
]


def _regression_inputs(predictions, targets):
    check_floating(predictions, "predictions")
    check_same_shape(predictions, targets, ("predictions", "targets"))
    check_nonempty(predictions, "predictions")
    return jnp.asarray(predictions), jnp.asarray(targets, dtype=jnp.result_type(predictions))


def squared_error(predictions, targets):
    """Per-example squared error ``(ŷ − y)²``.

    Args:
      predictions: ``(...)`` float.
      targets: same shape as ``predictions``.

    Returns:
      ``(...)``, elementwise ``(predictions − targets)²``.

    >>> squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]))
    Array([1., 4.], dtype=float32)
    """
    p, t = _regression_inputs(predictions, targets)
    return (p - t) ** 2


def absolute_error(predictions, targets):
    """Per-example absolute error ``|ŷ − y|``; shapes as :func:`squared_error`."""
    p, t = _regression_inputs(predictions, targets)
    return jnp.abs(p - t)


def huber(predictions, targets, *, delta: float = 1.0):
    """Per-example Huber loss.

    ``½e²`` where ``|e| ≤ δ`` and ``δ(|e| − ½δ)`` beyond, with ``e = ŷ − y``: quadratic near
    zero, linear in the tails (gradient bounded by ``δ``). Same as ``optax.huber_loss``.
    """
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    p, t = _regression_inputs(predictions, targets)
    abs_e = jnp.abs(p - t)
    quadratic = jnp.minimum(abs_e, delta)
    linear = abs_e - quadratic
    return 0.5 * quadratic**2 + delta * linear


def sigmoid_binary_cross_entropy(logits, labels):
    """Per-example binary cross-entropy on logits.

    ``−y·log σ(z) − (1 − y)·log σ(−z)``, computed with ``log_sigmoid`` (stable for |z| up to
    1e4 and beyond). ``labels`` are in [0, 1] (hard 0/1 or soft), same shape as ``logits``.
    """
    check_floating(logits, "logits")
    check_same_shape(logits, labels, ("logits", "labels"))
    check_nonempty(logits, "logits")
    z = jnp.asarray(logits)
    y = jnp.asarray(labels, dtype=z.dtype)
    return -(y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))


def softmax_cross_entropy(logits, probs):
    """Per-example cross-entropy between ``softmax(logits)`` and target distributions.

    Args:
      logits: ``(..., k)`` float scores (not probabilities).
      probs: ``(..., k)`` target probabilities (rows sum to 1, e.g. one-hot).

    Returns:
      ``(...)``: ``−Σ_j probs_j · log_softmax(logits)_j``.
    """
    check_floating(logits, "logits")
    check_floating(probs, "probs")
    check_same_shape(logits, probs, ("logits", "probs"))
    check_nonempty(logits, "logits")
    if jnp.ndim(logits) < 1:
        raise ValueError("logits must have a class axis (shape (..., k))")
    return -jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def softmax_cross_entropy_with_integer_labels(logits, labels):
    """Per-example cross-entropy with integer class labels.

    Args:
      logits: ``(..., k)`` float scores.
      labels: ``(...)`` integers in ``[0, k)``.

    Returns:
      ``(...)``: ``logsumexp(logits) − logits[label]``. Its gradient with respect to the
      logits is ``softmax(logits) − one_hot(label)``.
    """
    check_floating(logits, "logits")
    check_integer(labels, "labels")
    if jnp.ndim(logits) < 1:
        raise ValueError("logits must have a class axis (shape (..., k))")
    if tuple(jnp.shape(logits)[:-1]) != tuple(jnp.shape(labels)):
        raise ValueError(
            f"shape mismatch: logits {tuple(jnp.shape(logits))} need labels of shape "
            f"{tuple(jnp.shape(logits)[:-1])}, got labels {tuple(jnp.shape(labels))}"
        )
    check_nonempty(logits, "logits")
    k = jnp.shape(logits)[-1]
    check_label_range(labels, k)
    logits = jnp.asarray(logits)
    label_logits = jnp.take_along_axis(logits, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - label_logits


def mse(predictions, targets):
    """Mean squared error, ``mean((ŷ − y)²)``; ``∂/∂ŷ = 2(ŷ − y)/n``."""
    return jnp.mean(squared_error(predictions, targets))


def mae(predictions, targets):
    """Mean absolute error, ``mean(|ŷ − y|)``."""
    return jnp.mean(absolute_error(predictions, targets))


def huber_loss(predictions, targets, *, delta: float = 1.0):
    """Mean Huber loss."""
    return jnp.mean(huber(predictions, targets, delta=delta))


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy with integer labels; ``∂/∂logits = (softmax − one_hot)/n``."""
    return jnp.mean(softmax_cross_entropy_with_integer_labels(logits, labels))


def binary_cross_entropy(logits, labels):
    """Mean sigmoid binary cross-entropy on logits."""
    return jnp.mean(sigmoid_binary_cross_entropy(logits, labels))
