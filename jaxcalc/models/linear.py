"""Linear regression ``ŷ = X w + b`` as a pure (init, apply) pair."""
from __future__ import annotations

import jax.numpy as jnp

from jaxcalc import losses


def init_linear(key, in_features: int, out_features: int | None = None, *, dtype=jnp.float32):
    """Zero-initialised parameters ``{"w": (d,) or (d, m), "b": () or (m,)}``.

    ``out_features=None`` gives a scalar-output model (``w`` of shape ``(d,)``); ``key`` is
    accepted for a uniform (init, apply) interface (zeros need no randomness).
    """
    del key
    if out_features is None:
        return {"w": jnp.zeros((in_features,), dtype), "b": jnp.zeros((), dtype)}
    return {"w": jnp.zeros((in_features, out_features), dtype), "b": jnp.zeros((out_features,), dtype)}


def linear_apply(params, x):
    """``x @ w + b``. ``x``: ``(n, d)`` -> ``(n,)`` (or ``(n, m)``)."""
    return x @ params["w"] + params["b"]


def mse_loss(params, batch):
    """``loss(params, batch) -> scalar`` with ``batch = {"x": (n, d), "y": (n,)}``."""
    return losses.mse(linear_apply(params, batch["x"]), batch["y"])


def least_squares(x, y):
    """Closed-form least-squares ``(w, b)`` via ``jnp.linalg.lstsq`` on ``[x, 1]``."""
    a = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
    sol = jnp.linalg.lstsq(a, y)[0]
    return {"w": sol[:-1], "b": sol[-1]}
