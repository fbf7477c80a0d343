"""Gradient checking: autodiff against central finite differences, leaf by leaf, in float64.

``check_grads(f, *args)`` differentiates ``f`` with respect to ``args[argnums]`` (arrays or any
pytree: dicts, lists of ``(W, b)``, flax NNX ``State``) in forward mode (JVP) and reverse mode
(VJP), compares with central differences, and returns a :class:`GradCheckReport` with the worst
relative error per pytree leaf and per mode. On failure it raises
:class:`jaxcalc.GradientCheckError` whose message names the leaf path, the worst coordinate, the
autodiff value and the finite-difference value.

Why float64: central differences in float32 are only good to ``eps^(2/3) ≈ 4e-5``, so a gradient
0.1% wrong can pass. Every check therefore runs inside ``jax.enable_x64(True)`` with float inputs
cast up to float64, whatever their dtype.

Relative error, per compared entry ``a`` (autodiff) and ``b`` (finite difference)::

    err = |a − b| / max(|a|, |b|, atol / rtol)        passes iff err <= rtol

i.e. cs231n's ``|a − b| / max(|a|, |b|)`` with a floor so that two tiny numbers (both round-off)
are not compared relatively. Defaults: ``rtol = 1e-6`` (smooth functions in float64 reach
1e-9 .. 1e-11 here, so 1% or even 1e-4 errors fail loudly) and ``atol = 1e-9·max(1, |f(x)|)``
(the round-off of the differences scales with ``|f|``).

The whole check (``f(x)``, the finite differences, the JVPs and VJPs) is one compiled program,
cached per function and argument structure: checking the same ``f`` again on same-shaped inputs
(e.g. in a property-based test) does not recompile. Array arguments are traced; non-array ones
(Python ints, strings) are static.

Kinks: central differences straddle a kink and average the one-sided slopes. At exactly
``x = 0`` ReLU's central difference is ``(h − 0) / 2h = 0.5`` while ``jax.grad`` returns 0, so a
check through a ReLU pre-activation that is exactly 0 (or within ``h`` of 0) fails; that is a
property of the function, not a bug. Check such models at points away from kinks, or with a
looser ``rtol`` (≈1e-4 where kinks are near).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcalc.derivatives import default_step
from jaxcalc.errors import GradientCheckError

__all__ = ["DEFAULT_RTOL", "FULL_MAX", "GradCheckReport", "LeafResult", "check_grads"]

DEFAULT_RTOL = 1e-6
DEFAULT_ATOL_SCALE = 1e-9
FULL_MAX = 1024  # "auto": every coordinate while inputs and outputs have at most this many entries
DIRECTIONAL_VMAP_MAX = 1 << 22  # directions x coordinates evaluated in one vmap
_MODES = ("fwd", "rev")
_METHODS = ("auto", "full", "directional")


@dataclasses.dataclass(frozen=True)
class LeafResult:
    """The worst compared entry for one pytree leaf, one mode and one derivative order.

    Attributes:
      path: the leaf, e.g. ``params[1][0]`` (argument name + ``jax.tree_util.keystr``).
      mode: ``"fwd"`` (JVP) or ``"rev"`` (VJP).
      order: 1 for first derivatives, 2 for derivatives of the derivative.
      method: ``"full"`` (every coordinate) or ``"directional"`` (random directions).
      rel_error: the worst relative error (see the module docstring).
      index: the worst coordinate in the leaf (``"full"``) or ``(direction,)`` (``"directional"``).
      output_index: the output entry of the worst value when ``f`` has several outputs, else None.
      autodiff, numerical: the two values compared there.
      passed: ``rel_error <= rtol``.
    """

    path: str
    mode: str
    order: int
    method: str
    rel_error: float
    index: tuple
    output_index: tuple | None
    autodiff: float
    numerical: float
    passed: bool


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """All leaf results of one :func:`check_grads` call; ``str(report)`` is a readable table."""

    results: tuple[LeafResult, ...]
    rtol: float
    atol: float
    eps: float | None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def worst(self) -> LeafResult:
        return max(self.results, key=lambda r: r.rel_error)

    @property
    def max_rel_error(self) -> float:
        return self.worst.rel_error

    def rel_errors(self) -> dict[str, dict[str, float]]:
        """``{leaf path: {mode: worst relative error}}`` (order-2 modes read ``"fwd2"``, ``"rev2"``)."""
        out: dict[str, dict[str, float]] = {}
        for r in self.results:
            mode = r.mode if r.order == 1 else f"{r.mode}{r.order}"
            out.setdefault(r.path, {})[mode] = r.rel_error
        return out

    def failures(self) -> list[LeafResult]:
        return [r for r in self.results if not r.passed]

    def __str__(self) -> str:
        head = f"gradient check {'passed' if self.passed else 'FAILED'} (rtol={self.rtol:.1e}, atol={self.atol:.1e})"
        rows = [f"{'leaf':<28} {'mode':<5} {'ord':>3} {'method':<11} {'rel err':>9}  worst at"]
        for r in self.results:
            mark = "" if r.passed else "  <-- FAIL"
            where = _fmt_index(r)
            rows.append(f"{r.path:<28} {r.mode:<5} {r.order:>3} {r.method:<11} {r.rel_error:>9.2e}  {where}{mark}")
        return "\n".join([head, *rows])


def _fmt_index(r: LeafResult) -> str:
    where = f"direction {r.index[0]}" if r.method == "directional" else f"index {r.index}"
    if r.output_index is not None:
        where += f", output {r.output_index}"
    return where


# ----------------------------------------------------------------------------------- helpers


def _is_real_float(leaf) -> bool:
    if isinstance(leaf, float):
        return True
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _to_x64(leaf):
    """Cast float leaves to float64 (complex to complex128); leave integers, keys, others alone."""
    if _is_real_float(leaf):
        return jnp.asarray(leaf, dtype=jnp.float64)
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.asarray(leaf, dtype=jnp.complex128)
    return leaf


def _arg_names(f, nargs: int) -> list[str]:
    names = [f"args[{i}]" for i in range(nargs)]
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return names
    for i, p in enumerate(params[:nargs]):
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names[i] = p.name
        else:
            break
    return names


@dataclasses.dataclass(frozen=True)
class _Segment:
    path: str
    shape: tuple
    start: int
    size: int


def _normalise_argnums(argnums, nargs):
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    if not nums or any(not isinstance(i, int) or isinstance(i, bool) for i in nums):
        raise TypeError(f"argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    nums = tuple(i + nargs if i < 0 else i for i in nums)
    bad = [i for i in nums if not 0 <= i < nargs]
    if bad:
        raise ValueError(f"argnums {argnums!r} out of range for {nargs} positional argument(s)")
    if len(set(nums)) != len(nums):
        raise ValueError(f"argnums {argnums!r} repeats an argument")
    return nums


def _flat_function(f, args, argnums, names):
    """Turn ``f(*args)`` into ``F: R^n -> R^m`` over the float leaves of ``args[argnums]``."""
    diff_tree = tuple(args[i] for i in argnums)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(diff_tree)
    leaves = [leaf for _, leaf in with_path]
    segments, var_positions, start = [], [], 0
    for k, (path, leaf) in enumerate(with_path):
        if not _is_real_float(leaf) or np.size(leaf) == 0:
            continue
        arg_pos = path[0].idx
        name = names[argnums[arg_pos]] + jax.tree_util.keystr(path[1:])
        shape = tuple(np.shape(leaf))
        size = int(np.prod(shape, dtype=int))
        segments.append(_Segment(name, shape, start, size))
        var_positions.append(k)
        start += size
    if not segments:
        which = ", ".join(names[i] for i in argnums)
        raise TypeError(
            f"nothing to differentiate: {which} (argnums={argnums}) hold no floating-point arrays; "
            "integer labels cannot be differentiated, pass the float arguments' positions as argnums"
        )
    x0 = jnp.concatenate([jnp.ravel(jnp.asarray(leaves[k])) for k in var_positions])

    def rebuild(flat):
        new = list(leaves)
        for seg, k in zip(segments, var_positions, strict=True):
            new[k] = flat[seg.start:seg.start + seg.size].reshape(seg.shape)
        diff = jax.tree_util.tree_unflatten(treedef, new)
        full = list(args)
        for j, i in enumerate(argnums):
            full[i] = diff[j]
        return full

    def F(flat):
        out = f(*rebuild(flat))
        out_leaves = jax.tree_util.tree_leaves(out)
        for leaf in out_leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError("f must return floating-point values to differentiate, "
                                f"got dtype {jnp.result_type(leaf)}")
        return ravel_pytree(out)[0]

    return F, x0, segments


def _rel_err(a, b, floor):
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)


def _full_matrices(F, x0, hs, modes):
    """Finite-difference and autodiff Jacobians, each ``(n, m)`` (row i: dF / dx_i)."""
    n = x0.shape[0]
    j_fd = jax.vmap(lambda e, h: (F(x0 + e) - F(x0 - e)) / (2 * h))(jnp.diag(hs), hs)
    out = {}
    if "fwd" in modes:
        out["fwd"] = jax.vmap(lambda e: jax.jvp(F, (x0,), (e,))[1])(jnp.eye(n, dtype=x0.dtype))
    if "rev" in modes:
        y, vjp = jax.vjp(F, x0)
        out["rev"] = jax.vmap(lambda w: vjp(w)[0])(jnp.eye(y.shape[0], dtype=y.dtype)).T
    return j_fd, out


def _full_results(j_fd, j_ad, segments, mode, order, rtol, atol):
    err = _rel_err(j_ad, j_fd, atol / rtol)
    m = err.shape[1]
    results = []
    for seg in segments:
        block = err[seg.start:seg.start + seg.size]
        i, j = np.unravel_index(int(np.argmax(np.nan_to_num(block, nan=np.inf))), block.shape)
        worst = float(block[i, j])
        index = tuple(int(v) for v in np.unravel_index(i, seg.shape)) if seg.shape else ()
        results.append(LeafResult(
            path=seg.path, mode=mode, order=order, method="full", rel_error=worst, index=index,
            output_index=(int(j),) if m > 1 else None,
            autodiff=float(j_ad[seg.start + i, j]), numerical=float(j_fd[seg.start + i, j]),
            passed=bool(worst <= rtol)))
    return results


def _draw_directions(key, count, n, m):
    """Random directions ``(count, n)`` and cotangents ``(count, m)``, drawn with numpy from ``key``
    (outside jit: cheaper to compile than threefry, and the same key gives the same draws)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    return rng.standard_normal((count, n)), rng.standard_normal((count, m))


def _directional_matrices(F, x0, segments, modes, eps, key, k, draws=None):
    """``k`` random unit directions ``u`` per leaf: central differences ``J_fd u``, the JVP ``J u``,
    and for a random cotangent ``w`` the pair ``<u, Jᵀw>`` (VJP) and ``<J_fd u, w>``.

    ``draws = (us, ws)`` evaluates all directions in one vmap; without it (large inputs) each
    direction is drawn from ``key`` inside a scan over batches of 16, so memory stays ``O(16 n)``.
    """
    n = x0.shape[0]
    seg_id = np.zeros(n, np.int32)
    for s, seg in enumerate(segments):
        seg_id[seg.start:seg.start + seg.size] = s
    seg_id = jnp.asarray(seg_id)
    eps64 = float(jnp.finfo(x0.dtype).eps)
    scale = jax.ops.segment_max(jnp.abs(x0), seg_id, num_segments=len(segments))
    steps = jnp.full_like(scale, eps) if eps is not None else eps64 ** (1.0 / 3.0) * jnp.maximum(1.0, scale)
    vjp = jax.vjp(F, x0)[1] if "rev" in modes else None
    m = jax.eval_shape(F, x0).shape[0]

    def one(i, u, w):
        s = i // k
        u = u * (seg_id == s)
        u = u / jnp.linalg.norm(u)
        h = steps[s]
        fd = (F(x0 + h * u) - F(x0 - h * u)) / (2 * h)
        out = {"fd": fd}
        if "fwd" in modes:
            out["fwd"] = jax.jvp(F, (x0,), (u,))[1]
        if "rev" in modes:
            out["rev"] = jnp.vdot(u, vjp(w)[0])[None]
            out["rev_fd"] = jnp.vdot(fd, w)[None]
        return out

    idx = jnp.arange(len(segments) * k)
    if draws is not None:
        return jax.vmap(one)(idx, draws[0].astype(x0.dtype), draws[1].astype(x0.dtype))
    key_u, key_w = jax.random.split(key)

    def drawn(i):
        return one(i, jax.random.normal(jax.random.fold_in(key_u, i), (n,), x0.dtype),
                   jax.random.normal(jax.random.fold_in(key_w, i), (m,), x0.dtype))

    return jax.lax.map(drawn, idx, batch_size=16)


def _directional_results(ad, fd, segments, mode, order, rtol, atol, k):
    err = _rel_err(ad, fd, atol / rtol)
    results = []
    for s, seg in enumerate(segments):
        block = err[s * k:(s + 1) * k]
        d, j = np.unravel_index(int(np.argmax(np.nan_to_num(block, nan=np.inf))), block.shape)
        worst = float(block[d, j])
        results.append(LeafResult(
            path=seg.path, mode=mode, order=order, method="directional", rel_error=worst, index=(int(d),),
            output_index=(int(j),) if block.shape[1] > 1 else None,
            autodiff=float(ad[s * k + d, j]), numerical=float(fd[s * k + d, j]), passed=bool(worst <= rtol)))
    return results


def _is_array_like(leaf) -> bool:
    """Leaves passed to the compiled check as arguments; the rest (ints, strings, ...) are static."""
    return hasattr(leaf, "dtype") or isinstance(leaf, (float, complex))


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one check: the compiled program is cached per plan (and shapes),
    so repeated checks of the same function on same-shaped inputs compile once."""

    f: Callable
    treedef: object
    static: tuple       # (position, value) of the non-array leaves of args
    nargs: int          # number of leaves of args
    argnums: tuple
    modes: tuple
    order: int
    use_full: bool
    eps: float | None
    k: int
    segments: tuple


def _compute_impl(x0, dynamic, hs, extras, draws, *, plan: _Plan):
    """One compiled program: f(x0), and per task the finite-difference and autodiff Jacobians (full)
    or directional derivatives (directional)."""
    leaves, it = [None] * plan.nargs, iter(dynamic)
    static = dict(plan.static)
    for i in range(plan.nargs):
        leaves[i] = static[i] if i in static else next(it)
    args = jax.tree_util.tree_unflatten(plan.treedef, leaves)
    F = _flat_function(plan.f, args, plan.argnums, [f"args[{i}]" for i in range(len(args))])[0]
    tasks = [("order1", F, plan.modes)]
    if plan.order == 2:
        for mode in plan.modes:
            if mode == "fwd":
                fn = lambda x: jax.jvp(F, (x,), (extras["t"],))[1]
            else:
                fn = lambda x: jax.vjp(F, x)[1](extras["w"])[0]
            tasks.append((f"order2_{mode}", fn, (mode,)))
    out = {"y0": F(x0)}
    for name, fn, ms in tasks:
        if plan.use_full:
            out[name] = _full_matrices(fn, x0, hs, ms)
        else:
            out[name] = _directional_matrices(fn, x0, plan.segments, ms, plan.eps, extras["keys"][name], plan.k,
                                              draws.get(name))
    return out


_compute_cached = jax.jit(_compute_impl, static_argnames=("plan",))


def _message(report: GradCheckReport, f) -> str:
    bad = max(report.failures(), key=lambda r: r.rel_error)
    fname = getattr(f, "__name__", None) or type(f).__name__
    kind = "JVP (forward mode)" if bad.mode == "fwd" else "VJP (reverse mode)"
    order = "" if bad.order == 1 else f" of the order-{bad.order} derivative"
    where = _fmt_index(bad)
    return (
        f"gradient check of {fname} failed for {bad.path}{order}: {kind} disagrees with central finite differences "
        f"at {where}: autodiff {bad.autodiff:.10g} vs finite difference {bad.numerical:.10g} "
        f"(relative error {bad.rel_error:.2e} > rtol {report.rtol:.1e}). Kinks (ReLU at exactly 0 gives "
        f"0.5 by central differences, 0 by autodiff) also fail; see jaxcalc.gradcheck.\n{report}"
    )


# ----------------------------------------------------------------------------------- API


def check_grads(
    f: Callable,
    *args,
    argnums: int | Sequence[int] = 0,
    order: int = 1,
    modes: Sequence[str] = ("fwd", "rev"),
    method: str = "auto",
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    key=None,
    num_directions: int = 4,
) -> GradCheckReport:
    """Check ``f``'s autodiff derivatives against central finite differences, in float64.

    Args:
      f: the function, called as ``f(*args)``; returns an array or pytree of floats (often a scalar
        loss).
      *args: its arguments. Float leaves are cast to float64 for the check (inside
        ``jax.enable_x64(True)``); integers (labels), PRNG keys and other leaves pass through as they are.
      argnums: which positional arguments to differentiate (int or tuple of ints). Each may be an
        array or any pytree (dict, list of ``(W, b)``, flax NNX ``State``); its float leaves are the
        variables, other leaves are held fixed.
      order: 1, or 2 to also check the derivative of the derivative (JVP of JVP, VJP of VJP).
      modes: ``("fwd", "rev")`` by default; ``("rev",)`` for ``jax.custom_vjp`` functions, which
        have no forward mode.
      method: ``"full"``: every coordinate (the whole Jacobian, ``2n`` evaluations of ``f``);
        ``"directional"``: ``num_directions`` random unit directions per leaf (forward: the JVP
        against the central difference along ``u``; reverse: ``<u, Jᵀw>`` against ``<J_fd u, w>``
        for a random ``w``); ``"auto"`` (default): ``"full"`` when inputs and outputs have at most
        ``FULL_MAX`` entries, else ``"directional"``.
      eps: finite-difference step; default ``eps64^(1/3)·max(1, |x_i|)`` per coordinate (per leaf
        scale in directional mode).
      rtol: relative tolerance (default ``1e-6``).
      atol: absolute floor (default ``1e-9·max(1, max|f(x)|)``); entries are compared relative to
        ``max(|a|, |b|, atol/rtol)``.
      key: ``jax.random.key`` for the random directions (default ``jax.random.key(0)``).
      num_directions: directions per leaf for ``"directional"``.

    Returns:
      :class:`GradCheckReport`: worst relative error per leaf, mode and order.

    Raises:
      GradientCheckError: when any entry exceeds ``rtol``; the message names the leaf, the
        coordinate, the autodiff value and the finite-difference value; ``.report`` holds the report.
      TypeError: nothing float to differentiate, or forward mode asked of a ``custom_vjp`` function.
      ValueError: bad ``argnums`` / ``order`` / ``modes`` / ``method``, or ``f(*args)`` not finite.

    Example::

        >>> check_grads(jaxcalc.losses.cross_entropy, logits, labels)   # labels stay integers
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes or any(m not in _MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {_MODES}, got {modes!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if rtol is not None and not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol}")
    if atol is not None and not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if not isinstance(num_directions, int) or num_directions < 1:
        raise ValueError(f"num_directions must be a positive int, got {num_directions!r}")
    nums = _normalise_argnums(argnums, len(args))
    names = _arg_names(f, len(args))
    rtol = DEFAULT_RTOL if rtol is None else float(rtol)

    with jax.enable_x64(True):
        args64 = tuple(jax.tree_util.tree_map(_to_x64, a) for a in args)
        key = jax.random.key(0) if key is None else key
        F, x0, segments = _flat_function(f, args64, nums, names)
        try:
            m = int(np.prod(jax.eval_shape(F, x0).shape, dtype=int))
        except TypeError as e:
            raise _custom_vjp_hint(e, modes) from e
        use_full = method == "full" or (method == "auto" and x0.size <= FULL_MAX and m <= FULL_MAX)
        k_tangent, k_cot, k_dirs = jax.random.split(key, 3)
        hs = jnp.full_like(x0, eps) if eps is not None else default_step(x0, "central")
        task_names = ["order1"] + ([f"order2_{mode}" for mode in modes] if order == 2 else [])
        extras = {"keys": {name: jax.random.fold_in(k_dirs, i) for i, name in enumerate(task_names)}}
        if order == 2:  # fixed random tangent t (fwd) / cotangent w (rev) of the order-2 functions
            t = _draw_directions(k_tangent, 1, x0.size, 0)[0][0]
            extras["t"] = jnp.asarray(t / np.linalg.norm(t), x0.dtype)
            extras["w"] = jnp.asarray(np.ones(m) if m == 1 else _draw_directions(k_cot, 1, 0, m)[1][0], x0.dtype)
        draws = {}
        if not use_full:
            count = len(segments) * num_directions
            for name in task_names:
                m_out = x0.size if name == "order2_rev" else m
                if count * (x0.size + m_out) <= DIRECTIONAL_VMAP_MAX:
                    draws[name] = _draw_directions(extras["keys"][name], count, x0.size, m_out)

        leaves, treedef = jax.tree_util.tree_flatten(args64)
        dynamic = [leaf for leaf in leaves if _is_array_like(leaf)]
        static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_array_like(leaf))
        plan = _Plan(f=f, treedef=treedef, static=static, nargs=len(leaves), argnums=nums, modes=modes,
                     order=order, use_full=use_full, eps=eps, k=num_directions, segments=tuple(segments))
        try:
            hash(plan)
            compute = _compute_cached
        except TypeError:  # an unhashable f or non-array argument: compile for this call only
            compute = jax.jit(_compute_impl, static_argnames=("plan",))
        try:
            out = compute(x0, dynamic, hs, extras, draws, plan=plan)
        except TypeError as e:
            raise _custom_vjp_hint(e, modes) from e
        out = jax.tree_util.tree_map(np.asarray, out)

    y0 = out["y0"]
    if not np.all(np.isfinite(y0)):
        raise ValueError("f(*args) is not finite (NaN or inf): there is no gradient to check there")
    atol_used = DEFAULT_ATOL_SCALE * max(1.0, float(np.max(np.abs(y0), initial=0.0))) if atol is None else float(atol)
    floor = max(atol_used, 1e-300)
    results: list[LeafResult] = []
    for mode in modes:
        for ord_ in range(1, order + 1):
            mats = out["order1"] if ord_ == 1 else out[f"order2_{mode}"]
            if use_full:
                j_fd, j_ad = mats
                results += _full_results(j_fd, j_ad[mode], segments, mode, ord_, rtol, floor)
            else:
                ad, fd = (mats["fwd"], mats["fd"]) if mode == "fwd" else (mats["rev"], mats["rev_fd"])
                results += _directional_results(ad, fd, segments, mode, ord_, rtol, floor, num_directions)

    report = GradCheckReport(results=tuple(results), rtol=rtol, atol=atol_used, eps=eps)
    if not report.passed:
        raise GradientCheckError(_message(report, f) + _diagnosis_hint(f, args, nums), report)
    return report


def _diagnosis_hint(f, args, argnums) -> str:
    """The top finding of :func:`jaxcalc.diagnose` (the rule or line to look at), or "" if it has none."""
    try:
        from jaxcalc.diagnosis import diagnose

        top = diagnose(f, *args, argnums=argnums, local_errors="never").top
    except Exception:
        return ""
    return f"\ndiagnosis: {top.short()}" if top is not None else ""


def _custom_vjp_hint(err: TypeError, modes) -> TypeError:
    if "custom_vjp" in str(err) and "fwd" in modes:
        return TypeError("f is (or calls) a jax.custom_vjp function, which has no forward mode (JVP): "
                         "check it with modes=('rev',)")
    return err
