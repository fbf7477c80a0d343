"""The model: biased matrix factorization, its objective, prediction, evaluation and top-N.

Koren, Bell & Volinsky, "Matrix factorization techniques for recommender systems", IEEE
Computer 42(8), 2009::

    r̂(u, i) = μ + b_u + b_i + p_u · q_i

with a global mean ``μ`` (fixed to the training mean, as Surprise does), user and item biases
``b_u``, ``b_i`` and ``k``-dimensional factors ``p_u``, ``q_i``. The objective that the
optimising fitters minimise (ALS, gradient descent, per-rating SGD), the one Funk's SGD follows
rating by rating::

    L = mean over ratings (u, i, r) of
        (r̂(u, i) − r)² + reg · (‖p_u‖² + ‖q_i‖²) + reg_bias · (b_u² + b_i²)

(regularisation per rating, so a user with many ratings is held as firmly as their data
warrants: the "weighted-λ" of ALS-WR, Zhou et al. 2008). The Bayesian fitter (``bpmf``)
returns the same kind of parameter dict, whose predictions are the posterior mean.

The flax NNX module :class:`BiasedMF` is the model's definition; :func:`init` crosses it into
a pure parameter dict once (``nnx.split``), and everything else is pure functions of that dict.
For speed the fitters work on ONE packed table ``(num_users + num_items, k + 1)`` whose last
column holds the biases (:func:`pack` / :func:`unpack`): a batch is then one gather and its
gradient one scatter-add.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcalc import parallel
from jaxcalc.losses import absolute_error, squared_error

PARAM_KEYS = ("item_bias", "item_factors", "mu", "user_bias", "user_factors")


class BiasedMF(nnx.Module):
    """``r̂(u, i) = μ + b_u + b_i + p_u · q_i`` as a flax NNX module.

    Args:
      num_users, num_items: table sizes.
      factors: ``k``, the factor dimension (0 gives the biases-only model).
      init_scale: factors start as ``N(0, init_scale²)``; biases start at 0.
      global_mean: ``μ`` (a non-trainable ``nnx.Variable``; set it to the training mean).
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, num_users: int, num_items: int, *, factors: int = 100, init_scale: float = 0.1,
                 global_mean: float = 0.0, rngs: nnx.Rngs):
        if num_users < 1 or num_items < 1:
            raise ValueError(f"need at least one user and one item, got {num_users} users, {num_items} items")
        if factors < 0:
            raise ValueError(f"factors must be >= 0 (0: the biases-only model), got {factors}")
        if init_scale < 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale}")
        self.mu = nnx.Variable(jnp.asarray(global_mean, jnp.float32))
        self.user_bias = nnx.Param(jnp.zeros((num_users,), jnp.float32))
        self.item_bias = nnx.Param(jnp.zeros((num_items,), jnp.float32))
        self.user_factors = nnx.Param(init_scale * jax.random.normal(rngs.params(), (num_users, factors)))
        self.item_factors = nnx.Param(init_scale * jax.random.normal(rngs.params(), (num_items, factors)))

    def __call__(self, users, items):
        """Predicted ratings ``(n,)`` for index arrays ``users``, ``items`` ``(n,) int``."""
        return predict(nnx.to_pure_dict(nnx.state(self)), users, items)


def init(key, num_users: int, num_items: int, *, factors: int = 100, init_scale: float = 0.1,
         global_mean: float = 0.0) -> dict:
    """Build a :class:`BiasedMF` and cross into pure JAX: its parameters as a plain dict.

    Returns:
      ``{"mu": (), "user_bias": (U,), "item_bias": (I,), "user_factors": (U, k),
      "item_factors": (I, k)}`` float32.
    """
    return _init(key, jnp.float32(init_scale), jnp.float32(global_mean), num_users=num_users,
                 num_items=num_items, factors=factors)


@functools.partial(jax.jit, static_argnames=("num_users", "num_items", "factors"))
def _init(key, init_scale, global_mean, *, num_users, num_items, factors):
    if num_users < 1 or num_items < 1 or factors < 0:  # same messages as the module, before tracing it
        BiasedMF(num_users, num_items, factors=factors, rngs=nnx.Rngs(params=0))
    model = BiasedMF(num_users, num_items, factors=factors, init_scale=1.0, global_mean=0.0,
                     rngs=nnx.Rngs(params=key))
    _graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    params["mu"] = params["mu"] + global_mean
    params["user_factors"] = init_scale * params["user_factors"]
    params["item_factors"] = init_scale * params["item_factors"]
    return params


def to_module(params: dict) -> BiasedMF:
    """Back from a parameter dict to a :class:`BiasedMF` (``nnx.merge``)."""
    U, k = params["user_factors"].shape
    n_items = params["item_factors"].shape[0]
    abstract = nnx.eval_shape(lambda: BiasedMF(U, n_items, factors=k, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, {k_: jnp.asarray(v) for k_, v in params.items()})
    return nnx.merge(graphdef, state)


# --------------------------------------------------------------------------- the math


def predict_parts(mu, bu, bi, p, q):
    """``μ + b_u + b_i + p·q`` for gathered parts: bu, bi ``(n,)``, p, q ``(n, k)``."""
    return mu + bu + bi + jnp.sum(p * q, axis=-1)


def objective(mu, bu, bi, p, q, ratings, reg, reg_bias, mask=None):
    """Mean over the batch of squared error + per-rating L2 penalty (module docstring).

    ``mask`` ``(n,) bool``: average over the True entries only (padding, see
    ``gradient.minibatch_epoch``); the others get zero gradient.
    """
    err = squared_error(predict_parts(mu, bu, bi, p, q), ratings)
    penalty = reg * (jnp.sum(p * p, axis=-1) + jnp.sum(q * q, axis=-1)) + reg_bias * (bu * bu + bi * bi)
    if mask is not None:
        return parallel.masked_mean(err + penalty, mask)
    return jnp.mean(err + penalty)


def predict(params: dict, users, items):
    """Predicted ratings for index pairs; unknown users/items (index ``-1``) fall back.

    An unknown user gets ``μ + b_i`` (no user bias, no factor term), an unknown item
    ``μ + b_u``, both unknown ``μ``: the biases-only / global-mean fallback.

    Args:
      params: from :func:`init` or ``fit``.
      users, items: ``(n,) int`` indices, ``-1`` for unknown.

    Returns:
      ``(n,) float32``, unclipped.
    """
    users = jnp.asarray(users)
    items = jnp.asarray(items)
    ku = (users >= 0).astype(params["user_bias"].dtype)
    ki = (items >= 0).astype(params["item_bias"].dtype)
    u = jnp.maximum(users, 0)
    i = jnp.maximum(items, 0)
    both = ku * ki
    return predict_parts(params["mu"], ku * params["user_bias"][u], ki * params["item_bias"][i],
                         both[:, None] * params["user_factors"][u], params["item_factors"][i])


def loss(params: dict, batch: dict, *, reg: float = 0.02, reg_bias: float | None = None):
    """The training objective on one batch (pure; differentiable in every parameter).

    Args:
      params: parameter dict (:func:`init`).
      batch: ``{"user": (n,) int, "item": (n,) int, "rating": (n,) float}``, known indices.
      reg: L2 weight on the factors, per rating.
      reg_bias: L2 weight on the biases, per rating (default ``reg``).

    Returns:
      scalar ``mean[(r̂ − r)² + reg(‖p_u‖² + ‖q_i‖²) + reg_bias(b_u² + b_i²)]``.
    """
    reg_bias = reg if reg_bias is None else reg_bias
    u, i = batch["user"], batch["item"]
    return objective(params["mu"], params["user_bias"][u], params["item_bias"][i],
                     params["user_factors"][u], params["item_factors"][i],
                     jnp.asarray(batch["rating"], params["user_factors"].dtype), reg, reg_bias)


# --------------------------------------------------------------------------- layouts the fitters share


@jax.jit
def pack(params: dict):
    """``(table, mu)``: one ``(U + I, k + 1)`` table, rows ``[p_u, b_u]`` then ``[q_i, b_i]``."""
    users = jnp.concatenate([params["user_factors"], params["user_bias"][:, None]], axis=1)
    items = jnp.concatenate([params["item_factors"], params["item_bias"][:, None]], axis=1)
    return jnp.concatenate([users, items], axis=0), jnp.asarray(params["mu"])


@functools.partial(jax.jit, static_argnames=("num_users",))
def unpack(table, mu, num_users: int) -> dict:
    """Inverse of :func:`pack`."""
    return {"mu": jnp.asarray(mu), "user_bias": table[:num_users, -1], "item_bias": table[num_users:, -1],
            "user_factors": table[:num_users, :-1], "item_factors": table[num_users:, :-1]}


def table_objective(rows, mu, ratings, reg, reg_bias, mask=None):
    """:func:`objective` on gathered table rows ``(2n, k+1)``: first n user rows, then n item rows."""
    n = ratings.shape[0]
    ur, ir = rows[:n], rows[n:]
    return objective(mu, ur[:, -1], ir[:, -1], ur[:, :-1], ir[:, :-1], ratings, reg, reg_bias, mask)


@jax.jit
def train_objective(table, mu, rows_u, rows_i, ratings, reg, reg_bias):
    """:func:`loss` over every training rating, on the packed table (rows_i = ``U + item``)."""
    return table_objective(table[jnp.concatenate([rows_u, rows_i])], mu, ratings, reg, reg_bias)


@functools.partial(jax.jit, static_argnames=("num_users", "num_items"))
def dense_ratings(users, items, ratings, mu, *, num_users, num_items):
    """``(mask, R − μ)`` as dense ``(U, I)`` arrays (zeros where unrated), built once per fit.

    The fitters use them when ``U·I`` is small enough (``fit(..., dense_limit=...)``): sums over
    each user's (item's) ratings become matrix products with ``mask`` (``mask.T``).
    """
    mask = jnp.zeros((num_users, num_items), ratings.dtype).at[users, items].set(1.0)
    return mask, jnp.zeros_like(mask).at[users, items].set(ratings - mu)


# --------------------------------------------------------------------------- evaluation


@jax.jit
def _errors(params, users, items, ratings, low, high):
    pred = jnp.clip(predict(params, users, items), low, high)
    return pred, jnp.sqrt(jnp.mean(squared_error(pred, ratings))), jnp.mean(absolute_error(pred, ratings))


def evaluate(params: dict, test: dict, *, scale, seen_users=None, seen_items=None) -> dict:
    """RMSE and MAE of clipped predictions on ``test``.

    Args:
      params: fitted parameters.
      test: ``{"user", "item", "rating"}``; index ``-1`` marks an unknown user/item.
      scale: ``(low, high)``; predictions are clipped to it.
      seen_users, seen_items: optional ``(U,)``/``(I,)`` bool masks of who had training
        ratings; the others are treated as unknown (biases / global-mean fallback).

    Returns:
      ``{"rmse", "mae", "predictions" (n,), "unseen_users", "unseen_items"}`` where the last
      two count test ratings whose user / item was unseen in training.
    """
    users = np.asarray(test["user"], np.int32)
    items = np.asarray(test["item"], np.int32)
    if seen_users is not None:
        users = np.where((users >= 0) & np.asarray(seen_users)[np.maximum(users, 0)], users, -1)
    if seen_items is not None:
        items = np.where((items >= 0) & np.asarray(seen_items)[np.maximum(items, 0)], items, -1)
    pred, rmse, mae = _errors(params, users, items, np.asarray(test["rating"], np.float32),
                              np.float32(scale[0]), np.float32(scale[1]))
    return {"rmse": float(rmse), "mae": float(mae), "predictions": np.asarray(pred),
            "unseen_users": int((users < 0).sum()), "unseen_items": int((items < 0).sum())}


@functools.partial(jax.jit, static_argnames=("n",))
def _top_n_chunk(params, users, exclude, n):
    scores = (params["mu"] + params["user_bias"][users][:, None] + params["item_bias"][None, :]
              + params["user_factors"][users] @ params["item_factors"].T)
    scores = jnp.where(exclude, -jnp.inf, scores)
    return jax.lax.top_k(scores, n)


def top_n(params: dict, users, exclude: dict, *, n: int = 10, chunk: int = 1024):
    """Best ``n`` items for each user, skipping the items in ``exclude``.

    Args:
      params: fitted parameters.
      users: ``(m,) int`` known user indices.
      exclude: ``{user index: array of item indices}`` (e.g. the items each user rated).
      n: list length (at most the number of items).
      chunk: users scored at once (memory ``chunk × num_items``).

    Returns:
      ``(scores (m, n), items (m, n))`` numpy arrays, best first.
    """
    users = np.asarray(users, np.int32)
    n_items = params["item_bias"].shape[0]
    n = min(n, n_items)
    out_s, out_i = [], []
    for start in range(0, users.size, chunk):
        us = users[start:start + chunk]
        mask = np.zeros((chunk, n_items), bool)
        for row, u in enumerate(us):
            seen = exclude.get(int(u))
            if seen is not None and len(seen):
                mask[row, seen] = True
        padded = np.zeros(chunk, np.int32)
        padded[: us.size] = us
        s, i = _top_n_chunk(params, padded, mask, n)
        out_s.append(np.asarray(s)[: us.size])
        out_i.append(np.asarray(i)[: us.size])
    return np.concatenate(out_s), np.concatenate(out_i)
