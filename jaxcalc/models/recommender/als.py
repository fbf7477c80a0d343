"""Alternating least squares: each side's rows solved exactly, in closed form, in turn.

Zhou, Wilkinson, Schreiber & Pan, "Large-scale parallel collaborative filtering for the Netflix
prize" (ALS-WR), AAIM 2008. With the items fixed, the objective
(:func:`~jaxcalc.models.recommender.model.loss`) is, for each user separately, a ridge
regression of ``y = r − μ − b_i`` on ``z_i = [q_i, 1]`` over the items the user rated::

    (Σ_i z_i z_iᵀ + n_u·diag(reg, …, reg, reg_bias)) [p_u, b_u] = Σ_i z_i y_i

a ``(k+1)×(k+1)`` system per user, solved by batched Cholesky; then items given users likewise.
Each half-sweep minimises the objective exactly over one side, so it never increases.

The Gram matrices ``Σ_i z_i z_iᵀ`` are one GEMM on the dense ``(U, I)`` rating mask when the set is
small enough (ml-100k, ml-latest-small, ml-1m), else chunked scatter-adds of per-rating outer
products. A spectral start (:func:`spectral_init`) skips the slow first sweeps.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcalc.models.recommender.model import table_objective


def solve_rows(A, b, counts, reg, reg_bias):
    """``x_s = (A_s + n_s·diag(reg, …, reg, reg_bias))⁻¹ b_s`` for every row (batched Cholesky).

    A row with no ratings gets ``x = 0`` (its penalty alone: ``n_s`` is taken as 1 there).
    """
    d = A.shape[-1]
    lam = jnp.concatenate([jnp.full((d - 1,), reg, A.dtype), jnp.full((1,), reg_bias, A.dtype)])
    A = A + (jnp.maximum(counts, 1.0)[:, None, None] * lam[None, None, :]) * jnp.eye(d, dtype=A.dtype)[None]
    chol = jnp.linalg.cholesky(A)
    return jax.scipy.linalg.cho_solve((chol, True), b[..., None])[..., 0]


def gram_dense(mask, weighted, fixed):
    """Dense path: ``A_s = Σ_j M_sj z_j z_jᵀ`` as one GEMM ``M @ (z ⊗ z)``; ``b_s = (M∘Y) @ z``.

    Args:
      mask: ``(S, J)`` 0/1 rating indicator. weighted: ``(S, J)`` targets where rated, else 0.
      fixed: ``(J, d)`` rows ``z_j``.
    """
    J, d = fixed.shape
    outer = (fixed[:, :, None] * fixed[:, None, :]).reshape(J, d * d)
    return (mask @ outer).reshape(-1, d, d), weighted @ fixed


def gram_sparse(fixed, target, seg, num_rows, chunk):
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



@functools.partial(jax.jit, static_argnames=("num_users",))
def spectral_init(table, mask, rmat, key, *, num_users):
    """ALS warm start: item factors along the top-``k`` right singular vectors of the
    zero-filled centred rating matrix (subspace iteration with two power steps and a
    Rayleigh–Ritz rotation, Halko et al. 2011; only matrix products and small ``eigh`` calls,
    which stay fast on a busy CPU where LAPACK's QR/SVD stalled), scaled to a balanced factorization of the full matrix
    (``R_full ≈ R_zero_filled / density``). The first ALS half-sweep solves the users exactly
    given these, so only their span matters; starting there skips the slow climb out of
    the near-zero random start that strong regularisation otherwise causes."""
    k = table.shape[1] - 1
    if k == 0:
        return table
    items = spectral_items(lambda x: rmat @ x, lambda y: rmat.T @ y, rmat.shape[1], k, jnp.mean(mask), key,
                           rmat.dtype)
    return table.at[num_users:, :k].set(items)


def spectral_items(apply, apply_t, num_items: int, k: int, density, key, dtype):
    """The items of :func:`spectral_init` given the products with the zero-filled ``(U, I)`` matrix
    ``R``: ``apply(X) = R X`` for ``X (I, m)``, ``apply_t(Y) = Rᵀ Y`` for ``Y (U, m)`` (dense
    matrix products, or per-rating sums on sets too big to hold densely).

    Returns:
      ``(I, k)`` items: the top-``k`` right singular vectors of ``R`` scaled by
      ``√(σ / density)``.
    """
    density = jnp.maximum(density, 1e-12)

    def orthonormal(Y):  # via eigh of the small Gram matrix; tiny directions are clamped, not NaN
        lam, V = jnp.linalg.eigh(Y.T @ Y)
        lam = jnp.maximum(lam, 1e-6 * lam[-1] + 1e-30)
        return Y @ (V / jnp.sqrt(lam)[None, :])

    Y = apply_t(apply(jax.random.normal(key, (num_items, k + 5), dtype)))
    for _ in range(2):
        Y = apply_t(apply(orthonormal(Y)))
    Y = orthonormal(Y)  # (I, k+5): ≈ the top right singular subspace of R
    RY = apply(Y)
    lam, W = jnp.linalg.eigh(RY.T @ RY)  # Rayleigh–Ritz: singular values² and rotations
    lam, W = lam[::-1][:k], W[:, ::-1][:, :k]
    sv = jnp.sqrt(jnp.maximum(lam, 0.0))
    return (Y @ W) * jnp.sqrt(sv / density)[None, :]


@functools.partial(jax.jit, static_argnames=("num_users", "chunk"), donate_argnums=0)
def als_epoch(table, mu, users, items, ratings, dense_mats, reg, reg_bias, *, num_users, chunk):
    """Users given items, then items given users: one ALS sweep on the packed table.

    For user ``u`` with items fixed (``z_i = [q_i, 1]``, ``y = r − μ − b_i``)::

        (Σ_i z_i z_iᵀ + n_u·diag(reg, …, reg, reg_bias)) [p_u, b_u] = Σ_i z_i y_i

    the exact minimiser of :func:`~jaxcalc.models.recommender.model.loss` over that user's row; items likewise.
    ``dense_mats``: ``(mask, R − μ)`` from :func:`~jaxcalc.models.recommender.model.dense_ratings`, or ``None`` for the
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
        A, b = gram_dense(mask, rmat - mask * table[U:, -1][None, :], z)
    else:
        A, b = gram_sparse(z[items], ratings - mu - table[U + items, -1], users, U, chunk)
    x_u = solve_rows(A, b, cu, reg, reg_bias)
    x = with_one(x_u)  # (U, d): [p_u, 1]
    if dense:
        A, b = gram_dense(mask.T, (rmat - mask * x_u[:, -1][:, None]).T, x)
    else:
        A, b = gram_sparse(x[users], ratings - mu - x_u[users, -1], items, n_items, chunk)
    x_i = solve_rows(A, b, ci, reg, reg_bias)
    table = jnp.concatenate([x_u, x_i], axis=0)
    rows = table[jnp.concatenate([users, items + U])]
    return table, table_objective(rows, mu, ratings, reg, reg_bias)
