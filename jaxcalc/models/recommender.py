"""Biased matrix factorization for ratings, and four ways to fit it.

The model (Koren, Bell & Volinsky, "Matrix factorization techniques for recommender systems", 2009)::

    r̂(u, i) = μ + b_u + b_i + p_u · q_i

with a global mean ``μ`` (fixed to the training mean, as Surprise does), user and item biases
``b_u``, ``b_i`` and ``k``-dimensional factors ``p_u``, ``q_i``. Every fitting method below
minimises the same objective, the one Funk's SGD follows rating by rating::

    L = mean over ratings (u, i, r) of
        (r̂(u, i) − r)² + reg · (‖p_u‖² + ‖q_i‖²) + reg_bias · (b_u² + b_i²)

(regularisation per rating, so a user with many ratings is held as firmly as their data
warrants: the "weighted-λ" of ALS-WR, Zhou et al. 2008).

Fitting methods:

- ``"sgd"``: Funk-SVD / Surprise's ``SVD``: one rating at a time, a ``lax.scan`` over ratings.
- ``"minibatch"``: optax (Adam by default) on shuffled mini-batches; one ``lax.scan`` per epoch.
- ``"fullbatch"``: the same with every rating in each step (gradient descent proper).
- ``"als"``: alternating least squares: with the items fixed each user's ``(p_u, b_u)`` solves a
  ``(k+1)×(k+1)`` ridge system in closed form, and vice versa.

The flax NNX module :class:`BiasedMF` is the model's definition; :func:`init` crosses it into
a pure parameter dict once (``nnx.split``), and the training and prediction code is pure
functions of that dict. For speed the fitting code packs users and items into ONE table
``(num_users + num_items, k + 1)`` whose last column holds the biases: a batch is then one
gather and its gradient one scatter-add (the per-rating scan writes both rows in one
two-row scatter, so XLA updates the table in place instead of copying it).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcalc import parallel
from jaxcalc.losses import absolute_error, squared_error

__all__ = [
    "DATA_PARALLEL_METHODS",
    "METHODS",
    "SURPRISE_SVD",
    "BiasedMF",
    "FitResult",
    "evaluate",
    "fit",
    "init",
    "loss",
    "pack",
    "predict",
    "sgd_epoch",
    "to_module",
    "top_n",
    "unpack",
]

METHODS = ("als", "minibatch", "fullbatch", "sgd")
# The methods that run data-parallel over a ``jax.sharding`` mesh (``fit(..., mesh=...)``): their
# steps are gradient steps on a batch mean, so the batch splits across devices and XLA
# all-reduces the gradient. ALS solves one small system per user / item and per-rating SGD is
# sequential by definition: neither is a data-parallel gradient step.
DATA_PARALLEL_METHODS = ("minibatch", "fullbatch")

# Surprise's SVD defaults (surprise/prediction_algorithms/matrix_factorization.pyx, v1.1.5):
# n_factors=100, n_epochs=20, init_mean=0, init_std_dev=0.1, lr_all=0.005, reg_all=0.02.
SURPRISE_SVD = dict(method="sgd", factors=100, epochs=20, lr=0.005, reg=0.02, init_scale=0.1)

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


def _predict_parts(mu, bu, bi, p, q):
    """``μ + b_u + b_i + p·q`` for gathered parts: bu, bi ``(n,)``, p, q ``(n, k)``."""
    return mu + bu + bi + jnp.sum(p * q, axis=-1)


def _objective(mu, bu, bi, p, q, ratings, reg, reg_bias, mask=None):
    """Mean over the batch of squared error + per-rating L2 penalty (module docstring).

    ``mask`` ``(n,) bool``: average over the True entries only (padding, see
    ``_minibatch_epoch``); the others get zero gradient.
    """
    err = squared_error(_predict_parts(mu, bu, bi, p, q), ratings)
    penalty = reg * (jnp.sum(p * p, axis=-1) + jnp.sum(q * q, axis=-1)) + reg_bias * (bu * bu + bi * bi)
    if mask is not None:
        return parallel.masked_mean(err + penalty, mask)
    return jnp.mean(err + penalty)


def predict(params: dict, users, items):
    """Predicted ratings for index pairs; unknown users/items (index ``-1``) fall back.

    An unknown user gets ``μ + b_i`` (no user bias, no factor term), an unknown item
    ``μ + b_u``, both unknown ``μ``: the biases-only / global-mean fallback.

    Args:
      params: from :func:`init` or :func:`fit`.
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
    return _predict_parts(params["mu"], ku * params["user_bias"][u], ki * params["item_bias"][i],
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
    return _objective(params["mu"], params["user_bias"][u], params["item_bias"][i],
                      params["user_factors"][u], params["item_factors"][i],
                      jnp.asarray(batch["rating"], params["user_factors"].dtype), reg, reg_bias)


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


def _table_objective(rows, mu, ratings, reg, reg_bias, mask=None):
    """Objective on gathered table rows ``(2n, k+1)``: first n user rows, then n item rows."""
    n = ratings.shape[0]
    ur, ir = rows[:n], rows[n:]
    return _objective(mu, ur[:, -1], ir[:, -1], ur[:, :-1], ir[:, :-1], ratings, reg, reg_bias, mask)


# --------------------------------------------------------------------------- per-rating SGD


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("unroll",))
def sgd_epoch(table, mu, rows_u, rows_i, ratings, lr, reg, reg_bias, *, unroll: int = 1):
    """One epoch of Funk / Surprise SGD, one rating per step, in the given order.

    For each rating, with ``e = r − r̂``::

        b_u += lr (e − reg_bias b_u)        p_u += lr (e q_i − reg p_u)
        b_i += lr (e − reg_bias b_i)        q_i += lr (e p_u − reg q_i)   (old p_u, q_i on the right)

    which is a step of size ``lr`` along minus half the gradient of that rating's term of
    :func:`loss`. Both rows change in one two-row scatter.

    Args:
      table: ``(U + I, k + 1)`` from :func:`pack` (donated: updated in place).
      mu: scalar.
      rows_u: ``(n,) int32`` user rows; rows_i: ``(n,) int32`` item rows (``U + item``).
      ratings: ``(n,) float32``.
      lr, reg, reg_bias: scalars (traced: changing them does not recompile).

    Returns:
      the updated table.
    """
    k = table.shape[1] - 1
    lr = jnp.asarray(lr, table.dtype)
    shrink = 1.0 - lr * jnp.concatenate([jnp.full((k,), reg, table.dtype), jnp.full((1,), reg_bias, table.dtype)])

    def step(t, x):
        ru, ri, r = x
        idx = jnp.stack([ru, ri])
        rows = t[idx]  # (2, k+1)
        e = r - (mu + rows[0, k] + rows[1, k] + jnp.dot(rows[0, :k], rows[1, :k]))
        # gradient direction: the other row's factors, and 1 for the bias column
        other = rows[::-1].at[:, k].set(1.0)
        new = rows * shrink[None, :] + (lr * e) * other
        return t.at[idx].set(new, unique_indices=True), None

    table, _ = jax.lax.scan(step, table, (rows_u, rows_i, ratings), unroll=unroll)
    return table


# --------------------------------------------------------------------------- mini-batch / full batch


def _direction(optimizer: str) -> optax.GradientTransformation:
    """The step direction before ``−lr`` scaling: Adam's moments, or the raw gradient."""
    if optimizer == "adam":
        return optax.scale_by_adam()
    if optimizer == "sgd":
        return optax.identity()
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


def _replicated_out(tree, mesh):
    """Inside jit: pin outputs to a full copy per device, so the next epoch's (AOT-compiled)
    program gets the layout it was compiled for."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, parallel.replicated(mesh))


@functools.partial(jax.jit, static_argnames=("optimizer", "batch_size", "mesh"), donate_argnums=(0, 1))
def _minibatch_epoch(table, opt_state, key, mu, rows_u, rows_i, ratings, lr, reg, reg_bias, *,
                     optimizer, batch_size, mesh=None):
    """One shuffled epoch; each step: gather rows, grad, ONE scatter-add, optax update.

    ``optax.chain(direction, scale(−lr))`` with ``lr`` traced, so a new rate does not recompile.

    ``mesh`` (a 1-D ``jax.sharding.Mesh``, static): data-parallel. The table, optimizer state
    and rating arrays arrive replicated; each step's batch of rating indices is split across
    the devices (``parallel.constrain_batch``), so every device gathers and differentiates its
    share of the batch and XLA all-reduces the table gradient (one table-sized all-reduce per
    step). When the batch ``b`` is not a multiple of the device count (the whole training set
    is smaller than ``batch_size``), each step's indices are padded to the next multiple by
    repeating its last rating, and the objective is averaged over the ``b`` real ratings only
    (``parallel.masked_mean``): the same value and gradient as the unpadded batch.
    """
    tx = _direction(optimizer)
    n = ratings.shape[0]
    b = min(batch_size, n)
    nb = n // b
    perm = jax.random.permutation(key, n)[: nb * b].reshape(nb, b)
    mask = None
    if mesh is not None and b % mesh.size:
        perm, mask = parallel.pad_batch(perm, mesh.size, axis=1)
        mask = jnp.asarray(mask)

    def step(carry, idx):
        t, s = carry
        if mesh is not None:
            idx = parallel.constrain_batch(idx, mesh)
        rows_idx = jnp.concatenate([rows_u[idx], rows_i[idx]])
        value, g_rows = jax.value_and_grad(_table_objective)(t[rows_idx], mu, ratings[idx], reg, reg_bias,
                                                             mask)
        grad = jnp.zeros_like(t).at[rows_idx].add(g_rows)
        direction, s = tx.update(grad, s, t)
        return (t - lr * direction, s), value

    (table, opt_state), losses = jax.lax.scan(step, (table, opt_state), perm)
    table, opt_state = _replicated_out((table, opt_state), mesh)
    return table, opt_state, jnp.mean(losses)


@functools.partial(jax.jit, static_argnames=("optimizer", "num_users", "mesh"), donate_argnums=(0, 1))
def _dense_gd_epoch(table, opt_state, mu, mask, rmat, counts_u, counts_i, lr, reg, reg_bias, *,
                    optimizer, num_users, mesh=None):
    """One full-batch step on the dense ``(U, I)`` layout: the same objective as :func:`loss`
    over all ratings, as masked matrix products (no gathers or scatters at all).

    ``Σ_r reg‖p_u‖²`` over ratings is ``Σ_u n_u reg‖p_u‖²``: the per-rating penalty becomes
    a count-weighted one.

    ``mesh`` (static): data-parallel with the ``(U, I)`` matrices (and ``counts_u``) split along
    users by the caller; the table and optimizer state stay replicated (outputs pinned so).
    """
    tx = _direction(optimizer)
    U = num_users
    n = jnp.sum(counts_u)

    def objective(t):
        P, bu, Q, bi = t[:U, :-1], t[:U, -1], t[U:, :-1], t[U:, -1]
        centred = bu[:, None] + bi[None, :] + P @ Q.T  # r̂ − μ
        sq = jnp.sum(squared_error(mask * centred, rmat))  # rmat = mask·(r − μ): zero where unrated
        pen = (reg * (counts_u @ jnp.sum(P * P, axis=1) + counts_i @ jnp.sum(Q * Q, axis=1))
               + reg_bias * (counts_u @ (bu * bu) + counts_i @ (bi * bi)))
        return (sq + pen) / n

    value, grad = jax.value_and_grad(objective)(table)
    direction, opt_state = tx.update(grad, opt_state, table)
    table, opt_state = _replicated_out((table - lr * direction, opt_state), mesh)
    return table, opt_state, value


# --------------------------------------------------------------------------- ALS


def _solve_rows(A, b, counts, reg, reg_bias):
    """``x_s = (A_s + n_s·diag(reg, …, reg, reg_bias))⁻¹ b_s`` for every row (batched Cholesky).

    A row with no ratings gets ``x = 0`` (its penalty alone: ``n_s`` is taken as 1 there).
    """
    d = A.shape[-1]
    lam = jnp.concatenate([jnp.full((d - 1,), reg, A.dtype), jnp.full((1,), reg_bias, A.dtype)])
    A = A + (jnp.maximum(counts, 1.0)[:, None, None] * lam[None, None, :]) * jnp.eye(d, dtype=A.dtype)[None]
    chol = jnp.linalg.cholesky(A)
    return jax.scipy.linalg.cho_solve((chol, True), b[..., None])[..., 0]


def _gram_dense(mask, weighted, fixed):
    """Dense path: ``A_s = Σ_j M_sj z_j z_jᵀ`` as one GEMM ``M @ (z ⊗ z)``; ``b_s = (M∘Y) @ z``.

    Args:
      mask: ``(S, J)`` 0/1 rating indicator. weighted: ``(S, J)`` targets where rated, else 0.
      fixed: ``(J, d)`` rows ``z_j``.
    """
    J, d = fixed.shape
    outer = (fixed[:, :, None] * fixed[:, None, :]).reshape(J, d * d)
    return (mask @ outer).reshape(-1, d, d), weighted @ fixed


def _gram_sparse(fixed, target, seg, num_rows, chunk):
    """Sparse path (tables too big to hold densely): scatter-add of per-rating outer
    products, ``chunk`` ratings at a time (memory ``chunk·d²``)."""
    n, d = fixed.shape
    pad = (-n) % chunk
    z = jnp.pad(fixed, ((0, pad), (0, 0)))
    y = jnp.pad(target, (0, pad))
    s = jnp.pad(seg, (0, pad))  # padded ratings have z = 0: they add nothing

    def acc(carry, c):
        A, b = carry
        zc = jax.lax.dynamic_slice_in_dim(z, c * chunk, chunk)
        yc = jax.lax.dynamic_slice_in_dim(y, c * chunk, chunk)
        sc = jax.lax.dynamic_slice_in_dim(s, c * chunk, chunk)
        A = A.at[sc].add(zc[:, :, None] * zc[:, None, :])
        b = b.at[sc].add(zc * yc[:, None])
        return (A, b), None

    init_ = (jnp.zeros((num_rows, d, d), fixed.dtype), jnp.zeros((num_rows, d), fixed.dtype))
    (A, b), _ = jax.lax.scan(acc, init_, jnp.arange((n + pad) // chunk))
    return A, b


@functools.partial(jax.jit, static_argnames=("num_users", "num_items"))
def _dense_ratings(users, items, ratings, mu, *, num_users, num_items):
    """``(mask, R − μ)`` as dense ``(U, I)`` arrays (zeros where unrated), built once per fit."""
    mask = jnp.zeros((num_users, num_items), ratings.dtype).at[users, items].set(1.0)
    return mask, jnp.zeros_like(mask).at[users, items].set(ratings - mu)


@functools.partial(jax.jit, static_argnames=("num_users",))
def _spectral_init(table, mask, rmat, key, *, num_users):
    """ALS warm start: item factors along the top-``k`` right singular vectors of the
    zero-filled centred rating matrix (subspace iteration with two power steps and a
    Rayleigh–Ritz rotation, Halko et al. 2011; only matrix products and small ``eigh`` calls,
    which stay fast on a busy CPU where LAPACK's QR/SVD stalled), scaled to a balanced factorization of the full matrix
    (``R_full ≈ R_zero_filled / density``). The first ALS half-sweep solves the users exactly
    given these, so only their span matters; starting there skips the slow climb out of
    the near-zero random start that strong regularisation otherwise causes."""
    U = num_users
    k = table.shape[1] - 1
    if k == 0:
        return table
    density = jnp.maximum(jnp.mean(mask), 1e-12)

    def orthonormal(Y):  # via eigh of the small Gram matrix; tiny directions are clamped, not NaN
        lam, V = jnp.linalg.eigh(Y.T @ Y)
        lam = jnp.maximum(lam, 1e-6 * lam[-1] + 1e-30)
        return Y @ (V / jnp.sqrt(lam)[None, :])

    Y = rmat.T @ (rmat @ jax.random.normal(key, (rmat.shape[1], k + 5), rmat.dtype))
    for _ in range(2):
        Y = rmat.T @ (rmat @ orthonormal(Y))
    Y = orthonormal(Y)  # (I, k+5): ≈ the top right singular subspace of rmat
    RY = rmat @ Y
    lam, W = jnp.linalg.eigh(RY.T @ RY)  # Rayleigh–Ritz: singular values² and rotations
    lam, W = lam[::-1][:k], W[:, ::-1][:, :k]
    sv = jnp.sqrt(jnp.maximum(lam, 0.0))
    items = (Y @ W) * jnp.sqrt(sv / density)[None, :]
    return table.at[U:, :k].set(items)


@functools.partial(jax.jit, static_argnames=("num_users", "chunk"), donate_argnums=0)
def _als_epoch(table, mu, users, items, ratings, dense_mats, reg, reg_bias, *, num_users, chunk):
    """Users given items, then items given users: one ALS sweep on the packed table.

    For user ``u`` with items fixed (``z_i = [q_i, 1]``, ``y = r − μ − b_i``)::

        (Σ_i z_i z_iᵀ + n_u·diag(reg, …, reg, reg_bias)) [p_u, b_u] = Σ_i z_i y_i

    the exact minimiser of :func:`loss` over that user's row; items likewise.
    ``dense_mats``: ``(mask, R − μ)`` from :func:`_dense_ratings`, or ``None`` for the
    chunked scatter path.

    Returns:
      ``(table, objective)``.
    """
    U = num_users
    n_items = table.shape[0] - U
    dt = table.dtype
    cu = jnp.zeros((U,), dt).at[users].add(1.0)
    ci = jnp.zeros((n_items,), dt).at[items].add(1.0)
    dense = dense_mats is not None
    if dense:
        mask, rmat = dense_mats

    def with_one(rows):
        return jnp.concatenate([rows[:, :-1], jnp.ones((rows.shape[0], 1), dt)], axis=1)

    z = with_one(table[U:])  # (I, d): [q_i, 1]
    if dense:
        A, b = _gram_dense(mask, rmat - mask * table[U:, -1][None, :], z)
    else:
        A, b = _gram_sparse(z[items], ratings - mu - table[U + items, -1], users, U, chunk)
    x_u = _solve_rows(A, b, cu, reg, reg_bias)
    x = with_one(x_u)  # (U, d): [p_u, 1]
    if dense:
        A, b = _gram_dense(mask.T, (rmat - mask * x_u[:, -1][:, None]).T, x)
    else:
        A, b = _gram_sparse(x[users], ratings - mu - x_u[users, -1], items, n_items, chunk)
    x_i = _solve_rows(A, b, ci, reg, reg_bias)
    table = jnp.concatenate([x_u, x_i], axis=0)
    rows = table[jnp.concatenate([users, items + U])]
    return table, _table_objective(rows, mu, ratings, reg, reg_bias)


# --------------------------------------------------------------------------- fit


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: fitted parameter dict.
      history: ``(epochs,) float`` training objective after each epoch (or its in-epoch mean
        for the mini-batch methods); per-epoch evaluations are in ``epoch_metrics``.
      epoch_metrics: list of dicts from ``on_epoch`` (empty when none was given).
      fit_seconds: training wall time (epochs plus set-up such as ALS's spectral start),
        compilation excluded.
      compile_seconds: trace + compile time of the epoch and set-up programs.
    """

    params: dict
    history: np.ndarray
    epoch_metrics: list
    fit_seconds: float
    compile_seconds: float


def _compiled(fn, *args, **kwargs):
    """AOT-compile ``fn`` for these arguments; returns (executable, seconds)."""
    import time

    t = time.perf_counter()
    exe = fn.lower(*args, **kwargs).compile()
    return exe, time.perf_counter() - t


def fit(train: dict, num_users: int, num_items: int, *, method: str = "als", factors: int = 100,
        epochs: int = 20, lr: float = 0.005, reg: float = 0.02, reg_bias: float | None = None,
        init_scale: float = 0.1, batch_size: int = 4096, optimizer: str = "adam",
        key, params: dict | None = None, on_epoch=None, chunk: int = 4096,
        dense_limit: int = 2 ** 25, spectral_init: bool = True, mesh=None) -> FitResult:
    """Fit :class:`BiasedMF` to training ratings.

    Args:
      train: ``{"user": (n,) int, "item": (n,) int, "rating": (n,) float}`` known indices.
      num_users, num_items: table sizes.
      method: one of :data:`METHODS`.
      factors, init_scale: model size and ``N(0, init_scale²)`` factor init.
      epochs: passes over the data (ALS: sweeps; full batch: steps).
      lr: step size (``sgd``: Surprise's ``lr_all``; mini-batch/full batch: the optax rate;
        unused by ``als``).
      reg, reg_bias: per-rating L2 weights (see :func:`loss`); ``sgd`` uses Surprise's
        convention, which is the same objective halved.
      batch_size: ratings per mini-batch.
      optimizer: ``"adam"`` or ``"sgd"`` (mini-batch and full batch).
      key: ``jax.random.key`` for init and shuffling.
      params: start from these instead of a fresh :func:`init`.
      on_epoch: optional ``f(epoch, params) -> dict`` called after each epoch (its time is
        excluded from ``fit_seconds``); the dicts are returned in ``epoch_metrics``.
      chunk: sparse ALS accumulation chunk (memory ``chunk·(k+1)²`` floats).
      dense_limit: ALS builds its normal equations, and full batch its gradient, with dense
        ``(U, I)`` matrix products when ``U·I`` is at most this (ml-100k, ml-1m); bigger sets
        use chunked scatter-adds (ALS) or gathers + one scatter-add (full batch).
      spectral_init: ALS (dense path, no ``params`` given) starts from the top singular
        vectors of the centred rating matrix (see ``_spectral_init``).
      mesh: a 1-D ``jax.sharding.Mesh`` (``jaxcalc.parallel.make_mesh(N)``): data-parallel
        training for the methods in :data:`DATA_PARALLEL_METHODS`. Parameters and optimizer
        state are replicated; ``"minibatch"`` splits each batch of ratings across the devices
        (padded with masking when the batch is not a multiple of N, see ``_minibatch_epoch``);
        ``"fullbatch"`` splits the dense ``(U, I)`` rating matrices along users when N divides
        ``U`` (else it runs them replicated), and its sparse path splits the ratings like a
        mini-batch. The result equals the one-device fit to float32 rounding. ``None`` or a
        1-device mesh: the plain single-device program.

    Returns:
      :class:`FitResult` (its ``params`` replicated over ``mesh`` when one is given).

    Raises:
      ValueError: bad arguments, or a multi-device ``mesh`` with ``"als"`` / ``"sgd"`` (not
        data-parallel: fit them without a mesh).
    """
    import time

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if reg < 0 or (reg_bias is not None and reg_bias < 0):
        raise ValueError(f"reg and reg_bias must be >= 0, got {reg}, {reg_bias}")
    if lr <= 0 and method != "als":
        raise ValueError(f"lr must be > 0, got {lr}")
    _direction(optimizer)
    if mesh is not None and mesh.size == 1:
        mesh = None  # one device: nothing changes
    if mesh is not None and method not in DATA_PARALLEL_METHODS:
        raise ValueError(f"method {method!r} is not data-parallel and cannot use a {mesh.size}-device mesh; "
                         f"data-parallel methods: {', '.join(DATA_PARALLEL_METHODS)} (or fit without a mesh)")
    users = np.asarray(train["user"], np.int32)
    items = np.asarray(train["item"], np.int32)
    ratings = np.asarray(train["rating"], np.float32)
    if users.size == 0:
        raise ValueError("no training ratings")
    if users.min() < 0 or users.max() >= num_users or items.min() < 0 or items.max() >= num_items:
        raise ValueError(f"training indices must lie in [0, {num_users}) x [0, {num_items}) "
                         f"(unknown users/items have no place in a training set)")
    reg_bias = reg if reg_bias is None else reg_bias
    k_init, k_shuffle = jax.random.split(key)
    params_given = params
    if params is None:
        params = init(k_init, num_users, num_items, factors=factors, init_scale=init_scale,
                      global_mean=float(ratings.mean()))
    table, mu = pack(params)
    f32 = jnp.float32
    rows_u = jnp.asarray(users)
    rows_i = jnp.asarray(items + num_users)
    r = jnp.asarray(ratings)
    if mesh is not None:  # everything replicated; the programs split the batches themselves
        table, mu, rows_u, rows_i, r, k_shuffle = parallel.replicate((table, mu, rows_u, rows_i, r, k_shuffle), mesh)
    hyper = (f32(reg), f32(reg_bias))
    setup = {"run": 0.0, "compile": 0.0}

    def timed(fn, *a, **kw):
        """Set-up work (dense matrices, spectral start): compile apart, run time counted as fit."""
        exe_, c = _compiled(fn, *a, **kw)
        t0 = time.perf_counter()
        out = jax.block_until_ready(exe_(*a))
        setup["run"] += time.perf_counter() - t0
        setup["compile"] += c
        return out

    if method == "sgd":
        args = (rows_u, rows_i, r, f32(lr), *hyper)
        exe, compile_s = _compiled(sgd_epoch, table, mu, *args, unroll=4)
        step = lambda t, e: (exe(t, mu, *args), None)
    elif method == "als":
        ju, ji = jnp.asarray(users), jnp.asarray(items)
        mats = None
        if num_users * num_items <= dense_limit:
            mats = timed(_dense_ratings, ju, ji, r, mu, num_users=num_users, num_items=num_items)
            if params_given is None and spectral_init:
                table = timed(_spectral_init, table, *mats, k_shuffle, num_users=num_users)
        exe, compile_s = _compiled(_als_epoch, table, mu, ju, ji, r, mats, *hyper, num_users=num_users,
                                   chunk=min(chunk, ratings.size))
        step = lambda t, e: exe(t, mu, ju, ji, r, mats, *hyper)
    elif method == "fullbatch" and num_users * num_items <= dense_limit:
        ju, ji = rows_u, rows_i - num_users
        mats = timed(_dense_ratings, ju, ji, r, mu, num_users=num_users, num_items=num_items)
        counts = (jnp.sum(mats[0], axis=1), jnp.sum(mats[0], axis=0))
        state = [_direction(optimizer).init(table)]
        if mesh is not None:
            state[0] = parallel.replicate(state[0], mesh)
            if num_users % mesh.size == 0:  # split the (U, I) matrices and counts_u along users
                mats, cu = parallel.shard_batch((mats, counts[0]), mesh)
                counts = (cu, parallel.replicate(counts[1], mesh))
            else:
                mats, counts = parallel.replicate((mats, counts), mesh)
        args = (*mats, *counts, f32(lr), *hyper)
        exe, compile_s = _compiled(_dense_gd_epoch, table, state[0], mu, *args, optimizer=optimizer,
                                   num_users=num_users, mesh=mesh)

        def step(t, e):
            t, state[0], value = exe(t, state[0], mu, *args)
            return t, value
    else:
        b = ratings.size if method == "fullbatch" else min(batch_size, ratings.size)
        state = [_direction(optimizer).init(table)]
        keys = list(jax.random.split(k_shuffle, epochs))
        if mesh is not None:
            state[0], keys = parallel.replicate((state[0], keys), mesh)
        args = (rows_u, rows_i, r, f32(lr), *hyper)
        exe, compile_s = _compiled(_minibatch_epoch, table, state[0], keys[0], mu, *args,
                                   optimizer=optimizer, batch_size=b, mesh=mesh)

        def step(t, e):
            t, state[0], value = exe(t, state[0], keys[e], mu, *args)
            return t, value

    history, metrics = [], []
    fit_s = setup["run"]
    compile_s += setup["compile"]
    for e in range(epochs):
        t0 = time.perf_counter()
        table, value = jax.block_until_ready(step(table, e))
        fit_s += time.perf_counter() - t0
        if on_epoch is not None:
            metrics.append(on_epoch(e, unpack(table, mu, num_users)))
        history.append(value)
    params = unpack(table, mu, num_users)
    if method == "sgd":  # the scan does not track the objective; evaluate it once at the end
        history[-1] = _train_objective(table, mu, rows_u, rows_i, r, *hyper)
    history = np.asarray([np.nan if v is None else float(v) for v in history])
    return FitResult(params, history, metrics, fit_s, compile_s)


@jax.jit
def _train_objective(table, mu, rows_u, rows_i, ratings, reg, reg_bias):
    return _table_objective(table[jnp.concatenate([rows_u, rows_i])], mu, ratings, reg, reg_bias)


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
