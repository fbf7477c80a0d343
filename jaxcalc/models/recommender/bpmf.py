"""Bayesian matrix factorization by Gibbs sampling: the posterior mean instead of one fit.

Salakhutdinov & Mnih, "Bayesian probabilistic matrix factorization using Markov chain Monte
Carlo", ICML 2008 (BPMF), with the biases carried as one more factor column. Each user has a
row ``x_u = [p_u, b_u]`` and each item a row ``x_i = [q_i, b_i]`` (``d = k + 1``)::

    r_ui | x   ~ N(μ + b_u + b_i + p_u·q_i, 1/α)
    x_u | Θ_U  ~ N(m_U, Λ_U⁻¹)          x_i | Θ_I ~ N(m_I, Λ_I⁻¹)
    Θ = (m, Λ) ~ Normal-Wishart: Λ ~ W(W₀, ν₀), m | Λ ~ N(m₀, (β₀Λ)⁻¹)
    m₀ = 0, β₀ = 2, W₀ = I, ν₀ = d  (the paper's choices)

so the regularisation of every user and item, and of each factor direction, is learned from
the data (no ``reg`` to choose by validation). The noise precision ``α`` is fixed (the paper
takes 2) or, with ``noise_precision=None`` (``fit``'s default), sampled too under a Gamma(1, 1)
prior: a fixed 2 overfits ratings noisier than that (synthetic 1–5 stars with noise σ = 0.9: test
RMSE 0.921 fixed, 0.911 sampled, α settling at 1.3 ≈ 1/0.9²), and the sampled one costs nothing on
ml-latest-small (0.838 either way).

One Gibbs sweep (:func:`gibbs_sweep`) samples, in turn:

1. ``Θ_U | X_U`` from the Normal-Wishart posterior (:func:`sample_hyper`): with ``N`` rows,
   mean ``x̄`` and scatter ``S = Σ (x − x̄)(x − x̄)ᵀ``::

       β* = β₀ + N,   ν* = ν₀ + N,   m* = N x̄ / β*,
       (W*)⁻¹ = W₀⁻¹ + S + (β₀ N / β*) x̄ x̄ᵀ,   Λ ~ W(W*, ν*),   m ~ N(m*, (β* Λ)⁻¹)

2. every user row given the items (:func:`sample_rows`): with ``z_i = [q_i, 1]`` and
   ``y_ui = r_ui − μ − b_i`` over the items ``u`` rated::

       P_u = Λ_U + α Σ_i z_i z_iᵀ,   x_u ~ N(P_u⁻¹ (Λ_U m_U + α Σ_i z_i y_ui), P_u⁻¹)

   (the ALS normal equations of :mod:`.als` with a learned prior in place of ``reg``, and a
   draw in place of the solve);
3. ``Θ_I``, then every item row given the users, likewise;
4. ``α ~ Gamma(1 + n/2, 1 + SSE/2)`` when it is sampled.

The chain starts at :func:`spectral_start` (biases at the mean residuals, item factors from the
spectral start of the residual; :func:`sparse_start` computes the same from the ratings on sets too
big for the dense matrices), close to where it settles: one sweep of burn-in is enough on
MovieLens.

Prediction averages over the ``S`` sweeps after the burn-in. The item side is Rao-Blackwellised
(Casella & Robert 1996): each sweep contributes ``p_u·E[q_i | users, Θ_I]``, the conditional
mean the sampler computes anyway, in place of the draw ``p_u·q_i``, which has the same
expectation and less Monte Carlo noise. Because the average of inner products is one inner
product of the concatenated samples, ``(1/S) Σ_s p_uˢ·q_iˢ = [p_u¹ … p_uˢ]·[q_i¹ … q_iˢ] / S``,
the posterior-mean predictor is itself a :class:`~jaxcalc.models.recommender.model.BiasedMF`
with ``S·k`` factors (:func:`posterior_mean_params`): ``predict``, ``evaluate`` and ``top_n``
take it unchanged.

A user or item without training ratings has the learned prior as posterior: its predicted
bias is the prior mean ``m``. The returned dict centres each side's biases on their prior mean
and adds both means to ``μ`` (:func:`keep_draw`), so ``predict``'s fallback for an unknown item,
``μ + b_u``, gives ``μ + b_u + m_I`` (the factor term ``p_u·m_I`` is left out, as ``predict``
leaves out factors for unknown rows).

The per-row sums ``Σ_i z_i z_iᵀ`` and ``Σ_i z_i y_ui`` are matrix products with the dense
``(U, I)`` rating mask (only the ``d(d+1)/2`` distinct Gram entries) when the set is small enough,
else chunked scatter-adds (:func:`~jaxcalc.models.recommender.als.gram_sparse`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc.models.recommender.als import gram_sparse, spectral_init, spectral_items
from jaxcalc.models.recommender.model import dense_ratings

BETA0 = 2.0  # Normal-Wishart prior strength on the mean (Salakhutdinov & Mnih 2008, section 4)
NOISE_PRIOR = (1.0, 1.0)  # Gamma(shape, rate) prior on α when it is sampled (gibbs_sweep relies on shape 1)


def wishart(chol_inv_scale, df: int, eps_chi, eps_lower):
    """One draw ``Λ ~ W(W, df)`` given the Cholesky factor ``C`` of ``W⁻¹`` (Bartlett 1933).

    With ``W = C⁻ᵀC⁻¹``: ``Λ = (C⁻ᵀA)(C⁻ᵀA)ᵀ`` where ``A`` is lower triangular, ``A_jj² ~ χ²(df − j)``
    and ``A_jl ~ N(0, 1)`` below the diagonal. The randomness comes in as standard normals
    (so the draw is a pure function of them): ``A_jj² = Σ_{t < df−j} eps_chi[j, t]²``, exactly
    a ``χ²(df − j)`` for the integer degrees of freedom used here (``jax.random.gamma``'s
    rejection sampler would cost seconds of compile time).

    Args:
      chol_inv_scale: ``(d, d)`` lower-triangular ``C`` with ``C Cᵀ = W⁻¹``.
      df: integer degrees of freedom, ``>= d`` (static).
      eps_chi: ``(d, df)`` and eps_lower: ``(d, d)`` standard normals.

    Returns:
      ``(Λ (d, d), A (d, d))``: the draw and its Bartlett factor (for :func:`sample_hyper`).
    """
    d = chol_inv_scale.shape[0]
    keep = jnp.arange(df)[None, :] < (df - jnp.arange(d))[:, None]
    diag = jnp.sqrt(jnp.sum(jnp.where(keep, eps_chi * eps_chi, 0.0), axis=1))
    A = jnp.tril(eps_lower, -1) + jnp.diag(diag)
    G = jax.scipy.linalg.solve_triangular(chol_inv_scale, A, lower=True, trans="T")  # C⁻ᵀA
    return G @ G.T, A


def hyper_noise_shapes(num_rows: int, d: int) -> tuple:
    """Shapes of the standard normals :func:`sample_hyper` takes for ``num_rows`` rows of size ``d``."""
    return (d, d + num_rows), (d, d), (d,)


def sample_hyper(rows, eps_chi, eps_lower, eps_mean, *, beta0=BETA0):
    """``(m, Λ)`` from the Normal-Wishart posterior given ``rows`` ``(N, d)`` (module docstring).

    Args:
      rows: ``(N, d)`` the current rows of one side.
      eps_chi, eps_lower, eps_mean: standard normals of :func:`hyper_noise_shapes`.
      beta0: the prior's ``β₀``.

    Returns:
      ``(m (d,), Λ (d, d))``.
    """
    N, d = rows.shape
    dt = rows.dtype
    mean = jnp.mean(rows, axis=0)
    centred = rows - mean[None, :]
    beta = beta0 + N
    inv_scale = jnp.eye(d, dtype=dt) + centred.T @ centred + (beta0 * N / beta) * jnp.outer(mean, mean)
    C = jnp.linalg.cholesky((inv_scale + inv_scale.T) / 2)
    lam, A = wishart(C, d + N, eps_chi, eps_lower)
    # m ~ N(m*, (βΛ)⁻¹): with Λ = GGᵀ, G = C⁻ᵀA, a draw is m* + G⁻ᵀε/√β = m* + C A⁻ᵀ ε/√β
    m = N * mean / beta + C @ jax.scipy.linalg.solve_triangular(A, eps_mean, lower=True, trans="T") / jnp.sqrt(beta)
    return m, lam


def sample_rows(gram, rhs, alpha, m, lam, eps):
    """Draw every row ``x_s ~ N(P_s⁻¹ (Λm + α rhs_s), P_s⁻¹)``, ``P_s = Λ + α gram_s``.

    With ``P_s = L Lᵀ`` (Cholesky), the draw is ``mean_s + L⁻ᵀ eps_s``, whose covariance is
    ``L⁻ᵀL⁻¹ = P_s⁻¹``.

    Args:
      gram: ``(S, d, d)`` per-row ``Σ z zᵀ``; rhs: ``(S, d)`` per-row ``Σ z y``.
      alpha: noise precision; m: ``(d,)``; lam: ``(d, d)`` the prior's mean and precision.
      eps: ``(S, d)`` standard normals.

    Returns:
      ``(draws (S, d), conditional means (S, d))``.
    """
    P = alpha * gram + lam[None]
    h = alpha * rhs + (lam @ m)[None, :]
    L = jnp.linalg.cholesky(P)
    mean = jax.scipy.linalg.cho_solve((L, True), h[..., None])[..., 0]
    noise = jax.scipy.linalg.solve_triangular(L, eps[..., None], lower=True, trans="T")[..., 0]
    return mean + noise, mean


def _normals(key, shapes, dtype):
    """Standard normals of the given shapes from ONE ``jax.random.normal`` call (one RNG kernel
    to compile per sweep, not one per draw)."""
    sizes = [int(np.prod(s)) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    offsets = np.cumsum([0, *sizes])
    return [flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes, strict=True)]


def _with_one(rows):
    """``[factors, 1]``: the regressors ``z`` of the other side (its bias column set to 1)."""
    return rows.at[:, -1].set(1.0)


def _stats_dense(mask, rmat, fixed, tri):
    """Dense path: ``Σ z zᵀ`` and ``Σ z y`` per row of ``mask``/``rmat`` ``(S, J)`` as GEMMs.

    ``y = (r − μ) − b_other``, so ``Σ z y = rmat @ z − mask @ (b_other z)``; only the
    ``d(d+1)/2`` distinct Gram entries (``tri = (rows, cols)`` of the upper triangle) are
    multiplied, in the same GEMM, then gathered into the symmetric ``(S, d, d)``.
    """
    z = _with_one(fixed)
    d = z.shape[1]
    rows, cols = tri
    n_tri = len(rows)
    where = np.zeros((d, d), np.int32)
    where[rows, cols] = np.arange(n_tri)
    where = np.maximum(where, where.T)  # (j, l) and (l, j) read the same upper-triangle entry
    both = mask @ jnp.concatenate([z[:, rows] * z[:, cols], fixed[:, -1:] * z], axis=1)
    gram = jnp.take(both[:, :n_tri], where.ravel(), axis=1).reshape(mask.shape[0], d, d)
    return gram, rmat @ z - both[:, n_tri:]


def _stats_sparse(fixed_rows, target, seg, num_rows, chunk):
    """Sparse path: per-rating ``z``, ``y`` scatter-added ``chunk`` ratings at a time."""
    return gram_sparse(_with_one(fixed_rows), target - fixed_rows[:, -1], seg, num_rows, chunk)


@functools.partial(jax.jit, static_argnames=("num_users", "chunk", "sample_noise"), donate_argnums=0)
def gibbs_sweep(table, alpha, key, mu, users, items, ratings, dense_mats, *, num_users, chunk,
                sample_noise):
    """One Gibbs sweep over ``Θ_U``, users, ``Θ_I``, items (and ``α``): module docstring.

    Args:
      table: ``(U + I, d)`` packed rows ``[p_u, b_u]`` then ``[q_i, b_i]`` (donated).
      alpha: noise precision (scalar).
      key: ``jax.random.key`` for this sweep.
      mu: the global mean.
      users, items: ``(n,) int32`` training indices; ratings: ``(n,) float32``.
      dense_mats: ``(mask, R − μ, maskᵀ, (R − μ)ᵀ)`` dense ``(U, I)`` / ``(I, U)``, or ``None``
        for the sparse path.
      num_users, chunk: static; ``chunk`` is the sparse path's accumulation chunk.
      sample_noise: static; draw ``α`` (else it stays as given).

    Returns:
      ``(table, alpha, users (U, d), item_means (I, d), bias_means (2,), train_mse)``: the new
      draw, ``α``, the users' rows of the draw, the items' conditional means given them (for
      the Rao-Blackwellised average), the sweep's prior means of the user and item biases
      (``m_U``, ``m_I`` last entries), and the mean squared training error of the draw.
    """
    U = num_users
    n_items = table.shape[0] - U
    d = table.shape[1]
    dt = table.dtype
    tri = tuple(np.triu_indices(d))
    k_normal, k_noise = jax.random.split(key)
    eps = _normals(k_normal, [*hyper_noise_shapes(U, d), (U, d), *hyper_noise_shapes(n_items, d), (n_items, d)], dt)

    xi = table[U:]
    m_u, lam_u = sample_hyper(table[:U], *eps[0:3])
    if dense_mats is not None:
        mask, rmat, mask_t, rmat_t = dense_mats
        gram, rhs = _stats_dense(mask, rmat, xi, tri)
    else:
        gram, rhs = _stats_sparse(xi[items], ratings - mu, users, U, chunk)
    xu, _ = sample_rows(gram, rhs, alpha, m_u, lam_u, eps[3])

    m_i, lam_i = sample_hyper(xi, *eps[4:7])
    if dense_mats is not None:
        gram, rhs = _stats_dense(mask_t, rmat_t, xu, tri)
    else:
        gram, rhs = _stats_sparse(xu[users], ratings - mu, items, n_items, chunk)
    xi, xi_mean = sample_rows(gram, rhs, alpha, m_i, lam_i, eps[7])

    ru, ri = xu[users], xi[items]
    err = ratings - (mu + ru[:, -1] + ri[:, -1] + jnp.sum(ru[:, :-1] * ri[:, :-1], axis=1))
    sse = jnp.sum(err * err)
    if sample_noise:  # α ~ Gamma(1 + n/2, rate 1 + SSE/2) = χ²(n + 2) / (2 + SSE), the χ² as a sum of squares
        _a0, b0 = NOISE_PRIOR  # (shape a0 = 1 makes the degrees of freedom the integer n + 2)
        chi = jax.random.normal(k_noise, (ratings.shape[0] + 2,), dt)
        alpha = jnp.sum(chi * chi) / (2.0 * b0 + sse)
    bias_means = jnp.stack([m_u[-1], m_i[-1]])
    return jnp.concatenate([xu, xi], axis=0), alpha, xu, xi_mean, bias_means, sse / ratings.shape[0]


@functools.partial(jax.jit, static_argnames=("num_users",))
def spectral_start(table, mask, rmat, key, *, num_users):
    """The chain's start: biases at the mean residuals (each item's mean of ``r − μ``, then each
    user's mean of what is left), item factors from ALS's spectral start on the residual after
    those biases (its top singular subspace, at the scale of a balanced factorization,
    ``als.spectral_init``), user factors zero: the first sweep draws the users given the items.

    A start at zero (or a small random one) leaves the first prior precisions ``Λ``, drawn from
    the rows' spread, far too large, and the chain takes dozens of sweeps to climb out of that
    shrinkage (measured on ml-latest-small: the posterior mean after 10 sweeps is 0.849 from
    N(0, 0.1²) factors, 0.843 from this start; the biases-only model needs ~50 sweeps from zero
    biases and 3 from these).

    Args:
      table: ``(U + I, d)`` (only its shape is used).
      mask, rmat: the dense ``(U, I)`` rating indicator and ``R − μ`` (:func:`dense_inputs`).
      key: ``jax.random.key`` for the subspace iteration.
      num_users: ``U`` (static).
    """
    U = num_users
    item_bias = jnp.sum(rmat, axis=0) / jnp.maximum(jnp.sum(mask, axis=0), 1.0)
    user_bias = jnp.sum(rmat - mask * item_bias[None, :], axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    resid = rmat - mask * (user_bias[:, None] + item_bias[None, :])
    start = spectral_init(jnp.zeros_like(table), mask, resid, key, num_users=U)
    return start.at[:U, -1].set(user_bias).at[U:, -1].set(item_bias)


@functools.partial(jax.jit, static_argnames=("num_users",))
def sparse_start(table, users, items, centred, key, *, num_users):
    """:func:`spectral_start` from the ratings themselves (``centred = r − μ`` per rating), for sets
    too big for the dense ``(U, I)`` matrices: the sums over a row or column become segment sums
    over the ratings."""
    U = num_users
    n_items = table.shape[0] - U
    k = table.shape[1] - 1
    ones = jnp.ones_like(centred)
    item_bias = (jax.ops.segment_sum(centred, items, n_items)
                 / jnp.maximum(jax.ops.segment_sum(ones, items, n_items), 1.0))
    left = centred - item_bias[items]
    user_bias = jax.ops.segment_sum(left, users, U) / jnp.maximum(jax.ops.segment_sum(ones, users, U), 1.0)
    resid = left - user_bias[users]
    start = jnp.zeros_like(table).at[:U, -1].set(user_bias).at[U:, -1].set(item_bias)
    if k == 0:
        return start
    factors = spectral_items(lambda x: jax.ops.segment_sum(resid[:, None] * x[items], users, U),
                             lambda y: jax.ops.segment_sum(resid[:, None] * y[users], items, n_items),
                             n_items, k, centred.shape[0] / (U * n_items), key, table.dtype)
    return start.at[U:, :k].set(factors)


@functools.partial(jax.jit, static_argnames=("num_users", "num_items"))
def dense_inputs(users, items, ratings, mu, *, num_users, num_items):
    """``(mask, R − μ, maskᵀ, (R − μ)ᵀ)``: the dense layouts of both half-sweeps, built once."""
    mask, rmat = dense_ratings(users, items, ratings, mu, num_users=num_users, num_items=num_items)
    return mask, rmat, mask.T, rmat.T


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def keep_draw(user_draws, item_means, offsets, users, items, bias_means, slot):
    """Keep one sweep: its user rows and item conditional means, biases centred on their prior
    means, go to slot ``slot`` of the ``(S, U, d)`` / ``(S, I, d)`` buffers, and the sum of the
    two prior means to ``offsets[slot]`` (all donated: updated in place).

    Centring changes no prediction for a known pair (``b_u + b_i`` is unchanged once the offset
    joins ``μ``), but makes ``predict``'s fallback for an unknown item, ``μ + b_u``, read
    ``μ + b_u + m_I`` (the learned mean item bias), and likewise for an unknown user: the
    posterior predictive's bias part for a new row drawn from the prior.
    """
    users = users.at[:, -1].add(-bias_means[0])
    items = items.at[:, -1].add(-bias_means[1])
    return (user_draws.at[slot].set(users), item_means.at[slot].set(items),
            offsets.at[slot].set(bias_means[0] + bias_means[1]))


@jax.jit
def posterior_mean_params(user_draws, item_means, offsets, count, mu) -> dict:
    """The Monte Carlo posterior-mean predictor as one biased-MF parameter dict.

    Args:
      user_draws: ``(S, U, d)`` user rows ``[p_u, b_u]``, one per kept sweep.
      item_means: ``(S, I, d)`` items' conditional means ``E[[q_i, b_i] | users, Θ_I]``.
      offsets: ``(S,)`` what was taken off the biases (:func:`keep_draw`), added back to ``μ``.
      count: how many of the ``S`` slots are filled (the rest are zero and add nothing), so a
        chain in progress gives parameters of the same shape as the finished one.
      mu: the global mean.

    Returns:
      ``{"mu", "user_bias" (U,), "item_bias" (I,), "user_factors" (U, S·k), "item_factors"
      (I, S·k)}`` whose ``predict`` is ``μ + (1/count) Σ_s (b_uˢ + b_iˢ + p_uˢ·q_iˢ)`` for known
      pairs (``μ`` here includes the mean offset).
    """
    S, U, d = user_draws.shape
    n_items = item_means.shape[1]
    count = jnp.asarray(count, user_draws.dtype)
    scale = 1.0 / jnp.sqrt(count)

    def concat(x, n):  # (S, n, d) -> (n, S·k), each sample's factors side by side
        return scale * jnp.transpose(x[:, :, :-1], (1, 0, 2)).reshape(n, S * (d - 1))

    return {"mu": mu + jnp.sum(offsets) / count, "user_bias": jnp.sum(user_draws[:, :, -1], axis=0) / count,
            "item_bias": jnp.sum(item_means[:, :, -1], axis=0) / count,
            "user_factors": concat(user_draws, U), "item_factors": concat(item_means, n_items)}
