"""How a large-batch gradient step reads its data: feature-major layout and chunked accumulation.

Two rewrites of ``jax.value_and_grad(loss_fn)(params, batch)`` that :func:`jaxcalc.train.fit`
applies on its own when they are exact and measured faster; both work on the jaxpr of the user's
``loss_fn(params, batch)``, so they hold for any loss written that way, not for a list of known ones.

**Feature-major layout** (:func:`foldable_leaves`, :func:`fold_layout`). XLA's CPU code for a
skinny product ``X @ w`` with ``X`` of shape ``(n, d)`` row-major and small ``d`` is slow; the same
product on ``X`` stored feature-major, ``Xᵀ`` of shape ``(d, n)``, runs at memory speed, for the
forward product and for the gradient's ``Xᵀ r``. A data leaf whose every use in the loss is such a
matrix-vector product (or a transpose ``X.T``) is stored transposed once, and each ``dot_general``
on it is re-issued on the stored array with its contracting dimension renumbered: the same sums of
the same products, only the memory order differs, so it is exact for *any* loss.

**Chunked accumulation** (:func:`prove_mean_over_examples`, :func:`chunked_value_and_grad`). For a
loss that is a mean over examples, ``L(B) = (1/|B|) Σ_{i∈B} f(x_i; θ) + g(θ)``, the gradient of
the whole batch is the size-weighted sum of the gradients of its chunks,
``∇L(B) = Σ_j (|B_j|/|B|) ∇L(B_j)`` (gradient accumulation), which keeps each chunk (its data
between the forward product and the gradient's, its intermediate values) in cache. That identity
is false for other losses (a median, a batch normalisation, a loss that uses the batch size), so
it is used only where the jaxpr *proves* the form above (see :func:`prove_mean_over_examples`);
everything else keeps the whole-batch step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

__all__ = ["MeanProof", "chunked_value_and_grad", "cpu_cache_bytes", "fold_layout", "foldable_leaves",
           "prove_mean_over_examples"]

# primitives that call a sub-jaxpr with the same inputs, in order (inlined by the analyses)
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "remat": "jaxpr", "checkpoint": "jaxpr", "custom_jvp_call": "call_jaxpr",
          "custom_vjp_call": "call_jaxpr"}

# widest feature dimension where the feature-major product was measured faster (bench_descent)
FOLD_MAX_FEATURES = 64


def _sub(eqn):
    """The ``(jaxpr, consts)`` an eqn of :data:`_CALLS` calls, or ``None``."""
    key = _CALLS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    sub = eqn.params[key]
    if isinstance(sub, jcore.ClosedJaxpr):
        return sub.jaxpr, sub.consts
    return sub, ()


def _is_var(v) -> bool:
    return not isinstance(v, jcore.Literal)


# --------------------------------------------------------------------------- feature-major layout


def _fold_ok(jaxpr, var) -> bool:
    """True if every use of ``var`` (shape (n, d)) is a matrix-vector ``dot_general`` contracting
    its feature axis, or ``transpose(1, 0)``, looking through inlined calls (but not into custom
    derivative rules, whose backward pass could use ``var`` another way)."""
    if any(v is var for v in jaxpr.outvars):
        return False
    for eqn in jaxpr.eqns:
        for pos, v in enumerate(eqn.invars):
            if v is not var:
                continue
            name = eqn.primitive.name
            if name == "dot_general":
                if len(eqn.invars) != 2 or eqn.invars[1 - pos] is var:
                    return False
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                mine, mine_b = (lc, lb) if pos == 0 else (rc, rb)
                other_c = rc if pos == 0 else lc
                if tuple(mine) != (1,) or tuple(mine_b):
                    return False
                other = eqn.invars[1 - pos].aval.shape
                if math.prod(s for i, s in enumerate(other) if i not in other_c) != 1:
                    return False  # a matrix-matrix product: XLA's GEMM handles either layout
            elif name == "transpose":
                if tuple(eqn.params["permutation"]) != (1, 0):
                    return False
            elif name in ("jit", "pjit", "closed_call", "core_call"):
                sub = _sub(eqn)
                if sub is None or not _fold_ok(sub[0], sub[0].invars[pos]):
                    return False
            else:
                return False
    return True


def foldable_leaves(loss_fn, params, batch) -> tuple[bool, ...]:
    """Per leaf of ``batch``: store it feature-major? True for float leaves of shape ``(n, d)``,
    ``d <= FOLD_MAX_FEATURES`` and ``n >= 4 d``, used by ``loss_fn`` only in matrix-vector
    products over ``d`` (or transposed). Works on abstract values (no data is read)."""
    closed = jax.make_jaxpr(loss_fn)(params, batch)
    leaves = jax.tree.leaves(batch)
    first = len(jax.tree.leaves(params))
    out = []
    for i, leaf in enumerate(leaves):
        shape, dtype = np.shape(leaf), jnp.result_type(leaf)
        ok = (len(shape) == 2 and jnp.issubdtype(dtype, jnp.floating) and shape[1] <= FOLD_MAX_FEATURES
              and shape[0] >= 4 * shape[1] and shape[1] > 1)
        out.append(bool(ok and _fold_ok(closed.jaxpr, closed.jaxpr.invars[first + i])))
    return tuple(out)


class _FeatureMajor:
    """A value ``x`` held as ``t = x.T`` (shape ``(d, n)``, row-major)."""

    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t


def _bind(eqn, invals, params=None):
    params = eqn.params if params is None else params
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
    return out if eqn.primitive.multiple_results else [out]


def _eval_folded(jaxpr, consts, args):
    """``jax.core.eval_jaxpr`` where some arguments are :class:`_FeatureMajor`: their products
    are issued on the stored transpose (contracting axis 1 of ``x`` is axis 0 of ``t``; with one
    free axis on each side the output order is unchanged)."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, a in zip(jaxpr.constvars, consts, strict=True):
        env[v] = a
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if not any(isinstance(a, _FeatureMajor) for a in invals):
            outs = _bind(eqn, invals)
        elif eqn.primitive.name == "dot_general":
            (lc, rc), batch_dims = eqn.params["dimension_numbers"]
            if isinstance(invals[0], _FeatureMajor):
                lc, invals = (0,), [invals[0].t, invals[1]]
            else:
                rc, invals = (0,), [invals[0], invals[1].t]
            outs = _bind(eqn, invals, dict(eqn.params, dimension_numbers=((tuple(lc), tuple(rc)), batch_dims)))
        elif eqn.primitive.name == "transpose":
            outs = [invals[0].t]
        else:  # an inlined call (checked by _fold_ok)
            sub, sub_consts = _sub(eqn)
            outs = _eval_folded(sub, sub_consts, invals)
        for v, a in zip(eqn.outvars, outs, strict=True):
            env[v] = a
    return [read(v) for v in jaxpr.outvars]


def fold_layout(loss_fn, params, batch, fold):
    """``loss_t(params, batch_t)`` equal to ``loss_fn(params, batch)`` where each leaf ``i`` with
    ``fold[i]`` arrives transposed (``(d, n)``). ``params``/``batch``: example values or
    ``jax.ShapeDtypeStruct`` s of the shapes the returned function will be called with."""
    closed, out_shape = jax.make_jaxpr(loss_fn, return_shape=True)(params, batch)
    out_tree = jax.tree.structure(out_shape)

    def loss_t(p, b_t):
        args = [*jax.tree.leaves(p)]
        args += [_FeatureMajor(x) if f else x for x, f in zip(jax.tree.leaves(b_t), fold, strict=True)]
        return jax.tree.unflatten(out_tree, _eval_folded(closed.jaxpr, closed.consts, args))

    return loss_t


# --------------------------------------------------------------------------- mean over examples


class _Reject(Exception):
    """The jaxpr does not prove the mean-over-examples form."""


@dataclasses.dataclass(frozen=True)
class _U:
    """Independent of the batch; constant along ``const`` axes (a broadcast)."""

    const: frozenset = frozenset()


@dataclasses.dataclass(frozen=True)
class _B:
    """Batched along ``axis``: the slice at index ``i`` depends on example ``i`` alone."""

    axis: int


@dataclasses.dataclass(frozen=True)
class _S:
    """``scale · Σ_i f_i + g(θ)`` (a linear function of a sum over examples); ``scale`` is the
    product of the literal factors applied to the sum, in (trace 1, trace 2)."""

    scale: tuple


_U0 = _U()

_ELEMENTWISE = frozenset((
    "add", "sub", "mul", "div", "rem", "pow", "max", "min", "neg", "sign", "floor", "ceil", "round", "is_finite",
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan",
    "atan2", "sinh", "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt", "integer_pow", "square", "abs",
    "select_n", "convert_element_type", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor",
    "stop_gradient", "erf", "erfc", "erf_inv", "lgamma", "digamma", "clamp", "nextafter", "copy", "copy_p", "real",
    "imag", "conj", "reduce_precision", "add_any", "logaddexp",
))
_BATCH_SAFE_REDUCE = frozenset(("reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
                                "argmin"))


def _broadcast_const(state, shape, out_shape) -> frozenset:
    """Axes along which an elementwise operand of ``shape`` is constant once broadcast to ``out_shape``."""
    if len(shape) == 0:
        return frozenset(range(len(out_shape)))
    return frozenset(state.const) | {ax for ax, d in enumerate(shape) if d == 1 and out_shape[ax] != 1}


def _literal(v):
    """The Python value of a scalar literal, else None."""
    if isinstance(v, jcore.Literal) and np.ndim(v.val) == 0:
        return float(np.asarray(v.val))
    return None


class _Prover:
    """Abstract interpretation of two traces of one loss (batch sizes n1 != n2) in lock-step."""

    def __init__(self, n1, n2):
        self.n = (n1, n2)
        self.example_bytes = 0.0  # bytes of batched intermediates per example (trace 1)

    def state(self, env, v):
        if isinstance(v, jcore.Literal):
            return _U0
        return env[v]

    def run(self, j1, j2, consts, in_states):
        if len(j1.eqns) != len(j2.eqns) or len(j1.invars) != len(j2.invars):
            raise _Reject("the loss traces differently at two batch sizes")
        env = {}
        for v1, (c1, c2) in zip(j1.constvars, consts, strict=True):
            a1, a2 = np.asarray(c1), np.asarray(c2)
            if a1.shape != a2.shape or not np.array_equal(a1, a2, equal_nan=a1.dtype.kind in "fc"):
                raise _Reject("a constant of the loss depends on the batch size")
            env[v1] = _U0
        for v, s in zip(j1.invars, in_states, strict=True):
            env[v] = s
        needed = self._needed(j1)
        for e1, e2 in zip(j1.eqns, j2.eqns, strict=True):
            if e1.primitive is not e2.primitive or len(e1.invars) != len(e2.invars):
                raise _Reject("the loss traces differently at two batch sizes")
            if not any(v in needed for v in e1.outvars if _is_var(v)):
                continue  # feeds only checks or effects, not the loss value
            ins = [self.state(env, v) for v in e1.invars]
            outs = self.eqn(e1, e2, ins)
            for v1, v2, s in zip(e1.outvars, e2.outvars, outs, strict=True):
                self._check_shapes(v1.aval.shape, v2.aval.shape, s)
                if isinstance(s, _B):
                    self.example_bytes += float(np.prod(v1.aval.shape)) / self.n[0] * v1.aval.dtype.itemsize
                env[v1] = s
        return [self.state(env, v) for v in j1.outvars]

    @staticmethod
    def _needed(jaxpr):
        need = {v for v in jaxpr.outvars if _is_var(v)}
        for eqn in reversed(jaxpr.eqns):
            if any(v in need for v in eqn.outvars):
                need.update(v for v in eqn.invars if _is_var(v))
        return need

    def _check_shapes(self, s1, s2, state):
        if len(s1) != len(s2):
            raise _Reject("rank depends on the batch size")
        allowed = {state.axis} if isinstance(state, _B) else (state.const if isinstance(state, _U) else set())
        for ax, (a, b) in enumerate(zip(s1, s2, strict=True)):
            if a != b and ax not in allowed:
                raise _Reject("a shape depends on the batch size outside the batch axis")
        if isinstance(state, _B) and (s1[state.axis], s2[state.axis]) != self.n:
            raise _Reject("the batch axis changed size")

    # one equation -------------------------------------------------------------
    def eqn(self, e1, e2, ins):
        name = e1.primitive.name
        p = e1.params
        shapes = [np.shape(v.aval) if hasattr(v, "aval") else () for v in e1.invars]
        lits = [(_literal(a), _literal(b)) for a, b in zip(e1.invars, e2.invars, strict=True)]
        for l1, l2 in lits:
            if (l1 is None) != (l2 is None):
                raise _Reject("literals differ between the traces")
            same = l1 == l2 or (l1 is not None and math.isnan(l1) and math.isnan(l2))
            if not same and not (name in ("mul", "div") and any(isinstance(s, _S) for s in ins)):
                raise _Reject(f"a literal depends on the batch size ({l1} vs {l2})")
        if name in _CALLS:
            s1, s2 = _sub(e1), _sub(e2)
            if s1 is None or s2 is None:
                raise _Reject(f"{name} without a sub-jaxpr")
            return self.run(s1[0], s2[0], list(zip(s1[1], s2[1], strict=True)), ins)
        kinds = {type(s) for s in ins}
        if kinds <= {_U}:
            return [self._unbatched(name, p, ins, shapes, e1) for _ in e1.outvars]
        if _S in kinds:
            return [self._linear(name, p, ins, lits, shapes)]
        return [self._batched(name, p, ins, shapes, e1)]

    def _unbatched(self, name, p, ins, shapes, e1):
        out_shape = e1.outvars[0].aval.shape
        if name == "broadcast_in_dim":
            bd = tuple(p["broadcast_dimensions"])
            const = {d for d in range(len(out_shape)) if d not in bd}
            const |= {bd[i] for i, s in enumerate(shapes[0]) if s == 1 and out_shape[bd[i]] != 1}
            const |= {bd[i] for i in ins[0].const}
            return _U(frozenset(const))
        if name in _ELEMENTWISE and ins:
            consts = [_broadcast_const(s, shp, out_shape) for s, shp in zip(ins, shapes, strict=True)]
            return _U(frozenset.intersection(*consts))
        return _U0

    def _linear(self, name, p, ins, lits, shapes):
        """Ops on a sum over examples that stay linear in it."""
        sums = [s for s in ins if isinstance(s, _S)]
        if any(isinstance(s, _B) for s in ins):
            raise _Reject("a sum over examples is combined with per-example values")
        if name in ("add", "sub", "add_any"):
            if len({s.scale for s in sums}) != 1:
                raise _Reject("sums over examples with different scales are added")
            return sums[0]
        if name in ("neg", "convert_element_type", "reduce_sum", "squeeze", "reshape", "broadcast_in_dim",
                    "transpose", "copy", "copy_p"):
            return sums[0]
        if name == "mul" and len(sums) == 1:
            other = 1 - ins.index(sums[0])
            lit = lits[other]
            if lit[0] is not None:
                return _S((sums[0].scale[0] * lit[0], sums[0].scale[1] * lit[1]))
            return sums[0]  # times a parameter-only value
        if name == "div" and len(sums) == 1 and isinstance(ins[0], _S):
            lit = lits[1]
            if lit[0] is not None:
                if lit[0] == 0 or lit[1] == 0:
                    raise _Reject("division by zero")
                return _S((sums[0].scale[0] / lit[0], sums[0].scale[1] / lit[1]))
            return sums[0]
        if name == "dot_general" and len(sums) == 1:
            return sums[0]
        raise _Reject(f"{name} is not linear in a sum over examples")

    def _batched(self, name, p, ins, shapes, e1):
        out_rank = len(e1.outvars[0].aval.shape) if e1.outvars else 0
        bats = [(i, s.axis) for i, s in enumerate(ins) if isinstance(s, _B)]
        if name in _ELEMENTWISE:
            axes = {a for _, a in bats}
            if len(axes) != 1:
                raise _Reject(f"{name} mixes batch axes")
            (k,) = axes
            for s, shp in zip(ins, shapes, strict=True):
                if isinstance(s, _U) and len(shp) and not (shp[k] == 1 or k in s.const):
                    raise _Reject(f"{name} combines examples with a value that varies along the batch axis")
            return _B(k)
        (i0, k), *rest = bats
        if name == "broadcast_in_dim":
            return _B(tuple(p["broadcast_dimensions"])[k])
        if name == "squeeze":
            dims = tuple(p["dimensions"])
            if k in dims:
                raise _Reject("squeeze of the batch axis")
            return _B(k - sum(d < k for d in dims))
        if name == "reshape":
            old, new = shapes[0], tuple(p["new_sizes"])
            if p.get("dimensions") is None and old[: k + 1] == new[: k + 1]:
                return _B(k)
            raise _Reject("reshape across the batch axis")
        if name == "transpose":
            return _B(tuple(p["permutation"]).index(k))
        if name == "reduce_sum":
            axes = tuple(p["axes"])
            if k in axes:
                return _S((1.0, 1.0))
            return _B(k - sum(a < k for a in axes))
        if name in _BATCH_SAFE_REDUCE:
            axes = tuple(p["axes"])
            if k in axes:
                raise _Reject(f"{name} over the batch axis")
            return _B(k - sum(a < k for a in axes))
        if name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"):
            if p["axis"] == k:
                raise _Reject(f"{name} along the batch axis")
            return _B(k)
        if name == "dot_general":
            return self._dot(p, ins, shapes)
        if name == "conv_general_dilated":
            lhs_spec, _, out_spec = p["dimension_numbers"]
            if bats == [(0, lhs_spec[0])] and p["batch_group_count"] == 1:
                return _B(out_spec[0])
            raise _Reject("convolution across examples")
        if name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min"):
            if (p["window_dimensions"][k] == 1 and p["window_strides"][k] == 1
                    and tuple(p["padding"][k]) == (0, 0) and p["base_dilation"][k] == 1
                    and p["window_dilation"][k] == 1):
                return _B(k)
            raise _Reject("a window across examples")
        if name == "pad":
            if i0 == 0 and not rest and tuple(p["padding_config"][k]) == (0, 0, 0):
                return _B(k)
            raise _Reject("padding along the batch axis")
        if name == "slice":
            if (i0 == 0 and p["start_indices"][k] == 0 and p["limit_indices"][k] == shapes[0][k]
                    and (p["strides"] is None or p["strides"][k] == 1)):
                return _B(k)
            raise _Reject("slice along the batch axis")
        if name == "concatenate":
            if {a for _, a in bats} == {k} and p["dimension"] != k and len(bats) == len(ins):
                return _B(k)
            raise _Reject("concatenate along or across the batch axis")
        if name == "gather":
            return self._gather(p, ins, shapes, out_rank)
        raise _Reject(f"{name} is not known to act example by example")

    def _dot(self, p, ins, shapes):
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        nb = len(lb)
        lfree = [d for d in range(len(shapes[0])) if d not in lc and d not in lb]
        rfree = [d for d in range(len(shapes[1])) if d not in rc and d not in rb]
        a, b = ins
        if isinstance(a, _B) and isinstance(b, _B):
            if a.axis in lb and b.axis in rb and list(lb).index(a.axis) == list(rb).index(b.axis):
                return _B(list(lb).index(a.axis))
            raise _Reject("a product across examples")
        if isinstance(a, _B):
            if a.axis in lfree:
                return _B(nb + lfree.index(a.axis))
            raise _Reject("a contraction over the batch axis")
        if b.axis in rfree:
            return _B(nb + len(lfree) + rfree.index(b.axis))
        raise _Reject("a contraction over the batch axis")

    def _gather(self, p, ins, shapes, out_rank):
        dn = p["dimension_numbers"]
        op, idx = ins
        batch_out = [d for d in range(out_rank) if d not in dn.offset_dims]
        if isinstance(idx, _B):
            if idx.axis == len(shapes[1]) - 1:
                raise _Reject("gather along the index vector")
            if isinstance(op, _B):
                if (op.axis not in dn.operand_batching_dims or idx.axis not in dn.start_indices_batching_dims
                        or list(dn.operand_batching_dims).index(op.axis)
                        != list(dn.start_indices_batching_dims).index(idx.axis)):
                    raise _Reject("gather across examples")
            elif dn.operand_batching_dims:
                raise _Reject("gather with batching dims from an unbatched operand")
            return _B(batch_out[idx.axis])
        k = op.axis
        if (k in dn.collapsed_slice_dims or k in dn.start_index_map or k in dn.operand_batching_dims
                or p["slice_sizes"][k] != shapes[0][k]):
            raise _Reject("gather along the batch axis")
        offset_operand = [d for d in range(len(shapes[0]))
                          if d not in dn.collapsed_slice_dims and d not in dn.operand_batching_dims]
        return _B(dn.offset_dims[offset_operand.index(k)])


def abstract_batch(batch, size: int):
    """``batch``'s structure with every leaf's leading size replaced by ``size`` (shapes only)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((size, *np.shape(x)[1:]), jnp.result_type(x)), batch)


@dataclasses.dataclass(frozen=True)
class MeanProof:
    """Result of :func:`prove_mean_over_examples`."""

    ok: bool
    reason: str
    example_bytes: float = 0.0  # batched intermediate bytes per example (forward pass)


def prove_mean_over_examples(loss_fn, params, batch, other_size: int) -> MeanProof:
    """Does the jaxpr prove ``loss_fn(θ, B) = (c/|B|) Σ_{i∈B} f(x_i; θ) + g(θ)``?

    The loss is traced at the batch's size ``n`` and at ``other_size`` and both traces are
    interpreted abstractly, in lock-step. Every data leaf starts "batched along axis 0"; each
    equation must keep example ``i``'s values apart from the others' (elementwise ops, broadcasts,
    reductions and products over other axes, per-example gathers, convolutions over the batch
    dimension, calls and custom-derivative calls into such code), until one sum over the batch
    axis, after which only linear operations follow (scaling by literals or parameter-only values,
    adding parameter-only terms). The literal scale of that sum times the batch size must be the
    same at both sizes (a mean, ``1/n``, not a sum or ``1/n²``); every other literal, constant and
    unbatched shape must be the same in both traces (the batch size enters nowhere else), and the
    two traces must have the same equations (no Python branch on the batch size). Equations that
    feed only value checks (``jaxcalc.checks``) or other effects are skipped: they do not change
    the loss and still run on every chunk.

    What it cannot see: a custom JVP/VJP rule (``jax.custom_jvp``/``custom_vjp``) is trusted to
    act example by example when its forward function does (all of jax.nn's and jaxcalc's do).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params, batch: arrays or ``jax.ShapeDtypeStruct`` s; every batch leaf has leading size ``n``.
      other_size: a second batch size, ``>= 2`` and ``!= n``.

    Returns:
      :class:`MeanProof` with ``ok``, the ``reason`` when not, and the per-example bytes of the
      batched intermediate values.
    """
    leaves = jax.tree.leaves(batch)
    n = int(np.shape(leaves[0])[0])
    if other_size < 2 or other_size == n:
        raise ValueError(f"other_size must be >= 2 and differ from n={n}, got {other_size}")
    small = abstract_batch(batch, other_size)
    try:
        c1 = jax.make_jaxpr(loss_fn)(params, batch)
        c2 = jax.make_jaxpr(loss_fn)(params, small)
    except Exception as err:  # a loss that does not trace at another size is not provable
        return MeanProof(False, f"the loss does not trace at batch size {other_size}: {type(err).__name__}")
    n_params = len(jax.tree.leaves(params))
    prover = _Prover(n, other_size)
    states = [_U0] * n_params + [_B(0)] * len(leaves)
    try:
        (out,) = prover.run(c1.jaxpr, c2.jaxpr, list(zip(c1.consts, c2.consts, strict=True)), states)
    except _Reject as err:
        return MeanProof(False, str(err))
    except (ValueError, TypeError) as err:  # a shape of the two traces that cannot be paired
        return MeanProof(False, f"the two traces cannot be paired ({err})")
    if np.shape(c1.jaxpr.outvars[0].aval) != ():
        return MeanProof(False, "the loss is not a scalar")
    if isinstance(out, _U):
        return MeanProof(True, "the loss does not depend on the batch", prover.example_bytes)
    if not isinstance(out, _S):
        return MeanProof(False, "the loss is not reduced over the examples")
    s1, s2 = out.scale
    if not math.isclose(s1 * n, s2 * other_size, rel_tol=1e-6):
        return MeanProof(False, f"the sum over examples is scaled by {s1:.6g} at n={n} (not c/n)")
    return MeanProof(True, "", prover.example_bytes)


# --------------------------------------------------------------------------- chunked step


def chunked_value_and_grad(loss_fn, params, batch, chunk: int):
    """``jax.value_and_grad(loss_fn)(params, batch)`` as a size-weighted sum over chunks.

    Exact (up to float rounding) for a loss that is a mean over examples (see
    :func:`prove_mean_over_examples`): the ``n // chunk`` full chunks run as one ``lax.scan``,
    accumulating ``(chunk/n) · (L, ∇L)``; a smaller last chunk of ``n % chunk`` examples is added
    with weight ``(n % chunk)/n``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: pytree.
      batch: pytree of arrays with leading size ``n``.
      chunk: examples per chunk, ``1 <= chunk <= n``.

    Returns:
      ``(loss, grads)`` as ``jax.value_and_grad`` would.
    """
    n = int(np.shape(jax.tree.leaves(batch)[0])[0])
    full, rem = divmod(n, chunk)
    vg = jax.value_and_grad(loss_fn)
    body_in = jax.tree.map(lambda x: x[: full * chunk].reshape(full, chunk, *x.shape[1:]), batch)

    def body(acc, b):
        loss, g = vg(params, b)
        return jax.tree.map(lambda a, v: a + v * (chunk / n), acc, (loss, g)), None

    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        jax.eval_shape(vg, params, jax.tree.map(lambda x: x[0], body_in)))
    acc, _ = jax.lax.scan(body, zero, body_in)
    if rem:
        loss, g = vg(params, jax.tree.map(lambda x: x[full * chunk:], batch))
        acc = jax.tree.map(lambda a, v: a + v * (rem / n), acc, (loss, g))
    return acc


@functools.cache
def cpu_cache_bytes() -> tuple[int, int]:
    """``(L2 bytes per core, last-level cache bytes)`` from sysfs; ``(1 MiB, 32 MiB)`` if unknown."""
    sizes = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            path = os.path.join(base, entry)
            with open(os.path.join(path, "level")) as f:
                level = int(f.read())
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(path, "size")) as f:
                text = f.read().strip()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
            sizes[level] = int(text.rstrip("KMG")) * mult
    except (OSError, ValueError):
        pass
    return sizes.get(2, 2**20), sizes.get(max(sizes), 32 * 2**20) if sizes else 32 * 2**20
