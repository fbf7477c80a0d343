"""``fit``: one entry point over the fitting methods, each in its own module.

- ``"als"``: :mod:`~jaxcalc.models.recommender.als` (alternating least squares, closed form).
- ``"minibatch"``, ``"fullbatch"``: :mod:`~jaxcalc.models.recommender.gradient` (optax).
- ``"sgd"``: :mod:`~jaxcalc.models.recommender.funk_sgd` (Funk / Surprise per-rating SGD).
- ``"bpmf"``: :mod:`~jaxcalc.models.recommender.bpmf` (Bayesian MF, Gibbs sampling; the result
  is the posterior mean over the draws after ``burn_in``).

``fit`` validates the inputs, packs the parameters into one table, AOT-compiles the method's
epoch program once (compile time reported apart), runs the epochs and unpacks the result.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc import parallel
from jaxcalc.models.recommender import als, bpmf, funk_sgd, gradient
from jaxcalc.models.recommender.model import dense_ratings, init, pack, train_objective, unpack

METHODS = ("als", "bpmf", "minibatch", "fullbatch", "sgd")
# The methods that run data-parallel over a ``jax.sharding`` mesh (``fit(..., mesh=...)``): their
# steps are gradient steps on a batch mean, so the batch splits across devices and XLA
# all-reduces the gradient. ALS solves one small system per user / item and per-rating SGD is
# sequential by definition: neither is a data-parallel gradient step.
DATA_PARALLEL_METHODS = ("minibatch", "fullbatch")


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: fitted parameter dict.
      history: ``(epochs,) float`` training objective after each epoch (or its in-epoch mean
        for the mini-batch methods; ``bpmf``: the mean squared training error of each sweep's
        draw); per-epoch evaluations are in ``epoch_metrics``.
      epoch_metrics: list of dicts from ``on_epoch`` (empty when none was given).
      fit_seconds: training wall time (epochs plus set-up such as ALS's spectral start),
        compilation excluded.
      compile_seconds: trace + compile time of the epoch and set-up programs.
      details: method-specific facts (``bpmf``: ``samples`` averaged, ``burn_in``, and the
        ``noise_precision`` after each sweep), else ``None``.
    """

    params: dict
    history: np.ndarray
    epoch_metrics: list
    fit_seconds: float
    compile_seconds: float
    details: dict | None = None


def _compiled(fn, *args, **kwargs):
    """AOT-compile ``fn`` for these arguments; returns (executable, seconds)."""
    t = time.perf_counter()
    exe = fn.lower(*args, **kwargs).compile()
    return exe, time.perf_counter() - t


def fit(train: dict, num_users: int, num_items: int, *, method: str = "als", factors: int = 100,
        epochs: int = 20, lr: float = 0.005, reg: float = 0.02, reg_bias: float | None = None,
        init_scale: float = 0.1, batch_size: int = 4096, optimizer: str = "adam",
        key, params: dict | None = None, on_epoch=None, chunk: int = 4096,
        dense_limit: int = 2 ** 25, spectral_init: bool = True, mesh=None, burn_in: int = 0,
        noise_precision: float | None = None) -> FitResult:
    """Fit ``BiasedMF`` to training ratings.

    Args:
      train: ``{"user": (n,) int, "item": (n,) int, "rating": (n,) float}`` known indices.
      num_users, num_items: table sizes.
      method: one of :data:`METHODS`.
      factors, init_scale: model size and ``N(0, init_scale²)`` factor init.
      epochs: passes over the data (ALS: sweeps; full batch: steps; bpmf: Gibbs sweeps, burn-in
        included).
      lr: step size (``sgd``: Surprise's ``lr_all``; mini-batch/full batch: the optax rate;
        unused by ``als`` and ``bpmf``).
      reg, reg_bias: per-rating L2 weights (see ``model.loss``); ``sgd`` uses Surprise's
        convention, which is the same objective halved; unused by ``bpmf`` (its priors are
        learned).
      batch_size: ratings per mini-batch.
      optimizer: ``"adam"`` or ``"sgd"`` (mini-batch and full batch).
      key: ``jax.random.key`` for init and shuffling.
      params: start from these instead of a fresh ``model.init``.
      on_epoch: optional ``f(epoch, params) -> dict`` called after each epoch (its time is
        excluded from ``fit_seconds``); the dicts are returned in ``epoch_metrics``.
      chunk: sparse ALS / bpmf accumulation chunk (memory ``chunk·(k+1)²`` floats).
      dense_limit: ALS and bpmf build their normal equations, and full batch its gradient, with
        dense ``(U, I)`` matrix products when ``U·I`` is at most this (ml-100k, ml-1m); bigger
        sets use chunked scatter-adds (ALS, bpmf) or gathers + one scatter-add (full batch).
      spectral_init: ALS (dense path) and bpmf (both paths), when no ``params`` are given, start
        from the top singular vectors of the centred rating matrix (``als.spectral_init``;
        ``bpmf.spectral_start`` / ``bpmf.sparse_start`` also start the biases at mean residuals).
      burn_in: ``bpmf``: sweeps discarded before the draws that are averaged (``epochs`` counts
        both).
      noise_precision: ``bpmf``: ``None`` samples the likelihood's precision ``α`` with the rest
        (Gamma(1, 1) prior; the first sweep uses 2), a number fixes it (Salakhutdinov & Mnih took 2).
      mesh: a 1-D ``jax.sharding.Mesh`` (``jaxcalc.parallel.make_mesh(N)``): data-parallel
        training for the methods in :data:`DATA_PARALLEL_METHODS`. Parameters and optimizer
        state are replicated; ``"minibatch"`` splits each batch of ratings across the devices
        (padded with masking when the batch is not a multiple of N, see ``gradient.minibatch_epoch``);
        ``"fullbatch"`` splits the dense ``(U, I)`` rating matrices along users when N divides
        ``U`` (else it runs them replicated), and its sparse path splits the ratings like a
        mini-batch. The result equals the one-device fit to float32 rounding. ``None`` or a
        1-device mesh: the plain single-device program.

    Returns:
      :class:`FitResult` (its ``params`` replicated over ``mesh`` when one is given). For
      ``bpmf`` the params are the posterior mean over the ``epochs − burn_in`` kept draws, a
      biased-MF dict with ``(epochs − burn_in)·factors`` factor columns (``bpmf`` module).

    Raises:
      ValueError: bad arguments, or a multi-device ``mesh`` with ``"als"``, ``"bpmf"`` or
        ``"sgd"`` (not data-parallel: fit them without a mesh).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if reg < 0 or (reg_bias is not None and reg_bias < 0):
        raise ValueError(f"reg and reg_bias must be >= 0, got {reg}, {reg_bias}")
    if method == "bpmf" and not 0 <= burn_in < epochs:
        raise ValueError(f"burn_in must be in [0, epochs) = [0, {epochs}), got {burn_in}")
    if noise_precision is not None and not noise_precision > 0:
        raise ValueError(f"noise_precision must be > 0 (or None: sampled), got {noise_precision}")
    if lr <= 0 and method not in ("als", "bpmf"):
        raise ValueError(f"lr must be > 0, got {lr}")
    gradient.optimizer_direction(optimizer)
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
    f32 = jnp.float32
    spectral_start = method == "bpmf" and params is None and spectral_init
    if spectral_start:  # the chain starts at bpmf.spectral_start / sparse_start: no random draw to make
        table, mu = jnp.zeros((num_users + num_items, factors + 1), f32), f32(ratings.mean())
    else:
        if params is None:
            params = init(k_init, num_users, num_items, factors=factors, init_scale=init_scale,
                          global_mean=float(ratings.mean()))
        table, mu = pack(params)
    rows_u = jnp.asarray(users)
    rows_i = jnp.asarray(items + num_users)
    r = jnp.asarray(ratings)
    if mesh is not None:  # everything replicated; the programs split the batches themselves
        table, mu, rows_u, rows_i, r, k_shuffle = parallel.replicate((table, mu, rows_u, rows_i, r, k_shuffle), mesh)
    hyper = (f32(reg), f32(reg_bias))
    dense = num_users * num_items <= dense_limit  # (U, I) matrices fit: dense products (see dense_limit)
    setup = {"run": 0.0, "compile": 0.0}

    def timed(fn, *a, **kw):
        """Set-up work (dense matrices, spectral start): compile apart, run time counted as fit."""
        exe_, c = _compiled(fn, *a, **kw)
        t0 = time.perf_counter()
        out = jax.block_until_ready(exe_(*a))
        setup["run"] += time.perf_counter() - t0
        setup["compile"] += c
        return out

    def current(t):
        """The parameters the fit stands at, from the packed table."""
        return unpack(t, mu, num_users)

    if method == "bpmf":
        ju, ji = jnp.asarray(users), jnp.asarray(items)
        mats = None
        if dense:
            mats = timed(bpmf.dense_inputs, ju, ji, r, mu, num_users=num_users, num_items=num_items)
            if spectral_start:
                table = timed(bpmf.spectral_start, table, *mats[:2], jax.random.fold_in(k_init, 1),
                              num_users=num_users)
        elif spectral_start:
            table = timed(bpmf.sparse_start, table, ju, ji, r - mu, jax.random.fold_in(k_init, 1),
                          num_users=num_users)
        sweep_keys = list(jax.random.split(k_shuffle, epochs))
        alpha = [f32(2.0 if noise_precision is None else noise_precision)]
        alphas = []
        S = epochs - burn_in  # draws kept: buffers for their rows, their bias offsets, and a count
        kept = [jnp.zeros((S, num_users, factors + 1), f32), jnp.zeros((S, num_items, factors + 1), f32),
                jnp.zeros((S,), f32), 0]
        exe, compile_s = _compiled(bpmf.gibbs_sweep, table, alpha[0], sweep_keys[0], mu, ju, ji, r, mats,
                                   num_users=num_users, chunk=min(chunk, ratings.size),
                                   sample_noise=noise_precision is None)
        keep, c_keep = _compiled(bpmf.keep_draw, *kept[:3], table[:num_users], table[num_users:],
                                 jnp.zeros((2,), f32), 0)
        mean_params, c_mean = _compiled(bpmf.posterior_mean_params, *kept[:3], 1, mu)
        compile_s += c_keep + c_mean

        def step(t, e):
            t, alpha[0], xu, xi_mean, bias_means, mse = exe(t, alpha[0], sweep_keys[e], mu, ju, ji, r,
                                                             mats)
            alphas.append(alpha[0])
            if e >= burn_in:
                kept[:3] = keep(*kept[:3], xu, xi_mean, bias_means, e - burn_in)
                kept[3] += 1
            return t, mse

        def posterior_mean(t):
            """The posterior mean over the draws kept so far (in the burn-in: the draw itself)."""
            if kept[3] == 0:
                draw = keep(*(jnp.zeros_like(a) for a in kept[:3]), t[:num_users], t[num_users:],
                            jnp.zeros((2,), f32), 0)
                return mean_params(*draw, 1, mu)
            return mean_params(*kept, mu)

        current = posterior_mean

    elif method == "sgd":
        args = (rows_u, rows_i, r, f32(lr), *hyper)
        exe, compile_s = _compiled(funk_sgd.sgd_epoch, table, mu, *args)  # row reads and unroll by table size
        step = lambda t, e: (exe(t, mu, *args), None)
    elif method == "als":
        ju, ji = jnp.asarray(users), jnp.asarray(items)
        mats = None
        if dense:
            mats = timed(dense_ratings, ju, ji, r, mu, num_users=num_users, num_items=num_items)
            if params_given is None and spectral_init:
                table = timed(als.spectral_init, table, *mats, k_shuffle, num_users=num_users)
        exe, compile_s = _compiled(als.als_epoch, table, mu, ju, ji, r, mats, *hyper, num_users=num_users,
                                   chunk=min(chunk, ratings.size))
        step = lambda t, e: exe(t, mu, ju, ji, r, mats, *hyper)
    elif method == "fullbatch" and dense:
        ju, ji = rows_u, rows_i - num_users
        mats = timed(dense_ratings, ju, ji, r, mu, num_users=num_users, num_items=num_items)
        counts = (jnp.sum(mats[0], axis=1), jnp.sum(mats[0], axis=0))
        state = [gradient.optimizer_direction(optimizer).init(table)]
        if mesh is not None:
            state[0] = parallel.replicate(state[0], mesh)
            if num_users % mesh.size == 0:  # split the (U, I) matrices and counts_u along users
                mats, cu = parallel.shard_batch((mats, counts[0]), mesh)
                counts = (cu, parallel.replicate(counts[1], mesh))
            else:
                mats, counts = parallel.replicate((mats, counts), mesh)
        args = (*mats, *counts, f32(lr), *hyper)
        exe, compile_s = _compiled(gradient.dense_gd_epoch, table, state[0], mu, *args, optimizer=optimizer,
                                   num_users=num_users, mesh=mesh)

        def step(t, e):
            t, state[0], value = exe(t, state[0], mu, *args)
            return t, value
    else:
        b = ratings.size if method == "fullbatch" else min(batch_size, ratings.size)
        state = [gradient.optimizer_direction(optimizer).init(table)]
        keys = list(jax.random.split(k_shuffle, epochs))
        if mesh is not None:
            state[0], keys = parallel.replicate((state[0], keys), mesh)
        args = (rows_u, rows_i, r, f32(lr), *hyper)
        exe, compile_s = _compiled(gradient.minibatch_epoch, table, state[0], keys[0], mu, *args,
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
            metrics.append(on_epoch(e, current(table)))
        history.append(value)
    t0 = time.perf_counter()
    params = jax.block_until_ready(current(table))
    fit_s += time.perf_counter() - t0
    if method == "sgd":  # the scan does not track the objective; evaluate it once at the end
        history[-1] = train_objective(table, mu, rows_u, rows_i, r, *hyper)
    history = np.asarray([np.nan if v is None else float(v) for v in history])
    details = None
    if method == "bpmf":
        details = {"samples": epochs - burn_in, "burn_in": burn_in,
                   "noise_precision": np.asarray([float(a) for a in alphas])}
    return FitResult(params, history, metrics, fit_s, compile_s, details)
