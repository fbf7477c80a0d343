"""Gradient descent on the objective: mini-batch (optax, Adam by default) and full batch.

Both minimise :func:`~jaxcalc.models.recommender.model.loss` (squared error + per-rating L2) by
``table ← table − lr · direction(∇L)`` with an optax direction (``scale_by_adam`` or the raw
gradient), ``lr`` traced so a new rate does not recompile.

- :func:`minibatch_epoch`: shuffled mini-batches, one ``lax.scan`` per epoch; each step gathers
  the batch's rows of the packed table, differentiates, and scatter-adds the gradient once.
- :func:`dense_gd_epoch`: one full-batch step written on the dense ``(U, I)`` layout (masked
  matrix products, no gathers or scatters) for sets small enough to hold densely.

Both run data-parallel over a 1-D ``jax.sharding`` mesh (``fit(..., mesh=...)``): the batch is
split across devices and XLA all-reduces the gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxcalc import parallel
from jaxcalc.losses import squared_error
from jaxcalc.models.recommender.model import table_objective


def optimizer_direction(optimizer: str) -> optax.GradientTransformation:
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
def minibatch_epoch(table, opt_state, key, mu, rows_u, rows_i, ratings, lr, reg, reg_bias, *,
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
    tx = optimizer_direction(optimizer)
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
        value, g_rows = jax.value_and_grad(table_objective)(t[rows_idx], mu, ratings[idx], reg, reg_bias,
                                                             mask)
        grad = jnp.zeros_like(t).at[rows_idx].add(g_rows)
        direction, s = tx.update(grad, s, t)
        return (t - lr * direction, s), value

    (table, opt_state), losses = jax.lax.scan(step, (table, opt_state), perm)
    table, opt_state = _replicated_out((table, opt_state), mesh)
    return table, opt_state, jnp.mean(losses)


@functools.partial(jax.jit, static_argnames=("optimizer", "num_users", "mesh"), donate_argnums=(0, 1))
def dense_gd_epoch(table, opt_state, mu, mask, rmat, counts_u, counts_i, lr, reg, reg_bias, *,
                   optimizer, num_users, mesh=None):
    """One full-batch step on the dense ``(U, I)`` layout: the same objective as ``model.loss``
    over all ratings, as masked matrix products (no gathers or scatters at all).

    ``Σ_r reg‖p_u‖²`` over ratings is ``Σ_u n_u reg‖p_u‖²``: the per-rating penalty becomes
    a count-weighted one.

    ``mesh`` (static): data-parallel with the ``(U, I)`` matrices (and ``counts_u``) split along
    users by the caller; the table and optimizer state stay replicated (outputs pinned so).
    """
    tx = optimizer_direction(optimizer)
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
