"""Training loops: batch, stochastic and mini-batch gradient descent as compiled scans.

The three kinds of descent differ only in which data each update sees:

* ``method="batch"``: one update per epoch on all ``n`` examples.
* ``method="sgd"``: one update per example (batches of one), in a fresh random order
  each epoch (the order for epoch ``e`` comes from ``jax.random.fold_in(key, e)``).
* ``method="minibatch"``: the epoch's random permutation is cut into batches of
  ``batch_size``. **Last partial batch:** when ``batch_size`` does not divide ``n``, the
  ``n // batch_size`` full batches run as one ``lax.scan`` and the ``n % batch_size``
  left-over examples make one extra, smaller update at the end of the epoch (its own static
  shape, traced once), so every example is used exactly once per epoch and ``loss_fn`` sees
  only real examples (no padding, no masking, any reduction works). ``drop_last=True``
  drops those examples instead (different ones each epoch, since the order is fresh).
  Either way the epoch does not weigh all examples equally (the last batch's examples count
  ``1/rem`` in their update instead of ``1/batch_size``); where that matters, e.g. converging
  to a fixed point to high precision, pick a ``batch_size`` that divides ``n``.

Every epoch is one jitted ``lax.scan`` over steps. When nothing needs the host between
epochs (no progress bar, no callback), all epochs are one compiled program (a scan over
epochs). The divergence guard and early stop run inside the scan: once the loss, the
gradient or the new parameters are non-finite (or the gradient norm reaches ``grad_tol``),
a flag in the carry freezes the parameters; the host then reads where it happened.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcalc import parallel
from jaxcalc._validate import check_finite_tree
from jaxcalc.errors import DivergenceError

__all__ = ["fit", "lr_find", "sweep"]

RUNNING, DIVERGED, CONVERGED = 0, 1, 2
_STATUS_NAMES = {RUNNING: "completed", DIVERGED: "diverged", CONVERGED: "converged"}
_METHODS = ("batch", "sgd", "minibatch")


# --------------------------------------------------------------------------- checks


def _leading_length(data) -> int:
    """Validate ``data`` (a pytree of arrays sharing a leading example axis); return ``n``."""
    leaves = jax.tree_util.tree_leaves_with_path(data)
    if not leaves:
        raise ValueError("data is empty: it holds no arrays (expected a pytree of arrays "
                         "sharing a leading example axis)")
    lengths = {}
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path) or "<root>"
        if np.ndim(leaf) == 0:
            raise ValueError(f"data leaf {name} is a scalar; every leaf needs a leading example axis")
        lengths[name] = int(np.shape(leaf)[0])
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise ValueError(f"data leaves have different leading lengths ({listing}); "
                         "every leaf needs the same number of examples")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("data is empty: its leaves have 0 examples")
    check_finite_tree(data, "data")
    return n


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How one epoch is cut into steps (all static)."""

    method: str
    n: int
    batch_size: int
    full_steps: int  # steps of exactly batch_size examples (run as a scan)
    rem: int  # size of the extra last step (0: none)

    @property
    def steps_per_epoch(self) -> int:
        return self.full_steps + (1 if self.rem else 0)


def _make_plan(method, n, batch_size, drop_last) -> _Plan:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "batch":
        if batch_size is not None:
            raise ValueError("batch_size is only used with method='minibatch' "
                             "(method='batch' uses all examples, 'sgd' one at a time)")
        return _Plan("batch", n, n, 1, 0)
    if method == "sgd":
        if batch_size not in (None, 1):
            raise ValueError("method='sgd' uses batches of one example; use method='minibatch' "
                             f"for batch_size={batch_size}")
        return _Plan("sgd", n, 1, n, 0)
    if batch_size is None:
        raise ValueError("method='minibatch' needs batch_size")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({n} examples)")
    full, rem = divmod(n, int(batch_size))
    return _Plan("minibatch", n, int(batch_size), full, 0 if drop_last else rem)


# --------------------------------------------------------------------------- the compiled loop


class TrainState(NamedTuple):
    """The scan carry. ``status``: 0 running, 1 diverged, 2 converged (grad_tol reached);
    ``event_step``: global step index where the status changed (-1: never)."""

    params: Any
    opt_state: Any
    status: jax.Array
    event_step: jax.Array
    last_finite_loss: jax.Array


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _leading_size(tree) -> int:
    return int(np.shape(jax.tree.leaves(tree)[0])[0])


def _take(data, idx):
    return jax.tree.map(lambda x: jnp.take(jnp.asarray(x), idx, axis=0), data)


@dataclasses.dataclass(frozen=True)
class _Loop:
    """The pure pieces of a training run; ``make_opt(hparam)`` builds the optimizer from a
    (possibly traced) hyperparameter, so a sweep can vmap over it."""

    loss_fn: Callable
    plan: _Plan
    make_opt: Callable
    grad_tol: float | None
    clip_norm: float | None
    noise_multiplier: float
    log_noise_scale: bool
    record_steps: bool
    full_loss: bool = False
    mesh: Any = None  # jax.sharding.Mesh from jaxcalc.parallel.make_mesh: data-parallel steps

    # one update ---------------------------------------------------------------
    def _grad(self, params, batch, key):
        """``(loss, grads, (trace_sigma, grad_sq_norm))``; the noise parts are nan unless
        ``log_noise_scale`` (and the batch has >= 2 examples)."""
        nan = jnp.array(jnp.nan, jnp.result_type(float))
        noise_parts = (nan, nan)
        if self.clip_norm is None and not self.log_noise_scale:
            loss, grads = jax.value_and_grad(self.loss_fn)(params, batch)
            return loss, grads, noise_parts
        from jaxcalc import per_example

        clip_key = key if self.noise_multiplier > 0 else None
        if not self.log_noise_scale:  # clipping only
            loss = self.loss_fn(params, batch)
            grads, _ = per_example.clipped_mean_grad(
                self.loss_fn, params, batch, clip_norm=self.clip_norm,
                noise_multiplier=self.noise_multiplier, key=clip_key)
            return loss, grads, noise_parts
        per_ex = per_example.per_example_grads(self.loss_fn, params, batch)
        if self.clip_norm is None:
            loss, grads = jax.value_and_grad(self.loss_fn)(params, batch)
        else:
            loss = self.loss_fn(params, batch)
            grads, _ = per_example.clip_and_aggregate(
                per_ex, clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier,
                key=clip_key)
        if self.log_noise_scale and jax.tree.leaves(per_ex)[0].shape[0] >= 2:
            parts = per_example.gradient_noise_scale(per_ex, return_parts=True)
            noise_parts = (parts["trace_sigma"], parts["grad_sq_norm"])
        return loss, grads, noise_parts

    def step(self, state: TrainState, batch, gstep, key, opt):
        if self.mesh is not None and _leading_size(batch) % self.mesh.size == 0:
            # split this step's batch across the devices; XLA all-reduces the gradients. (The
            # epoch's smaller last batch, when it does not split evenly, runs whole on every device.)
            batch = parallel.constrain_batch(batch, self.mesh)
        active = state.status == RUNNING
        loss, grads, noise = self._grad(state.params, batch, key)
        gnorm = optax.tree.norm(grads)
        updates, new_opt = opt.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm) & _all_finite(new_params)
        converged = (gnorm <= self.grad_tol) if self.grad_tol is not None else jnp.array(False)
        new_status = jnp.where(~finite, DIVERGED, jnp.where(converged, CONVERGED, RUNNING))
        status = jnp.where(active, new_status, state.status).astype(jnp.int32)
        apply = active & (new_status == RUNNING)
        new_state = TrainState(
            params=_tree_where(apply, new_params, state.params),
            opt_state=_tree_where(apply, new_opt, state.opt_state),
            status=status,
            event_step=jnp.where(active & (new_status != RUNNING), gstep, state.event_step)
            .astype(jnp.int32),
            last_finite_loss=jnp.where(active & jnp.isfinite(loss), loss, state.last_finite_loss),
        )
        return new_state, (loss, gnorm, noise, active)

    # one epoch ----------------------------------------------------------------
    def epoch(self, state: TrainState, epoch_idx, data, key, hparam):
        plan = self.plan
        opt = self.make_opt(hparam)
        k_perm, k_noise = jax.random.split(jax.random.fold_in(key, epoch_idx))
        base = (epoch_idx * plan.steps_per_epoch).astype(jnp.int32)
        if plan.method == "batch":
            state, rec = self.step(state, data, base, k_noise, opt)
            recs = jax.tree.map(lambda r: r[None], rec)
            sizes = jnp.full((1,), plan.n)
        else:
            perm = jax.random.permutation(k_perm, plan.n)
            full = perm[: plan.full_steps * plan.batch_size].reshape(plan.full_steps, plan.batch_size)

            def body(st, xs):
                i, idx = xs
                return self.step(st, _take(data, idx), base + i, jax.random.fold_in(k_noise, i), opt)

            state, recs = jax.lax.scan(body, state, (jnp.arange(plan.full_steps, dtype=jnp.int32), full))
            sizes = jnp.full((plan.full_steps,), plan.batch_size)
            if plan.rem:
                idx = perm[plan.full_steps * plan.batch_size:]
                state, rec = self.step(state, _take(data, idx), base + plan.full_steps,
                                       jax.random.fold_in(k_noise, plan.full_steps), opt)
                recs = jax.tree.map(lambda a, r: jnp.concatenate([a, r[None]]), recs, rec)
                sizes = jnp.concatenate([sizes, jnp.full((1,), plan.rem)])
        losses, gnorms, (traces, gsqs), active = recs
        weights = jnp.where(active, sizes, 0).astype(losses.dtype)
        total = jnp.sum(weights)

        def wmean(v):  # example-weighted mean over the epoch's active steps (nan if none)
            return jnp.where(total > 0, jnp.sum(jnp.where(active, v, 0) * weights) / total, jnp.nan)

        out = {"loss": wmean(losses), "grad_norm": wmean(gnorms)}
        if self.log_noise_scale:
            # B_simple of the epoch: mean tr(Σ) over mean |G|² across its steps (averaging
            # numerator and denominator separately, as McCandlish et al. 2018 advise)
            ok = active & jnp.isfinite(traces) & jnp.isfinite(gsqs)
            out["noise_scale"] = (jnp.sum(jnp.where(ok, traces, 0.0))
                                  / jnp.sum(jnp.where(ok, gsqs, 0.0)))
        if self.full_loss:
            out["full_loss"] = self.loss_fn(state.params, data)
        if self.record_steps:
            out["step_loss"] = jnp.where(active, losses, jnp.nan)
            out["step_grad_norm"] = jnp.where(active, gnorms, jnp.nan)
        return state, out

    # whole runs -----------------------------------------------------------------
    def init(self, params, data, hparam) -> TrainState:
        opt = self.make_opt(hparam)
        first = data if self.plan.method == "batch" else _take(data, jnp.arange(self.plan.batch_size))
        loss_dtype = jax.eval_shape(self.loss_fn, params, first).dtype
        return TrainState(params, opt.init(params), jnp.array(RUNNING, jnp.int32),
                          jnp.array(-1, jnp.int32), jnp.array(jnp.nan, loss_dtype))

    def run(self, params, data, key, hparam, epochs: int):
        state = self.init(params, data, hparam)
        return jax.lax.scan(lambda st, e: self.epoch(st, e, data, key, hparam), state,
                            jnp.arange(epochs, dtype=jnp.int32))


# --------------------------------------------------------------------------- host side


def _to_numpy_history(recs) -> dict:
    hist = {}
    for k, v in recs.items():
        arr = np.asarray(v)
        hist[k] = arr.reshape(arr.shape[0], -1).reshape(-1) if k.startswith("step_") else arr
    return hist


def _finish(state: TrainState, recs: dict, plan: _Plan, epochs: int, on_divergence: str,
            extra: dict | None = None):
    status = int(state.status)
    hist = _to_numpy_history(recs)
    hist["status"] = _STATUS_NAMES[status]
    hist["steps_per_epoch"] = plan.steps_per_epoch
    hist["stop_epoch"] = None
    hist["stop_step"] = None
    if status != RUNNING:
        g = int(state.event_step)
        epoch, step = divmod(g, plan.steps_per_epoch)
        keep_epochs, keep_steps = epoch + 1, g + 1
        for k in list(hist):
            if isinstance(hist[k], np.ndarray):
                hist[k] = hist[k][: keep_steps if k.startswith("step_") else keep_epochs]
        hist["stop_epoch"], hist["stop_step"] = epoch, step
    hist["epochs_run"] = len(hist["loss"])
    hist["last_finite_loss"] = float(state.last_finite_loss)
    if extra:
        hist.update(extra)
    if status == DIVERGED and on_divergence == "raise":
        raise DivergenceError(
            f"training diverged at epoch {hist['stop_epoch']}, step {hist['stop_step']} "
            f"(a non-finite loss, gradient or parameter); last finite loss "
            f"{hist['last_finite_loss']:.6g}. Try a smaller learning rate; the last finite "
            f"parameters are on this error's .last_finite_params.",
            epoch=hist["stop_epoch"], step=hist["stop_step"],
            last_finite_loss=hist["last_finite_loss"], last_finite_params=state.params,
            history=hist)
    return state.params, hist


@dataclasses.dataclass(frozen=True)
class _ConstOpt:
    """``make_opt`` for a fixed optimizer; hashable, so repeated ``fit`` calls with the same
    optimizer object reuse the compiled program."""

    optimizer: Any

    def __call__(self, _):
        return self.optimizer


@functools.lru_cache(maxsize=32)
def _compiled(loop: _Loop, what: str):
    if what == "run":
        return jax.jit(loop.run, static_argnums=4)
    if what == "epoch":
        return jax.jit(loop.epoch)
    return jax.jit(loop.init)


@functools.lru_cache(maxsize=32)
def _compiled_sweep(loop: _Loop, epochs: int, by_seed: bool, by_lr: bool):
    """One jitted, vmapped program per (loop, epochs, axes): a new learning-rate grid of the
    same length, or new seeds, reuse it without recompiling."""
    def one(params, data, key, hparam):
        key = jax.random.wrap_key_data(key) if by_seed else key
        return loop.run(params, data, key, hparam, epochs)

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0 if by_seed else None, 0 if by_lr else None)))


def _check_common(method, epochs, batch_size, key, history_every, on_divergence, clip_norm,
                  noise_multiplier, drop_last, data, log_noise_scale=False):
    n = _leading_length(data)
    _check_int(epochs, "epochs", 1)
    plan = _make_plan(method, n, batch_size, drop_last)
    if log_noise_scale and plan.batch_size < 2:
        raise ValueError("log_noise_scale needs batches of >= 2 examples (the noise scale "
                         "compares examples within a batch); use method='minibatch' or 'batch'")
    if history_every not in ("epoch", "step"):
        raise ValueError(f"history_every must be 'epoch' or 'step', got {history_every!r}")
    if on_divergence not in ("raise", "return"):
        raise ValueError(f"on_divergence must be 'raise' or 'return', got {on_divergence!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if noise_multiplier > 0 and clip_norm is None:
        raise ValueError("noise_multiplier needs clip_norm (the noise scale is noise_multiplier * clip_norm)")
    if key is None and (method != "batch" or noise_multiplier > 0):
        raise ValueError(f"method={method!r} needs a key (jax.random.key(seed)) for the data order/noise")
    return plan


def _check_mesh(plan: _Plan, mesh) -> None:
    """The (full) batches must split evenly over the mesh's devices."""
    if mesh is not None and plan.batch_size % mesh.size:
        what = "the whole data set" if plan.method == "batch" else f"batch_size={plan.batch_size}"
        raise ValueError(
            f"method={plan.method!r} makes batches of {plan.batch_size} examples ({what}), not "
            f"divisible by the {mesh.size} devices of the mesh: use method='minibatch' with a "
            f"batch_size that is a multiple of {mesh.size}")


def fit(loss_fn: Callable, params, data, *, optimizer: optax.GradientTransformation,
        method: str = "batch", epochs: int, batch_size: int | None = None, key=None,
        history_every: str = "epoch", grad_tol: float | None = None,
        on_divergence: str = "raise", clip_norm: float | None = None,
        noise_multiplier: float = 0.0, log_noise_scale: bool = False, drop_last: bool = False,
        full_loss: bool = False, progress: bool = False, callback: Callable | None = None,
        mesh=None):
    """Train ``params`` by (batch / stochastic / mini-batch) gradient descent.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; ``batch`` has the structure of ``data``
        with a leading axis of the step's batch size (1 for ``"sgd"``).
      params: pytree of float arrays.
      data: pytree of arrays sharing a leading example axis ``(n, ...)``.
      optimizer: an optax ``GradientTransformation`` (optax's or ``jaxcalc.optim``'s).
      method: ``"batch"`` | ``"sgd"`` | ``"minibatch"`` (see the module docstring).
      epochs: number of passes over the data (>= 1).
      batch_size: for ``"minibatch"`` only, ``1 <= batch_size <= n``.
      key: ``jax.random.key``; drives the data order (``fold_in(key, epoch)``) and the
        clipping noise. Needed unless ``method="batch"`` without noise. Same key, same
        result bit for bit.
      history_every: ``"epoch"``, or ``"step"`` to add per-step ``step_loss`` and
        ``step_grad_norm`` (flattened over epochs).
      grad_tol: stop early (parameters frozen in the scan) at the first step whose gradient
        norm is ``<= grad_tol``; that step's update is not applied.
      on_divergence: ``"raise"`` a :class:`jaxcalc.DivergenceError` (with the epoch, step, last
        finite loss and last finite parameters) or ``"return"`` the last finite parameters
        and a history whose ``status`` is ``"diverged"``.
      clip_norm: per-example gradient clipping (DP-SGD style): each step's gradient is
        ``jaxcalc.per_example.clipped_mean_grad`` of its batch (each example's gradient scaled
        to norm <= clip_norm, then averaged); ``noise_multiplier`` σ adds Gaussian noise of
        std σ·clip_norm/batch (key-driven). ``grad_norm`` is then that of the clipped mean.
      log_noise_scale: add ``history["noise_scale"]``, the gradient noise scale
        B_simple = tr(Σ)/|G|² per epoch: the epoch's mean of the per-step estimates of tr(Σ)
        over the mean of those of |G|² (``jaxcalc.per_example.gradient_noise_scale``, on
        each step's batch; steps of one example are skipped). Needs batches of >= 2.
      drop_last: ``"minibatch"`` only: drop the ``n % batch_size`` left-over examples of each
        epoch instead of making a smaller last update.
      full_loss: add ``history["full_loss"]``, the loss on all the data at the parameters
        after each epoch (one extra forward pass per epoch, inside the compiled program).
      progress: show a tqdm bar over epochs (each epoch is then its own compiled call).
      callback: ``callback(epoch, params, metrics) -> bool | None`` after each epoch (host
        side); returning ``True`` stops training.
      mesh: a ``jax.sharding.Mesh`` from ``jaxcalc.parallel.make_mesh(N)``: data-parallel
        training, each step's batch split across the N devices, params, optimizer state and
        data replicated; the gradient all-reduce is inserted by XLA. ``None`` (or a 1-device
        mesh): unchanged. ``batch_size`` (the whole data for ``"batch"``) must be a multiple
        of N; an epoch's smaller last batch that does not split evenly runs whole on every device.

    Returns:
      ``(params, history)``. ``history`` holds numpy arrays ``loss`` and ``grad_norm``
      (shape ``(epochs_run,)``: the example-weighted mean over the epoch's steps of the loss
      of the batch each step saw, at the parameters before that step; for ``"batch"`` the
      full-data loss at the epoch's start), optional ``step_loss``, ``step_grad_norm``,
      ``noise_scale``, and ``status`` (``"completed"``, ``"diverged"``, ``"converged"``),
      ``stop_epoch``, ``stop_step``, ``epochs_run``, ``steps_per_epoch``, ``last_finite_loss``.

    Raises:
      ValueError: bad data (different leading lengths, empty, non-finite values) or options.
      jaxcalc.DivergenceError: on non-finite loss/gradient/parameters with ``on_divergence="raise"``.
    """
    plan = _check_common(method, epochs, batch_size, key, history_every, on_divergence,
                         clip_norm, noise_multiplier, drop_last, data, log_noise_scale)
    key = jax.random.key(0) if key is None else key
    _check_mesh(plan, mesh)
    if mesh is not None:
        params, data, key = parallel.replicate((params, data, key), mesh)
    loop = _Loop(loss_fn, plan, _ConstOpt(optimizer), grad_tol, clip_norm, float(noise_multiplier),
                 bool(log_noise_scale), history_every == "step", bool(full_loss), mesh)
    if not progress and callback is None:
        state, recs = _compiled(loop, "run")(params, data, key, None, int(epochs))
        return _finish(state, recs, plan, epochs, on_divergence)

    epoch_fn = _compiled(loop, "epoch")
    state = _compiled(loop, "init")(params, data, None)
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(epochs), desc=f"fit ({method})", leave=False)
    try:
        for e in range(int(epochs)):
            state, rec = epoch_fn(state, jnp.int32(e), data, key, None)
            rows.append(rec)
            loss_now = float(rec["loss"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_now:.4g}")
            stop = int(state.status) != RUNNING
            if callback is not None and not stop:
                metrics = {k: float(v) for k, v in rec.items() if not k.startswith("step_")}
                if callback(e, state.params, metrics):
                    break
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    recs = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
    return _finish(state, recs, plan, epochs, on_divergence)


def sweep(loss_fn: Callable, params, data, *, make_optimizer: Callable | None = None,
          learning_rates: Sequence[float] | None = None,
          optimizer: optax.GradientTransformation | None = None,
          seeds: Sequence[int] | None = None, key=None, method: str = "batch", epochs: int,
          batch_size: int | None = None, history_every: str = "epoch",
          grad_tol: float | None = None, clip_norm: float | None = None,
          noise_multiplier: float = 0.0, log_noise_scale: bool = False, drop_last: bool = False,
          full_loss: bool = False):
    """Train N copies in one compiled program (``jax.vmap`` over learning rates and/or seeds).

    Copy ``i`` equals ``fit(..., optimizer=make_optimizer(learning_rates[i]),
    key=jax.random.key(seeds[i]))`` (or ``key=key`` without seeds). The learning rate is a
    traced array, so a new grid does not recompile when its length is unchanged.

    Args:
      make_optimizer: ``lr -> GradientTransformation``, called with a traced scalar; needed
        with ``learning_rates``. Without learning rates pass ``optimizer`` instead.
      learning_rates: ``(N,)`` learning rates.
      seeds: ``(N,)`` ints; copy ``i`` uses ``jax.random.key(seeds[i])`` for its data order.
        When both are given they are paired (same length, or one of them of length 1).
      Other arguments: as :func:`fit`; divergence never raises here.

    Returns:
      ``(params, history)``: every params leaf gains a leading axis ``N``; history arrays have
      shape ``(N, epochs)`` (``nan`` after a copy stopped), plus ``status`` ``(N,)`` strings,
      ``stop_epoch``/``stop_step`` ``(N,)`` (-1 when the copy ran to the end), and
      ``learning_rates``/``seeds`` as given.
    """
    if learning_rates is None and seeds is None:
        raise ValueError("sweep needs learning_rates and/or seeds")
    if learning_rates is not None:
        if make_optimizer is None:
            raise ValueError("learning_rates needs make_optimizer (lr -> GradientTransformation)")
        lrs = np.asarray(learning_rates, dtype=np.float32 if not jax.config.jax_enable_x64 else np.float64)
        if lrs.ndim != 1 or lrs.size == 0:
            raise ValueError(f"learning_rates must be a non-empty 1-D sequence, got shape {lrs.shape}")
        make_opt = make_optimizer
    else:
        if optimizer is None:
            raise ValueError("a seeds-only sweep needs optimizer=")
        lrs = None
        make_opt = _ConstOpt(optimizer)
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds must be non-empty")
        keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
    plan = _check_common(method, epochs, batch_size, key if seeds is None else 0, history_every,
                         "return", clip_norm, noise_multiplier, drop_last, data, log_noise_scale)
    sizes = {len(x) for x in (lrs, seeds) if x is not None}
    n_copies = max(sizes)
    if len(sizes - {1}) > 1:
        raise ValueError(f"learning_rates ({len(lrs)}) and seeds ({len(seeds)}) must pair up")
    if lrs is not None and len(lrs) != n_copies:
        lrs = np.repeat(lrs, n_copies)
    if seeds is not None and len(seeds) != n_copies:
        keys = jnp.repeat(keys, n_copies, axis=0)
    loop = _Loop(loss_fn, plan, make_opt, grad_tol, clip_norm, float(noise_multiplier),
                 bool(log_noise_scale), history_every == "step", bool(full_loss))

    key_arg = keys if seeds is not None else (jax.random.key(0) if key is None else key)
    program = _compiled_sweep(loop, int(epochs), seeds is not None, lrs is not None)
    state, recs = program(params, data, key_arg, None if lrs is None else jnp.asarray(lrs))
    hist = {k: (np.asarray(v).reshape(n_copies, -1)) for k, v in recs.items()}
    status = np.asarray(state.status)
    event = np.asarray(state.event_step)
    hist["status"] = np.array([_STATUS_NAMES[int(s)] for s in status])
    hist["stop_epoch"] = np.where(status != RUNNING, event // plan.steps_per_epoch, -1)
    hist["stop_step"] = np.where(status != RUNNING, event % plan.steps_per_epoch, -1)
    hist["last_finite_loss"] = np.asarray(state.last_finite_loss)
    hist["steps_per_epoch"] = plan.steps_per_epoch
    if lrs is not None:
        hist["learning_rates"] = np.asarray(lrs)
    if seeds is not None:
        hist["seeds"] = np.asarray(seeds if len(seeds) == n_copies else seeds * n_copies)
    return state.params, hist


def lr_find(loss_fn: Callable, params, data, *, optimizer_fn: Callable, min_lr: float = 1e-7,
            max_lr: float = 10.0, steps: int = 100, key, batch_size: int | None = None,
            smoothing: float = 0.98, diverge_factor: float = 4.0) -> dict:
    """Learning-rate range test: one update per step while the rate grows exponentially.

    Step ``t`` uses ``lr_t = min_lr · (max_lr/min_lr)^(t/(steps−1))`` and records the loss
    of its batch (all data, or ``batch_size`` examples drawn without replacement with
    ``fold_in(key, t)``) at the parameters before the update. The curve is smoothed by an
    exponential moving average with bias correction,
    ``s_t = EMA_t / (1 − smoothing^(t+1))``; the test stops (parameters frozen in the scan)
    once ``s_t > diverge_factor · min(s)`` or the loss is non-finite.

    ``optimizer_fn(lr)`` is called with a traced scalar on every step (the optimizer state
    carries across steps; its structure must not depend on the lr value, true for optax's
    and jaxcalc.optim's optimizers).

    Returns:
      dict with numpy arrays ``lrs``, ``losses``, ``smoothed`` (up to and including the stop
      step), ints ``stopped_step`` (-1: ran to ``max_lr``), and the suggestions:
      ``suggested_lr``, the lr where the smoothed loss falls fastest against log lr
      (the minimum of ``d s / d log lr`` over the steps before the smoothed minimum), and
      ``lr_min_over_10``, the lr of the smoothed minimum divided by 10 (the older rule).
    """
    n = _leading_length(data)
    steps = _check_int(steps, "steps", 3)
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if batch_size is not None and not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")

    def run(params, data, key):
        opt0 = optimizer_fn(min_lr)
        first = data if batch_size is None else _take(data, jnp.arange(batch_size))
        dtype = jax.eval_shape(loss_fn, params, first).dtype
        log_ratio = math.log(max_lr / min_lr)

        def body(carry, t):
            params, opt_state, ema, best, stopped, stop_at = carry
            lr = (min_lr * jnp.exp(log_ratio * t / (steps - 1))).astype(dtype)
            batch = data if batch_size is None else _take(
                data, jax.random.choice(jax.random.fold_in(key, t), n, (batch_size,), replace=False))
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, new_opt = optimizer_fn(lr).update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            new_ema = smoothing * ema + (1 - smoothing) * loss
            smooth = new_ema / (1 - smoothing ** (t + 1).astype(dtype))
            bad = ~jnp.isfinite(smooth) | (smooth > diverge_factor * best) | ~_all_finite(new_params)
            live = ~stopped
            keep = live & ~bad
            carry = (_tree_where(keep, new_params, params), _tree_where(keep, new_opt, opt_state),
                     jnp.where(live, new_ema, ema), jnp.where(keep, jnp.minimum(best, smooth), best),
                     stopped | bad, jnp.where(live & bad, t, stop_at))
            return carry, (lr, loss, smooth)

        carry0 = (params, opt0.init(params), jnp.zeros((), dtype), jnp.array(jnp.inf, dtype),
                  jnp.array(False), jnp.array(-1, jnp.int32))
        carry, recs = jax.lax.scan(body, carry0, jnp.arange(steps, dtype=jnp.int32))
        return carry[-1], recs

    stop_at, (lrs, losses, smoothed) = jax.jit(run)(params, data, key)
    stop_at = int(stop_at)
    end = steps if stop_at < 0 else stop_at + 1
    lrs, losses, smoothed = (np.asarray(a, np.float64)[:end] for a in (lrs, losses, smoothed))
    finite = np.isfinite(smoothed)
    i_min = int(np.nanargmin(np.where(finite, smoothed, np.inf)))
    lr_min_over_10 = float(lrs[i_min] / 10)
    if i_min >= 2:
        slope = np.gradient(smoothed[: i_min + 1], np.log(lrs[: i_min + 1]))
        suggested = float(lrs[int(np.argmin(slope))])
    else:
        suggested = lr_min_over_10
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "stopped_step": stop_at,
            "suggested_lr": suggested, "lr_min_over_10": lr_min_over_10}
