"""Multi-layer perceptron as plain functions over a list of ``(W, b)`` pairs."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}

INITS = ("he", "glorot", "glorot_uniform", "normal")


def _init_weight(key, fan_in, fan_out, init, dtype):
    if init == "he":  # He/Kaiming normal: Var = 2 / fan_in, for ReLU
        return jax.random.normal(key, (fan_in, fan_out), dtype) * math.sqrt(2.0 / fan_in)
    if init == "glorot":  # Glorot normal: Var = 2 / (fan_in + fan_out)
        return jax.random.normal(key, (fan_in, fan_out), dtype) * math.sqrt(2.0 / (fan_in + fan_out))
    if init == "glorot_uniform":  # Keras' default: U(-l, l), l = sqrt(6 / (fan_in + fan_out))
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, (fan_in, fan_out), dtype, -lim, lim)
    if init == "normal":  # N(0, 1): the naive init, for showing vanishing gradients
        return jax.random.normal(key, (fan_in, fan_out), dtype)
    raise ValueError(f"unknown init {init!r}; choose one of {INITS}")


def init_mlp(key, sizes: Sequence[int], *, init: str = "he", dtype=jnp.float32):
    """Parameters ``[(W1, b1), ..., (WL, bL)]`` with ``Wl: (sizes[l-1], sizes[l])``, zero biases.

    Args:
      key: a ``jax.random.key``.
      sizes: layer widths including input and output, e.g. ``(784, 256, 10)``.
      init: ``"he"`` (ReLU), ``"glorot"``, ``"glorot_uniform"`` (Keras' default) or ``"normal"``.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least input and output widths >= 1, got {sizes}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (_init_weight(k, m, n, init, dtype), jnp.zeros((n,), dtype))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_apply(params, x, *, activation: str = "relu"):
    """Forward pass: hidden layers ``act(h W + b)``, a linear last layer (logits or regression).

    Args:
      params: list of ``(W, b)``.
      x: ``(n, d_in)`` (or ``(d_in,)`` for one example).

    Returns:
      ``(n, d_out)`` (or ``(d_out,)``).
    """
    act = ACTIVATIONS[activation]
    h = x
    for w, b in params[:-1]:
        h = act(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def param_count(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
