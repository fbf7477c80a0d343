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

**How a large batch is read** (:mod:`jaxcalc.batchstep`; both rewrites are decided from the jaxpr
of ``loss_fn`` when the run compiles, so warm calls pay nothing for them):

* ``layout="auto"``: on CPU, for ``method="batch"``, a data leaf ``(n, d)`` (small ``d``) that the
  loss only multiplies by a vector (``x @ w``) is stored feature-major, ``(d, n)``, once per run,
  and the products are issued on it: XLA's CPU matrix-vector code is several times faster on that
  layout. Exact for any loss (the same sums, another memory order).
* ``chunked="auto"``: where the jaxpr proves the loss is a mean over examples
  (:func:`jaxcalc.batchstep.prove_mean_over_examples`), the step's gradient is the sum of its
  chunks' gradients weighted ``|chunk|/|batch|`` (gradient accumulation; exact for such losses up
  to float rounding), in two forms measured faster on CPU: for ``method="batch"`` on data of
  several MB, the data is cut once per run into chunks of about 1.5 L2 caches, each its own buffer,
  so each chunk is read for the forward product and again, still in cache, for the gradient.
  ``chunked=True`` asks for chunks wherever it is provable (mini-batches then run as a scan over
  L2-sized chunks inside the step, which "auto" does not choose: measured slower on a quiet
  machine); ``False`` never. A loss that is not provably a mean keeps the whole-batch step.

**Value checks**: the run is compiled with :func:`jaxcalc.checks.checkify_fn`, so a loss that calls
:func:`jaxcalc.checks.check_entries` (every loss in :mod:`jaxcalc.losses` does for its labels)
raises the same ``ValueError`` as an eager call, naming the first bad example's index *in the
data* and its value, instead of training on (or diverging from) bad labels.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcalc import batchstep, checks, parallel
from jaxcalc._validate import check_finite_tree
from jaxcalc.errors import DivergenceError

__all__ = ["fit", "lr_find", "sweep"]

RUNNING, DIVERGED, CONVERGED = 0, 1, 2
_STATUS_NAMES = {RUNNING: "completed", DIVERGED: "diverged", CONVERGED: "converged"}
_METHODS = ("batch", "sgd", "minibatch")
# what was non-finite at the divergence step
CAUSE_LOSS, CAUSE_GRAD, CAUSE_PARAMS = 1, 2, 3
# "batch" data of at least two such chunks is cut into chunks of about this many L2 caches, at most
# SPLIT_MAX_CHUNKS of them (each adds a copy of the loss to the compiled step)
SPLIT_CHUNK_L2 = 1.5
SPLIT_MAX_CHUNKS = 16


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
    return n


_LENGTHS: dict = {}  # (treedef, leaf shapes) -> n, for data that passed _leading_length
_FINITE: dict[int, weakref.ref] = {}  # id(jax.Array) -> weakref, arrays found finite


def _forget(ref, key):
    if _FINITE.get(key) is ref:
        del _FINITE[key]


def _validate_data(data) -> int:
    """``n`` of ``data`` (see :func:`_leading_length`), raising on NaN/inf in it.

    Cheap on repeated calls: the shape check is remembered per (structure, shapes), and each
    ``jax.Array`` is read for NaN/inf once in its life: jax arrays are immutable, so one found
    finite is remembered by identity until it is freed. numpy arrays can change in place between
    calls and are read on every call."""
    leaves, treedef = jax.tree_util.tree_flatten(data)
    key = [treedef]
    fresh = []
    shaped = True
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        shaped = shaped and shape is not None
        key.append(shape)
        if isinstance(leaf, jax.core.Tracer):
            continue
        if isinstance(leaf, jax.Array):
            ref = _FINITE.get(id(leaf))
            if ref is not None and ref() is leaf:
                continue
            fresh.append(leaf)  # remembered below once read (integer arrays need no read)
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                continue
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            _leading_length(data)  # a structure error first, as before
            check_finite_tree(data, "data")  # names the leaf and the count
    key = tuple(key)
    n = _LENGTHS.get(key) if shaped else None
    if n is None:
        n = _leading_length(data)
        if shaped:
            if len(_LENGTHS) > 256:
                _LENGTHS.clear()
            _LENGTHS[key] = n
    for leaf in fresh:
        _FINITE[id(leaf)] = weakref.ref(leaf, functools.partial(_forget, key=id(leaf)))
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
    ``event_step``: global step index where the status changed (-1: never); ``cause``: what was
    non-finite at a divergence (1 the loss, 2 its gradient, 3 the updated parameters; 0 none)."""

    params: Any
    opt_state: Any
    status: jax.Array
    event_step: jax.Array
    last_finite_loss: jax.Array
    cause: jax.Array


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
class _How:
    """How the steps of one compiled run read the data (decided at trace time from the jaxpr).

    ``loss``: the loss the steps differentiate (``loss_fn``, or its feature-major rewrite);
    ``fold``: per data leaf, stored transposed (``None``: no leaf is); ``chunks``: batch size ->
    examples per chunk for gradient accumulation inside the step (absent: whole batch);
    ``split``: for ``method="batch"``, the sizes of the chunks the data is cut into once per run
    (each its own buffer), with ``split_losses[size]`` the loss on a stored chunk of that size."""

    loss: Callable
    fold: tuple | None
    chunks: dict
    split: tuple | None = None
    split_losses: Any = None

    def data(self, data):
        """``data`` as the steps read it: folded leaves transposed, then cut into ``split``."""
        leaves, treedef = jax.tree.flatten(data)
        fold = self.fold or (False,) * len(leaves)
        leaves = [x.T if f else x for x, f in zip(leaves, fold, strict=True)]
        if self.split is None:
            return jax.tree.unflatten(treedef, leaves)
        pieces, start = [], 0
        for size in self.split:
            pieces.append(jax.tree.unflatten(treedef, [
                x[:, start:start + size] if f else x[start:start + size] for x, f in zip(leaves, fold, strict=True)]))
            start += size
        return tuple(pieces)

    def value_and_grad(self, params, batch):
        """``(loss, grads)`` of a step on ``batch`` (stored as :meth:`data` makes it)."""
        if self.split is not None:  # size-weighted sum over the stored chunks (a mean over examples)
            n = sum(self.split)
            total = None
            for size, piece in zip(self.split, batch, strict=True):
                lg = jax.value_and_grad(self.split_losses[size])(params, piece)
                lg = jax.tree.map(lambda v, w=size / n: v * w, lg)
                total = lg if total is None else jax.tree.map(jnp.add, total, lg)
            return total
        chunk = self.chunks.get(_leading_size(batch))
        if chunk:
            return batchstep.chunked_value_and_grad(self.loss, params, batch, chunk)
        return jax.value_and_grad(self.loss)(params, batch)

    def full_loss(self, params, data):
        if self.split is None:
            return self.loss(params, data)
        n = sum(self.split)
        return sum(self.split_losses[size](params, piece) * (size / n)
                   for size, piece in zip(self.split, data, strict=True))


def _nice_chunk(size: int, target: int) -> int:
    """A chunk near ``target`` (at most it, at least half of it) that divides ``size`` if one does:
    then the batch splits into chunks by a reshape, without copying a remainder out."""
    for c in range(min(target, size), max(target // 2, 1) - 1, -1):
        if size % c == 0:
            return c
    return target




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
    chunked: Any = "auto"  # True | False | "auto"
    chunk_size: int | None = None
    layout: str = "auto"  # "auto" | "as_given"

    # how the data is read -------------------------------------------------------
    def _chunk_for(self, params, data, size: int):
        """Examples per chunk for a step on ``size`` examples, or ``None`` (whole batch)."""
        # Only on request: "auto" never scans over chunks inside the step. On a quiet 2-core EPYC
        # the scan lost to the whole batch where its intermediates are largest (MLP 64-256-10 on
        # 16,384 examples: 0.70x; bench_descent.py part d), it won only under load from other jobs.
        if self.chunked is not True or size < 4:
            return None
        data_bytes = sum(math.prod(np.shape(x)[1:]) * jnp.result_type(x).itemsize for x in jax.tree.leaves(data))
        batch = batchstep.abstract_batch(data, size)
        probe = batchstep.prove_mean_over_examples(self.loss_fn, params, batch, max(2, size // 3))
        if not probe.ok:
            warnings.warn(f"chunked=True: the loss is not provably a mean over examples ({probe.reason}); "
                          "using the whole-batch step", stacklevel=4)
            return None
        chunk = self.chunk_size
        if chunk is None:
            l2, _ = batchstep.cpu_cache_bytes()
            chunk = _nice_chunk(size, max(8, int(l2 // max(probe.example_bytes + data_bytes, 1.0))))
        if chunk * 2 > size:
            return None
        rem = size % chunk
        for other in {chunk, rem} - {0, 1, size}:  # the sizes the chunked step traces the loss at
            proof = batchstep.prove_mean_over_examples(self.loss_fn, params, batch, other)
            if not proof.ok:
                return None
        return chunk

    def _split_for(self, params, data):
        """Sizes of the chunks to cut the data into once per run (``method="batch"``), or ``None``.

        Each chunk is its own buffer and the step sums the chunks' gradients in a Python-unrolled
        loop: XLA then reads a chunk for the forward product and again for the gradient while it
        is still in cache, without the copy a scan's slice makes. Measured faster on CPU for data
        of several MB (linear GD, n=100k d=16: about 1.3x) with chunks of about SPLIT_CHUNK_L2 L2
        caches; only for losses proven to be means over examples."""
        plan = self.plan
        if plan.method != "batch" or self.chunked is False:
            return None
        if self.chunked == "auto" and jax.default_backend() != "cpu":
            return None
        n = plan.n
        per_example = sum(math.prod(np.shape(x)[1:]) * jnp.result_type(x).itemsize for x in jax.tree.leaves(data))
        if self.chunk_size is not None:
            size = self.chunk_size
        else:
            target = SPLIT_CHUNK_L2 * batchstep.cpu_cache_bytes()[0]
            if self.chunked == "auto" and n * per_example < 2 * target:
                return None
            k = max(1, math.ceil(n * per_example / target))
            size = math.ceil(n / k)
        if not 2 <= math.ceil(n / size) <= SPLIT_MAX_CHUNKS:
            return None
        sizes = (size,) * (n // size) + ((n % size,) if n % size else ())
        for other in set(sizes):
            if other < 2:
                continue
            proof = batchstep.prove_mean_over_examples(self.loss_fn, params, data, other)
            if not proof.ok:
                if self.chunked is True:
                    warnings.warn(f"chunked=True: the loss is not provably a mean over examples ({proof.reason}); "
                                  "using the whole-batch step", stacklevel=4)
                return None
        return sizes

    def prepare(self, params, data, allow_fold: bool) -> _How:
        """Decide, from the jaxpr of the loss, how this run's steps read the data (see _How).

        ``allow_fold``: the run is long enough (and its data resident) to pay for re-laying the
        data out once (transposed leaves, chunks cut apart)."""
        plan = self.plan
        if self.clip_norm is not None or self.log_noise_scale or self.mesh is not None:
            return _How(self.loss_fn, None, {})  # per-example or sharded gradients: the plain step only
        sizes = {plan.batch_size} | ({plan.rem} if plan.rem else set())
        split = self._split_for(params, data) if allow_fold else None  # batch data cut once per run
        chunks = {}
        if split is None:
            for size in sizes:  # chunks inside the step (chunked=True only)
                c = self._chunk_for(params, data, size)
                if c:
                    chunks[size] = c
        fold = None
        if (allow_fold and self.layout == "auto" and not chunks and plan.method == "batch"
                and jax.default_backend() == "cpu"):
            fold = batchstep.foldable_leaves(self.loss_fn, params, data)
            fold = fold if any(fold) else None
        if split is not None:
            losses = {}
            for size in set(split):
                piece = batchstep.abstract_batch(data, size)
                losses[size] = (batchstep.fold_layout(self.loss_fn, params, piece, fold) if fold
                                else self.loss_fn)
            return _How(self.loss_fn, fold, {}, split, losses)
        if fold is not None:
            return _How(batchstep.fold_layout(self.loss_fn, params, data, fold), fold, chunks)
        return _How(self.loss_fn, None, chunks)

    # one update ---------------------------------------------------------------
    def _grad(self, params, batch, key, how: _How):
        """``(loss, grads, (trace_sigma, grad_sq_norm))``; the noise parts are nan unless
        ``log_noise_scale`` (and the batch has >= 2 examples)."""
        nan = jnp.array(jnp.nan, jnp.result_type(float))
        noise_parts = (nan, nan)
        if self.clip_norm is None and not self.log_noise_scale:
            loss, grads = how.value_and_grad(params, batch)
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

    def step(self, state: TrainState, batch, gstep, key, opt, how: _How):
        if self.mesh is not None and _leading_size(batch) % self.mesh.size == 0:
            # split this step's batch across the devices; XLA all-reduces the gradients. (The
            # epoch's smaller last batch, when it does not split evenly, runs whole on every device.)
            batch = parallel.constrain_batch(batch, self.mesh)
        active = state.status == RUNNING
        loss, grads, noise = self._grad(state.params, batch, key, how)
        gnorm = optax.tree.norm(grads)
        updates, new_opt = opt.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        loss_ok, grad_ok = jnp.isfinite(loss), jnp.isfinite(gnorm)
        finite = loss_ok & grad_ok & _all_finite(new_params)
        cause = jnp.where(~loss_ok, CAUSE_LOSS, jnp.where(~grad_ok, CAUSE_GRAD, CAUSE_PARAMS))
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
            cause=jnp.where(active & ~finite, cause, state.cause).astype(jnp.int32),
        )
        return new_state, (loss, gnorm, noise, active)

    # one epoch ----------------------------------------------------------------
    def epoch(self, state: TrainState, epoch_idx, data, key, hparam, how: _How | None = None):
        """One epoch on ``data`` (as ``how.data`` stores it: transposed leaves stay transposed)."""
        plan = self.plan
        if how is None:
            how = self.prepare(state.params, data, allow_fold=False)
        opt = self.make_opt(hparam)
        base = (epoch_idx * plan.steps_per_epoch).astype(jnp.int32)
        if plan.method == "batch":  # without noise, no randomness: no key derivation
            k_noise = (None if self.noise_multiplier == 0
                       else jax.random.split(jax.random.fold_in(key, epoch_idx))[1])
            state, rec = self.step(state, data, base, k_noise, opt, how)
            recs = jax.tree.map(lambda r: r[None], rec)
            sizes = jnp.full((1,), plan.n)
        else:
            k_perm, k_noise = jax.random.split(jax.random.fold_in(key, epoch_idx))
            perm = jax.random.permutation(k_perm, plan.n)
            full = perm[: plan.full_steps * plan.batch_size].reshape(plan.full_steps, plan.batch_size)

            def body(st, xs):
                i, idx = xs
                return self.step(st, _take(data, idx), base + i, jax.random.fold_in(k_noise, i), opt, how)

            state, recs = jax.lax.scan(body, state, (jnp.arange(plan.full_steps, dtype=jnp.int32), full))
            sizes = jnp.full((plan.full_steps,), plan.batch_size)
            if plan.rem:
                idx = perm[plan.full_steps * plan.batch_size:]
                state, rec = self.step(state, _take(data, idx), base + plan.full_steps,
                                       jax.random.fold_in(k_noise, plan.full_steps), opt, how)
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
            out["full_loss"] = how.full_loss(state.params, data)
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
                          jnp.array(-1, jnp.int32), jnp.array(jnp.nan, loss_dtype), jnp.array(0, jnp.int32))

    def run(self, params, data, key, hparam, epochs: int):
        state = self.init(params, data, hparam)
        # re-laying the data out costs about one pass: worth it from a few steps on
        how = self.prepare(params, data, allow_fold=epochs * self.plan.steps_per_epoch >= 3)
        data = how.data(data)
        return jax.lax.scan(lambda st, e: self.epoch(st, e, data, key, hparam, how), state,
                            jnp.arange(epochs, dtype=jnp.int32))


# --------------------------------------------------------------------------- host side


def _record_names(loop: _Loop) -> tuple[str, ...]:
    """The per-epoch records of a run, in the order :func:`_pack` stores them."""
    names = ["loss", "grad_norm"]
    if loop.log_noise_scale:
        names.append("noise_scale")
    if loop.full_loss:
        names.append("full_loss")
    if loop.record_steps:
        names += ["step_loss", "step_grad_norm"]
    return tuple(names)


def _pack(loop: _Loop, state: TrainState, recs: dict):
    """``(meta, floats)``: status, event step and cause as int32 ``(3,)``; every record, then the
    last finite loss, in one float vector, so the host reads two small arrays per run."""
    names = _record_names(loop)
    dtype = jnp.result_type(*[recs[k] for k in names], state.last_finite_loss)
    floats = jnp.concatenate([recs[k].astype(dtype).reshape(-1) for k in names]
                             + [state.last_finite_loss.astype(dtype).reshape(1)])
    return jnp.stack([state.status, state.event_step, state.cause]), floats


def _slices(loop: _Loop, epochs: int) -> tuple:
    """``(name, start, stop)`` of each record in :func:`_pack`'s float vector."""
    out, pos = [], 0
    steps = loop.plan.steps_per_epoch
    for name in _record_names(loop):
        size = epochs * steps if name.startswith("step_") else epochs
        out.append((name, pos, pos + size))
        pos += size
    return tuple(out)


def _unpack(slices: tuple, floats: np.ndarray) -> tuple[dict, float]:
    """The numpy history and last finite loss from :func:`_pack`'s float vector."""
    return {name: floats[a:b] for name, a, b in slices}, float(floats[-1])


def _divergence_message(hist: dict, cause: int) -> str:
    where = f"training diverged at epoch {hist['stop_epoch']}, step {hist['stop_step']}"
    if hist["stop_epoch"] == 0 and hist["stop_step"] == 0 and cause in (CAUSE_LOSS, CAUSE_GRAD):
        what = "loss" if cause == CAUSE_LOSS else "gradient of the loss"
        return (f"{where}: the {what} is already non-finite at the initial parameters, before any "
                f"update, so the learning rate is not the cause. Check the data (labels in range, "
                f"targets valid for the loss), the loss function and the initial parameters.")
    what = {CAUSE_LOSS: "a non-finite loss", CAUSE_GRAD: "a non-finite gradient",
            CAUSE_PARAMS: "non-finite parameters after the update"}.get(cause, "a non-finite value")
    return (f"{where} ({what}); last finite loss {hist['last_finite_loss']:.6g}. Try a smaller "
            f"learning rate; the last finite parameters are on this error's .last_finite_params.")


def _finish(params, meta, last_finite_loss: float, hist: dict, plan: _Plan, on_divergence: str):
    """Complete the history (numpy records) from the run's status; raises DivergenceError if asked."""
    status, event, cause = meta.tolist()
    hist["status"] = _STATUS_NAMES[status]
    hist["steps_per_epoch"] = plan.steps_per_epoch
    hist["stop_epoch"] = None
    hist["stop_step"] = None
    if status != RUNNING:
        epoch, step = divmod(event, plan.steps_per_epoch)
        keep_epochs, keep_steps = epoch + 1, event + 1
        for k in list(hist):
            if isinstance(hist[k], np.ndarray):
                hist[k] = hist[k][: keep_steps if k.startswith("step_") else keep_epochs]
        hist["stop_epoch"], hist["stop_step"] = epoch, step
    hist["epochs_run"] = len(hist["loss"])
    hist["last_finite_loss"] = last_finite_loss
    if status == DIVERGED and on_divergence == "raise":
        raise DivergenceError(
            _divergence_message(hist, cause), epoch=hist["stop_epoch"], step=hist["stop_step"],
            last_finite_loss=hist["last_finite_loss"], last_finite_params=params, history=hist)
    return params, hist


# ---------------------------------------------------------------- value checks from the run

_INDEX = re.compile(r"^(\w[\w.]*)\[(\d+)")


def _has_checks(err) -> bool:
    """Does a checkified program's error value carry any check? (Fixed per program.)"""
    return bool(jax.tree_util.tree_flatten(err)[0])


@functools.lru_cache(maxsize=8)
def _checked_loss(loss_fn):
    return jax.jit(checks.checkify_fn(loss_fn))


def _locate(loss_fn, params, data, n: int, size: int) -> str | None:
    """The first failing value check of ``loss_fn`` on the data in its own order, in slices of
    ``size`` examples, with the index shifted to count in the whole data (error path only)."""
    checked = _checked_loss(loss_fn)
    for start in range(0, n, size):
        chunk = jax.tree.map(lambda x, s=start: x[s: s + size], data)
        err, _ = checked(params, chunk)
        try:
            checks.raise_if_failed(err)
        except ValueError as exc:
            msg = str(exc)
            return _INDEX.sub(lambda m, s=start: f"{m.group(1)}[{int(m.group(2)) + s}", msg, count=1)
    return None


def _raise_checks(err, loss_fn, params, data, n: int, size: int) -> None:
    """Raise the ValueError of a failed value check reported by a checkified run.

    The run saw the data shuffled or in chunks, so the loss is re-run (on this error path only)
    on the data in its own order, in slices of ``size``, to name the example's index in ``data``;
    if that finds nothing (a check that depends on the parameters), the run's own message."""
    if err.get() is None:  # (callers call this only for programs with checks: _has_checks)
        return
    try:
        msg = _locate(loss_fn, params, data, n, size)
    except Exception:  # a loss that refuses other batch sizes: report the run's own message
        msg = None
    if msg is not None:
        raise ValueError(msg) from None
    try:
        checks.raise_if_failed(err)
    except ValueError as exc:
        raise ValueError(re.sub(r"^at mapped index [\d, ]+: ", "", str(exc))) from None


@dataclasses.dataclass(frozen=True)
class _ConstOpt:
    """``make_opt`` for a fixed optimizer; hashable, so repeated ``fit`` calls with the same
    optimizer object reuse the compiled program."""

    optimizer: Any

    def __call__(self, _):
        return self.optimizer


@functools.lru_cache(maxsize=32)
def _compiled(loop: _Loop, what: str, epochs: int = 0):
    if what == "run":
        def program(params, data, key):
            state, recs = loop.run(params, data, key, None, epochs)
            return state.params, *_pack(loop, state, recs)

        return jax.jit(checks.checkify_fn(program))
    if what == "epoch":
        return jax.jit(checks.checkify_fn(loop.epoch))
    return jax.jit(loop.init)


@functools.lru_cache(maxsize=32)
def _compiled_sweep(loop: _Loop, epochs: int, by_seed: bool, by_lr: bool):
    """One jitted, vmapped program per (loop, epochs, axes): a new learning-rate grid of the
    same length, or new seeds, reuse it without recompiling."""
    def one(params, data, key, hparam):
        key = jax.random.wrap_key_data(key) if by_seed else key
        return loop.run(params, data, key, hparam, epochs)

    return jax.jit(checks.checkify_fn(jax.vmap(one, in_axes=(None, None, 0 if by_seed else None,
                                                             0 if by_lr else None))))


def _check_common(method, epochs, batch_size, key, history_every, on_divergence, clip_norm,
                  noise_multiplier, drop_last, data, log_noise_scale=False, chunked="auto",
                  chunk_size=None, layout="auto", n=None):
    n = _leading_length(data) if n is None else n
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
    if chunked not in (True, False, "auto"):
        raise ValueError(f"chunked must be True, False or 'auto', got {chunked!r}")
    if chunk_size is not None:
        _check_int(chunk_size, "chunk_size", 1)
    if layout not in ("auto", "as_given"):
        raise ValueError(f"layout must be 'auto' or 'as_given', got {layout!r}")
    return plan


def _check_mesh(plan: _Plan, mesh) -> None:
    """The (full) batches must split evenly over the mesh's devices."""
    if mesh is not None and plan.batch_size % mesh.size:
        what = "the whole data set" if plan.method == "batch" else f"batch_size={plan.batch_size}"
        raise ValueError(
            f"method={plan.method!r} makes batches of {plan.batch_size} examples ({what}), not "
            f"divisible by the {mesh.size} devices of the mesh: use method='minibatch' with a "
            f"batch_size that is a multiple of {mesh.size}")


@functools.cache
def _default_key():
    return jax.random.key(0)


# (options of a fit call) -> (plan, loop, program): a warm call skips validation of its options
_FIT_CACHE: dict = {}


def fit(loss_fn: Callable, params, data, *, optimizer: optax.GradientTransformation,
        method: str = "batch", epochs: int, batch_size: int | None = None, key=None,
        history_every: str = "epoch", grad_tol: float | None = None,
        on_divergence: str = "raise", clip_norm: float | None = None,
        noise_multiplier: float = 0.0, log_noise_scale: bool = False, drop_last: bool = False,
        full_loss: bool = False, progress: bool = False, callback: Callable | None = None,
        mesh=None, chunked: bool | str = "auto", chunk_size: int | None = None, layout: str = "auto"):
    """Train ``params`` by (batch / stochastic / mini-batch) gradient descent.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; ``batch`` has the structure of ``data``
        with a leading axis of the step's batch size (1 for ``"sgd"``).
      params: pytree of float arrays.
      data: pytree of arrays sharing a leading example axis ``(n, ...)``. Checked for NaN/inf
        once per ``jax.Array`` (immutable, so remembered by identity) and on every call for numpy
        arrays (which can change in place).
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
      chunked: gradient accumulation over chunks of each step's batch, used only where the
        loss's jaxpr proves it is a mean over examples
        (:func:`jaxcalc.batchstep.prove_mean_over_examples`; see the module docstring):
        ``"auto"`` where it was measured faster, on CPU: ``method="batch"`` data of at least
        2 × ``SPLIT_CHUNK_L2`` L2 caches (cut once per run into at most ``SPLIT_MAX_CHUNKS``
        chunks); ``True`` wherever provable (for ``method="batch"`` the data cut once per run,
        for mini-batches a scan over L2-sized chunks inside the step; a warning and the
        whole-batch step where not provable); ``False`` never. Not with ``clip_norm``, ``log_noise_scale`` or ``mesh``.
      chunk_size: examples per chunk; default: from the CPU's L2 cache size and the bytes per
        example (of the data, and of the loss's intermediate values).
      layout: ``"auto"`` stores ``(n, d)`` data leaves that the loss only multiplies by vectors
        feature-major on CPU for ``method="batch"`` (see the module docstring); ``"as_given"``
        never re-lays the data out.

    Returns:
      ``(params, history)``. ``history`` holds numpy arrays ``loss`` and ``grad_norm``
      (shape ``(epochs_run,)``: the example-weighted mean over the epoch's steps of the loss
      of the batch each step saw, at the parameters before that step; for ``"batch"`` the
      full-data loss at the epoch's start), optional ``step_loss``, ``step_grad_norm``,
      ``noise_scale``, and ``status`` (``"completed"``, ``"diverged"``, ``"converged"``),
      ``stop_epoch``, ``stop_step``, ``epochs_run``, ``steps_per_epoch``, ``last_finite_loss``.

    Raises:
      ValueError: bad data (different leading lengths, empty, non-finite values) or options; a
        failed value check of the loss (``jaxcalc.checks``, e.g. a label out of range), naming
        the first bad example's index in ``data`` and its value.
      jaxcalc.DivergenceError: on non-finite loss/gradient/parameters with
        ``on_divergence="raise"``; when the loss is non-finite from the first step on, the
        message says the cause is the data or the loss, not the learning rate.
    """
    n = _validate_data(data)
    per_epoch = progress or callback is not None
    cache_key = (loss_fn, optimizer, method, n, epochs, batch_size, key is None, history_every, grad_tol,
                 on_divergence, clip_norm, noise_multiplier, log_noise_scale, drop_last, full_loss, mesh,
                 chunked, chunk_size, layout, per_epoch)
    try:
        entry = _FIT_CACHE.get(cache_key)
    except TypeError:  # an unhashable option: no cache
        cache_key, entry = None, None
    if entry is None:
        plan = _check_common(method, epochs, batch_size, key, history_every, on_divergence, clip_norm,
                             noise_multiplier, drop_last, data, log_noise_scale, chunked, chunk_size,
                             layout, n=n)
        _check_mesh(plan, mesh)
        loop = _Loop(loss_fn, plan, _ConstOpt(optimizer), grad_tol, clip_norm, float(noise_multiplier),
                     bool(log_noise_scale), history_every == "step", bool(full_loss), mesh, chunked,
                     chunk_size, layout)
        entry = [plan, loop, None if per_epoch else _compiled(loop, "run", int(epochs)), None,
                 _slices(loop, int(epochs))]
        if cache_key is not None:
            if len(_FIT_CACHE) > 64:
                _FIT_CACHE.clear()
            _FIT_CACHE[cache_key] = entry
    plan, loop, program, with_checks, slices = entry
    if key is None:
        key = _default_key()
    if mesh is not None:
        params, data, key = parallel.replicate((params, data, key), mesh)
    if program is not None:
        err, (p_out, meta, floats) = program(params, data, key)
        meta = np.asarray(meta)
        if with_checks is None:
            with_checks = entry[3] = _has_checks(err)
        if with_checks:
            _raise_checks(err, loss_fn, params, data, n, _check_slice(plan))
        hist, lfl = _unpack(slices, np.asarray(floats))
        return _finish(p_out, meta, lfl, hist, plan, on_divergence)
    return _fit_per_epoch(loop, plan, params, data, key, epochs, progress, callback, on_divergence)


def _check_slice(plan: _Plan) -> int:
    """Examples per call when the loss is re-run on the data in order to name a bad example."""
    return plan.batch_size if plan.method != "sgd" else min(plan.n, 1024)


def _fit_per_epoch(loop, plan, params, data, key, epochs, progress, callback, on_divergence):
    """``fit`` with a host round trip per epoch (progress bar or callback)."""
    epoch_fn = _compiled(loop, "epoch")
    state = _compiled(loop, "init")(params, data, None)
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(epochs), desc=f"fit ({plan.method})", leave=False)
    try:
        for e in range(int(epochs)):
            err, (state, rec) = epoch_fn(state, jnp.int32(e), data, key, None)
            if _has_checks(err):
                _raise_checks(err, loop.loss_fn, params, data, plan.n, _check_slice(plan))
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
    hist = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
    for k in ("step_loss", "step_grad_norm"):
        if k in hist:
            hist[k] = hist[k].reshape(-1)
    meta = np.asarray(jnp.stack([state.status, state.event_step, state.cause]))
    return _finish(state.params, meta, float(state.last_finite_loss), hist, plan, on_divergence)


def sweep(loss_fn: Callable, params, data, *, make_optimizer: Callable | None = None,
          learning_rates: Sequence[float] | None = None,
          optimizer: optax.GradientTransformation | None = None,
          seeds: Sequence[int] | None = None, key=None, method: str = "batch", epochs: int,
          batch_size: int | None = None, history_every: str = "epoch",
          grad_tol: float | None = None, clip_norm: float | None = None,
          noise_multiplier: float = 0.0, log_noise_scale: bool = False, drop_last: bool = False,
          full_loss: bool = False, chunked: bool | str = "auto", chunk_size: int | None = None,
          layout: str = "auto"):
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
      Other arguments: as :func:`fit`; divergence never raises here, a failed value check of the
        loss (a label out of range) raises ``ValueError`` as in :func:`fit`.

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
                         "return", clip_norm, noise_multiplier, drop_last, data, log_noise_scale,
                         chunked, chunk_size, layout, n=_validate_data(data))
    sizes = {len(x) for x in (lrs, seeds) if x is not None}
    n_copies = max(sizes)
    if len(sizes - {1}) > 1:
        raise ValueError(f"learning_rates ({len(lrs)}) and seeds ({len(seeds)}) must pair up")
    if lrs is not None and len(lrs) != n_copies:
        lrs = np.repeat(lrs, n_copies)
    if seeds is not None and len(seeds) != n_copies:
        keys = jnp.repeat(keys, n_copies, axis=0)
    loop = _Loop(loss_fn, plan, make_opt, grad_tol, clip_norm, float(noise_multiplier),
                 bool(log_noise_scale), history_every == "step", bool(full_loss), None, chunked,
                 chunk_size, layout)

    key_arg = keys if seeds is not None else (_default_key() if key is None else key)
    program = _compiled_sweep(loop, int(epochs), seeds is not None, lrs is not None)
    err, (state, recs) = program(params, data, key_arg, None if lrs is None else jnp.asarray(lrs))
    if _has_checks(err):
        _raise_checks(err, loss_fn, params, data, plan.n, _check_slice(plan))
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

    A failed value check of the loss (``jaxcalc.checks``, e.g. a label out of range) raises
    ``ValueError`` naming the example, as in :func:`fit`.

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
    n = _validate_data(data)
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

    err, (stop_at, (lrs, losses, smoothed)) = jax.jit(checks.checkify_fn(run))(params, data, key)
    if _has_checks(err):
        _raise_checks(err, loss_fn, params, data, n, batch_size or n)
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
