"""Per-rating SGD: Funk's SVD as Surprise's ``SVD`` runs it, one rating per step.

S. Funk, "Netflix Update: Try This at Home", 2006; Koren, Bell & Volinsky 2009, eq. (5)-(6).
For each training rating in turn, with ``e = r − r̂(u, i)``::

    b_u ← b_u + lr (e − reg_bias b_u)        p_u ← p_u + lr (e q_i − reg p_u)
    b_i ← b_i + lr (e − reg_bias b_i)        q_i ← q_i + lr (e p_u − reg q_i)

(old ``p_u``, ``q_i`` on the right): a step of size ``lr`` along minus half the gradient of that
rating's term of :func:`~jaxcalc.models.recommender.model.loss`. The ratings are visited in the
given order, sequentially by definition: an epoch is one ``lax.scan`` over them, each step a
two-row gather and a two-row in-place scatter on the packed table.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Surprise's SVD defaults (surprise/prediction_algorithms/matrix_factorization.pyx, v1.1.5):
# n_factors=100, n_epochs=20, init_mean=0, init_std_dev=0.1, lr_all=0.005, reg_all=0.02.
SURPRISE_SVD = dict(method="sgd", factors=100, epochs=20, lr=0.005, reg=0.02, init_scale=0.1)


# XLA's CPU compiler splits an elementwise, gather or scatter kernel over 2 threads once the array
# it touches exceeds 2 x 256 KB (``ParallelTaskAssigner``'s L2-sized minimum per thread). Here that
# array is the whole packed table, so past ~512 KB (ml-latest-small: k >= 13) every rating step pays
# a thread-pool hand-off for a 2-row update: measured 0.15-0.3 us per rating at k <= 12, 2.5-5 us
# at k >= 13. Reading the two rows with dynamic slices, whose (k+1,) outputs cannot be split,
# leaves only the scatter split and brings k = 100 to ~1 us; below the threshold one 2-row gather
# is the fewer kernels. The write stays one 2-row scatter: two dynamic-update-slices would not
# update the table in place (XLA copies it every step).
SPLIT_BYTES = 2 * 256 * 1024


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("unroll", "slice_rows"))
def sgd_epoch(table, mu, rows_u, rows_i, ratings, lr, reg, reg_bias, *, unroll: int | None = None,
              slice_rows: bool | None = None):
    """One epoch of Funk / Surprise SGD, one rating per step, in the given order.

    Args:
      table: ``(U + I, k + 1)`` from ``pack`` (donated: updated in place).
      mu: scalar.
      rows_u: ``(n,) int32`` user rows; rows_i: ``(n,) int32`` item rows (``U + item``).
      ratings: ``(n,) float32``.
      lr, reg, reg_bias: scalars (traced: changing them does not recompile).
      unroll: scan steps per loop iteration (static); ``None``: 4 when the table is over
        ``SPLIT_BYTES``, else 1 (measured: k = 100 0.86 -> 0.50 us per rating, k <= 12 slower
        with 4). The result is the same.
      slice_rows: read the two rows with dynamic slices (True) or one gather (False); ``None``:
        slices when the table is over ``SPLIT_BYTES`` (static; the result is the same).

    Returns:
      the updated table.
    """
    k = table.shape[1] - 1
    lr = jnp.asarray(lr, table.dtype)
    shrink = 1.0 - lr * jnp.concatenate([jnp.full((k,), reg, table.dtype), jnp.full((1,), reg_bias, table.dtype)])
    bias_col = jnp.zeros((k + 1,), table.dtype).at[k].set(1.0)  # the gradient of r̂ in the bias column is 1
    big = table.size * table.dtype.itemsize > SPLIT_BYTES
    slices = big if slice_rows is None else slice_rows
    unroll = (4 if big else 1) if unroll is None else unroll

    def step(t, x):
        ru, ri, r = x
        idx = jnp.stack([ru, ri])
        if slices:  # see SPLIT_BYTES
            rows = jnp.stack([jax.lax.dynamic_index_in_dim(t, ru, keepdims=False),
                              jax.lax.dynamic_index_in_dim(t, ri, keepdims=False)])
        else:
            rows = t[idx]  # (2, k+1)
        e = r - (mu + rows[0, k] + rows[1, k] + jnp.dot(rows[0, :k], rows[1, :k]))
        # gradient direction: the other row's factors, and 1 for the bias column
        other = rows[::-1] * (1.0 - bias_col)[None, :] + bias_col[None, :]
        new = rows * shrink[None, :] + (lr * e) * other
        return t.at[idx].set(new, unique_indices=True), None

    table, _ = jax.lax.scan(step, table, (rows_u, rows_i, ratings), unroll=unroll)
    return table
