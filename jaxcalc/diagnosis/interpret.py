"""An instrumented jaxpr interpreter: the float32 run, its float64 shadow, and per-equation statistics.

The pattern of JAX's "Writing custom Jaxpr interpreters": walk a jaxpr equation by equation and bind each
primitive again, here with two values per variable, the program's own (float32) value and a float64
*shadow* (the same equation evaluated on float64 inputs). Nested jaxprs are walked too: ``jit`` /
``closed_call`` / ``remat`` / ``custom_jvp_call`` / ``custom_vjp_call`` bodies inline, ``scan`` /
``while`` / ``cond`` rebuilt as the same loop or branch over the interpreted body. The interpreter is
itself traced by ``jax.jit``, so a whole diagnosis is one compiled program, not thousands of eager ops.

Per equation it records, as scalars returned from the compiled program (summed or maxed over loop
iterations):

* ``nf``: non-finite entries of each output (per variable, "node");
* ``origin``: an output is non-finite while every input is finite (the origin, not a propagation);
* ``mask``: a ``select_n`` (``jnp.where``) case operand holds NaN/inf at entries the select discards;
* ``zinf``: a ``mul``/``div`` output is NaN where an operand is 0 (``0·inf``, ``0/0``: the where-trap);
* local error (forward program only): with ``x`` the float64 shadow inputs,
  ``bits = log2(1 + |op32(round32(x)) − op64(x)| / ulp32(op64(x)))`` per entry (Herbie's local error:
  the error this one operation adds when its inputs are exact), summed, counted and maxed.

Python-side bookkeeping (which equation, which user line, which variable feeds which) lives in
:class:`Tracker`; the analysis in :mod:`jaxcalc.diagnosis.analysis` reads it with the returned numbers.
"""
from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex

from jaxcalc.diagnosis import _jax

F64 = np.dtype("float64")

# Primitives whose local error is measured (arithmetic and transcendental functions); data movement
# (reshape, slice, gather, select, max, ...) is exact given its inputs and is not measured.
MEASURED = {
    "add", "sub", "mul", "div", "rem", "pow", "integer_pow", "square", "sqrt", "rsqrt", "cbrt", "exp", "exp2",
    "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh",
    "cosh", "asinh", "acosh", "atanh", "erf", "erfc", "erf_inv", "lgamma", "digamma", "dot_general",
    "conv_general_dilated", "reduce_sum", "reduce_prod", "cumsum", "cumprod", "cumlogsumexp", "add_any",
    "reduce_precision",
}
# Sums of many terms: their error is measured against the largest output entry (normwise), so that an
# entry that cancels to ~0 in a dot product (a property of the data) is not counted as a lost digit.
SUMLIKE = {"dot_general", "conv_general_dilated", "reduce_sum", "cumsum", "add_any"}
_SCATTERS = {"scatter": lax.scatter, "scatter-add": lax.scatter_add, "scatter_add": lax.scatter_add,
             "scatter-sub": lax.scatter_sub, "scatter_sub": lax.scatter_sub, "scatter-mul": lax.scatter_mul,
             "scatter_mul": lax.scatter_mul, "scatter-min": lax.scatter_min, "scatter_min": lax.scatter_min,
             "scatter-max": lax.scatter_max, "scatter_max": lax.scatter_max}
BITS_CAP = 32.0
HOST_MAX = 1 << 25   # entries of values sent back to the host (numpy) for statistics, instead of in-graph ones
# Float results made from bits or integers (random numbers, bitcasts): exact as they are, so the float64 shadow
# is the float32 result itself.
_FROM_BITS = {"bitcast_convert_type", "random_bits", "random_wrap", "random_unwrap", "rng_uniform", "rng_bit_generator",
              "iota"}


def is_float(aval) -> bool:
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _upcast_param(v):
    if isinstance(v, np.dtype) and jnp.issubdtype(v, jnp.floating) and v != F64:
        return F64
    return v


def _to64(x):
    return jnp.asarray(x, F64)


# ------------------------------------------------------------------------------------------ bookkeeping


@dataclasses.dataclass
class Site:
    """One equation in one place of the (nested) program."""

    id: int
    key: tuple
    program: str            # "forward" (f) or "gradient" (grad f)
    primitive: str
    eqn: object
    frame: _jax.Frame | None
    stack: tuple
    api: str | None
    pass_: str              # "forward" or "backward"
    parent: int | None
    depth: int
    in_nodes: list = dataclasses.field(default_factory=list)
    out_nodes: list = dataclasses.field(default_factory=list)
    host: bool = False      # its non-finite statistics are computed on the host from returned values


@dataclasses.dataclass
class Node:
    """One variable (value slot): produced by a site, or an alias of other nodes (nesting, loops)."""

    id: int
    key: tuple
    kind: str               # "input", "const", "literal", "out", "alias"
    site: int | None
    sources: list
    is_float: bool
    literal: object = None  # the value of a literal / small constant
    static_nf: int = 0      # non-finite entries of a literal or constant (known in Python)


class Tracker:
    """Sites and nodes, registered idempotently by key (a body traced twice registers once)."""

    def __init__(self):
        self.sites: list[Site] = []
        self.nodes: list[Node] = []
        self._site_keys: dict = {}
        self._node_keys: dict = {}
        self.notes: list[str] = []
        self.outputs: dict[str, list[int]] = {}

    def site(self, key, program, eqn, frame, pass_, parent, depth, api=None) -> Site:
        if key in self._site_keys:
            return self.sites[self._site_keys[key]]
        s = Site(len(self.sites), key, program, eqn.primitive.name, eqn, frame, _jax.user_stack(eqn),
                 api or _jax.api_name(eqn), pass_, parent, depth)
        self._site_keys[key] = s.id
        self.sites.append(s)
        return s

    def node(self, key, kind, site, sources, is_float_, literal=None, static_nf=0) -> int:
        if key in self._node_keys:
            n = self.nodes[self._node_keys[key]]
            for s in sources:
                if s not in n.sources:
                    n.sources.append(s)
            return n.id
        n = Node(len(self.nodes), key, kind, site, list(sources), is_float_, literal, static_nf)
        self._node_keys[key] = n.id
        self.nodes.append(n)
        return n.id

    def note(self, text: str):
        if text not in self.notes:
            self.notes.append(text)


@dataclasses.dataclass
class Val:
    x: object        # the program's value (None in shadow-only mode)
    s: object        # float64 shadow of a float value (None for non-floats in the main mode)
    node: int = -1


@dataclasses.dataclass(frozen=True)
class Ctx:
    path: tuple
    program: str
    pass_: str | None
    parent: int | None
    frame: object
    depth: int
    api: str | None = None
    in_cond: bool = False
    in_while: bool = False

    def child(self, site: Site, tag):
        return dataclasses.replace(self, path=(*self.path, site.id, tag), pass_=site.pass_, parent=site.id,
                                   frame=site.frame, depth=self.depth + 1, api=site.api)


def merge_stat(key: str, old, new, xp=jnp):
    """Two values of the statistic ``key``: ``...:sum`` keys add, ``...:max`` keys take the larger."""
    return old + new if key.endswith(":sum") else xp.maximum(old, new)


class _Collector:
    def __init__(self):
        self.stats: dict[str, object] = {}
        self.captures: dict[int, list] = {}
        self.arrays: dict[str, tuple] = {}   # (float32-local, float64-exact) results, for host-side bits

    def add(self, key, value, op):
        k = f"{key}:{op}"
        value = jnp.asarray(value, jnp.float32)
        self.stats[k] = merge_stat(k, self.stats[k], value) if k in self.stats else value


def combine_stacked(stats: dict):
    """Reduce per-iteration stacked stats (leading axis) by each key's op."""
    out = {}
    for k, v in stats.items():
        out[k] = jnp.sum(v, axis=0) if k.endswith(":sum") else jnp.max(v, axis=0, initial=0.0)
    return out


_EXP_MASK = 0x7FF0000000000000
_MANT_MASK = 0x000FFFFFFFFFFFFF


def _bitcast(xp, x, dtype):
    return lax.bitcast_convert_type(x, dtype) if xp is jnp else np.ascontiguousarray(x).view(dtype)


def ulp_bits(y_loc, y_ex, dtype, normwise: bool, xp=jnp):
    """Per-entry ``log2(1 + |y_loc − y_ex| / ulp(y_ex))`` in ``dtype``'s ulps, and the mask of entries counted
    (both finite). The ulp is at least the smallest normal number: a subnormal result flushed to zero (as XLA
    does on CPU) loses no digits by this measure. ``xp``: ``jax.numpy`` (inside the compiled program) or
    ``numpy`` (on the host, :func:`ulp_bits_np`).

    Computed from the float64 bit pattern, not with ``log2``/``frexp`` (XLA expands those into long
    polynomials and special cases, which made the compiled program several times slower to build): for
    ``v = 1.f · 2^e``, zeroing the mantissa bits gives ``2^e`` (so ``ulp = 2^(e − nmant)``), and
    ``log2 v ≈ e + f`` (exact at powers of two, within 0.09 bits elsewhere)."""
    info = jnp.finfo(dtype)
    yl = xp.asarray(y_loc, F64)
    ye = xp.asarray(y_ex, F64)
    ok = xp.isfinite(yl) & xp.isfinite(ye)
    yl, ye = xp.where(ok, yl, 0.0), xp.where(ok, ye, 0.0)  # entries not counted: 0 bits, no inf − inf
    a = xp.abs(ye)
    mag = xp.broadcast_to(xp.max(a, initial=0.0), a.shape) if normwise else a
    mag = xp.maximum(mag, float(info.tiny))
    pow2 = _bitcast(xp, _bitcast(xp, mag, np.int64) & _EXP_MASK, F64)
    ulp = xp.maximum(pow2 * 2.0 ** (-int(info.nmant)), float(info.tiny))
    r = 1.0 + xp.minimum(xp.abs(yl - ye) / ulp, 2.0 ** 60)
    rb = _bitcast(xp, r, np.int64)
    bits = ((rb >> 52) - 1023).astype(F64) + (rb & _MANT_MASK).astype(F64) * 2.0 ** -52
    return xp.minimum(bits, BITS_CAP), ok


def ulp_bits_np(y_loc, y_ex, dtype, normwise: bool):
    """:func:`ulp_bits` in numpy, on the host."""
    return ulp_bits(y_loc, y_ex, dtype, normwise, xp=np)


def _is_float_array(a) -> bool:
    return a is not None and jnp.issubdtype(a.dtype, jnp.floating)


def site_stats(xp, name: str, ins: list, outs: list) -> dict:
    """Non-finite statistics of one equation from its input and output values, with ``xp`` = ``jnp`` (in the
    compiled program) or ``np`` (on the host):

    * ``nf[k]``: non-finite entries of output ``k`` (None for non-float outputs);
    * ``origin``: some output is non-finite while every float input is finite;
    * ``mask[i]`` (``select_n``): case ``i`` holds NaN/inf at entries the select discards;
    * ``zinf`` (``mul``, ``div``): the output is NaN where an operand is 0 (``0·inf``, ``0/0``).
    """
    in_bad = xp.zeros((), bool)
    for a in ins:
        if _is_float_array(a):
            in_bad = in_bad | ~xp.all(xp.isfinite(a))
    nf, out_bad = [], xp.zeros((), bool)
    for o in outs:
        if _is_float_array(o):
            n = xp.sum(~xp.isfinite(o))
            nf.append(n)
            out_bad = out_bad | (n > 0)
        else:
            nf.append(None)
    res = {"nf": nf, "origin": out_bad & ~in_bad, "mask": {}, "zinf": None}
    if name == "select_n" and ins[0] is not None:
        for i, case in enumerate(ins[1:]):
            if _is_float_array(case):
                dropped = xp.broadcast_to(ins[0], case.shape).astype(xp.int32) != i
                res["mask"][i] = xp.any(~xp.isfinite(case) & dropped)
    elif name in ("mul", "div") and _is_float_array(outs[0]) and all(a is not None for a in ins[:2]):
        y = outs[0]
        a, b = (xp.broadcast_to(v, y.shape) for v in ins[:2])
        zero = (a == 0) if name == "div" else ((a == 0) | (b == 0))
        res["zinf"] = xp.any(xp.isnan(y) & zero)
    return res


def host_stats(tr: Tracker, arrays: dict) -> dict:
    """``site_stats`` with numpy for the sites whose values came back to the host; keys as in the program."""
    out = {}
    for site in tr.sites:
        if not site.host:
            continue

        def value(node):
            if f"n{node}" in arrays:
                return np.asarray(arrays[f"n{node}"])
            lit = tr.nodes[node].literal if node >= 0 else None
            return None if lit is None else np.asarray(lit)

        st = site_stats(np, site.primitive, [value(n) for n in site.in_nodes], [value(n) for n in site.out_nodes])
        for node, n in zip(site.out_nodes, st["nf"], strict=True):
            if n is not None:
                out[f"n{node}:nf:sum"] = out.get(f"n{node}:nf:sum", 0.0) + float(n)
        out[f"s{site.id}:origin:max"] = float(st["origin"])
        for i, m in st["mask"].items():
            out[f"s{site.id}:mask{i}:max"] = float(m)
        if st["zinf"] is not None:
            out[f"s{site.id}:zinf:max"] = float(st["zinf"])
    return out


# ------------------------------------------------------------------------------------------ interpreter


class Interpreter:
    """Evaluate jaxprs with a float64 shadow and statistics.

    Args:
      tracker: where sites and nodes are registered.
      run32: evaluate the program's own values (False: shadow only, i.e. re-evaluate in float64).
      shadow: with ``run32``, also evaluate every float equation in float64.
      nan_stats: record non-finite counts, origins, where-masks and ``0·inf`` flags.
      local_error: measure local error per equation (needs ``shadow``).
      capture: record the inputs of custom_jvp/custom_vjp calls (to check their rules afterwards).
    """

    def __init__(self, tracker: Tracker, *, run32=True, shadow=True, nan_stats=False, local_error=False,
                 capture=False):
        self.tr = tracker
        self.run32 = run32
        self.shadow = shadow or not run32
        self.nan_stats = nan_stats
        self.local_error = local_error and self.shadow
        self.capture = capture
        self.stats = nan_stats or self.local_error
        self._cols: list[_Collector] = []
        self._loops = 0      # nesting depth of scan / while / cond bodies being interpreted
        self._host_left = HOST_MAX   # values that may still go back to the host for statistics

    # -- collectors
    @contextlib.contextmanager
    def collect(self):
        col = _Collector()
        self._cols.append(col)
        try:
            yield col
        finally:
            self._cols.pop()

    @contextlib.contextmanager
    def _in_loop(self):
        self._loops += 1
        try:
            yield
        finally:
            self._loops -= 1

    @property
    def col(self) -> _Collector | None:
        return self._cols[-1] if (self._cols and self.stats) else None

    @property
    def cap(self) -> _Collector | None:
        return self._cols[-1] if (self._cols and self.capture) else None

    def _merge(self, stats: dict, captures: dict | None = None):
        if self._cols:
            col = self._cols[-1]
            for k, v in stats.items():
                key, op = k.rsplit(":", 1)
                col.add(key, v, op)
            for sid, vals in (captures or {}).items():
                col.captures.setdefault(sid, vals)

    # -- values
    def primary(self, v: Val):
        return v.x if self.run32 else v.s

    def shadow_of(self, v: Val):
        return v.s if v.s is not None else v.x

    def make_val(self, value, aval, node):
        if self.run32:
            return Val(value, _to64(value) if (self.shadow and is_float(aval)) else None, node)
        return Val(None, _to64(value) if is_float(aval) else value, node)

    # -- entry points
    def eval_closed(self, closed, in_vals, ctx):
        jaxpr, consts = _jax.closed(closed)
        return self.eval_jaxpr(jaxpr, consts, in_vals, ctx)

    def eval_jaxpr(self, jaxpr, consts, in_vals, ctx: Ctx):
        env: dict = {}
        for j, (var, c) in enumerate(zip(jaxpr.constvars, consts, strict=True)):
            arr = np.asarray(c) if not isinstance(c, jax.core.Tracer) else c
            nf = int(np.size(arr) - np.count_nonzero(np.isfinite(arr))) if (
                is_float(var.aval) and isinstance(arr, np.ndarray)) else 0
            lit = arr if isinstance(arr, np.ndarray) else None
            node = self.tr.node((*ctx.path, "const", j), "const", None, [], is_float(var.aval), lit, nf)
            env[var] = self.make_val(c, var.aval, node)
        for var, v in zip(jaxpr.invars, in_vals, strict=True):
            env[var] = v
        for i, eqn in enumerate(jaxpr.eqns):
            ins = [self._read(env, a, ctx, i, j) for j, a in enumerate(eqn.invars)]
            own = _jax.user_frame(eqn)
            frame = own or ctx.frame
            pass_ = "backward" if (ctx.pass_ == "backward" or _jax.is_backward(eqn)) else "forward"
            site = self.tr.site((*ctx.path, i), ctx.program, eqn, frame, pass_, ctx.parent, ctx.depth,
                                api=None if own is not None else ctx.api)
            site.in_nodes = [v.node for v in ins]
            name = eqn.primitive.name
            with _jax.eqn_context(eqn):
                if name in _jax.CALL_PRIMS:
                    outs = self._call(eqn, site, ins, ctx)
                elif name == "scan":
                    outs = self._scan(eqn, site, ins, ctx)
                elif name == "while":
                    outs = self._while(eqn, site, ins, ctx)
                elif name == "cond":
                    outs = self._cond(eqn, site, ins, ctx)
                else:
                    outs = self._leaf(eqn, site, ins, ctx)
            site.out_nodes = [o.node for o in outs]
            for var, o in zip(eqn.outvars, outs, strict=True):
                if not isinstance(var, jex.DropVar):
                    env[var] = o
        return [self._read(env, a, ctx, "out", j) for j, a in enumerate(jaxpr.outvars)]

    def _read(self, env, atom, ctx, i, j):
        if _jax.is_literal(atom):
            val = _jax.literal_value(atom)
            nf = int(np.size(val) - np.count_nonzero(np.isfinite(val))) if is_float(atom.aval) else 0
            node = self.tr.node((*ctx.path, "lit", i, j), "literal", None, [], is_float(atom.aval), val, nf)
            return self.make_val(val, atom.aval, node)
        return env[atom]

    # -- leaf primitives
    def _leaf(self, eqn, site, ins, ctx):
        apply = _jax.bind_fn(eqn)
        out_avals = [v.aval for v in eqn.outvars]
        xs = apply(*[v.x for v in ins]) if self.run32 else [None] * len(out_avals)
        ss = [None] * len(out_avals)
        if self.shadow and (not self.run32 or any(is_float(a) for a in out_avals)):
            ss = self._shadow(eqn, apply, ins, xs, out_avals)
        outs = []
        for k, aval in enumerate(out_avals):
            node = self.tr.node((*ctx.path, site.id, "o", k), "out", site.id, [v.node for v in ins], is_float(aval))
            outs.append(Val(xs[k], ss[k], node))
        if self.col is not None:
            self._leaf_stats(eqn, site, ins, outs, apply)
        return outs

    def _shadow(self, eqn, apply, ins, xs, out_avals):
        name = eqn.primitive.name
        args = [self.shadow_of(v) for v in ins]
        params = eqn.params
        try:
            if name in _FROM_BITS and self.run32:
                out = xs
            elif name in _SCATTERS:
                fn = _SCATTERS[name]
                out = [fn(*args, params["dimension_numbers"], indices_are_sorted=params["indices_are_sorted"],
                          unique_indices=params["unique_indices"], mode=params["mode"])]
            elif any(isinstance(v, (jex.Jaxpr, jex.ClosedJaxpr)) for v in params.values()):
                raise NotImplementedError(f"{name} holds a jaxpr parameter")
            else:
                overrides = {k: _upcast_param(v) for k, v in params.items() if _upcast_param(v) is not v}
                out = apply(*args, **overrides)
        except Exception as e:
            if not self.run32:
                raise NotImplementedError(f"cannot evaluate {name} in float64: {e}") from e
            self.tr.note(f"no float64 shadow for {name} (its float32 result is used): {type(e).__name__}")
            out = xs
        return [_to64(o) if is_float(a) else (o if not self.run32 else None) for o, a in zip(out, out_avals,
                                                                                              strict=True)]

    def _leaf_stats(self, eqn, site, ins, outs, apply):
        col = self.col
        name = site.primitive
        float_outs = [o for o in outs if o.x is not None and is_float(jax.typeof(o.x))]
        if self.nan_stats and float_outs:
            vals = [v for v in ins + outs if v.x is not None and not isinstance(v.x, np.ndarray)]
            size = sum(int(np.size(v.x)) for v in vals)
            if self._loops == 0 and self._host_left >= size:
                # Outside loops the values themselves go back to the host, which computes the same statistics
                # with numpy (site_stats(np, ...)): no reductions in the compiled program, so it compiles about
                # as fast as the plain one. Inside loops (and past HOST_MAX values) they are computed in-graph.
                site.host = True
                for v in vals:
                    if f"n{v.node}" not in col.arrays:
                        col.arrays[f"n{v.node}"] = v.x
                        self._host_left -= int(np.size(v.x))
            else:
                stats = site_stats(jnp, name, [v.x for v in ins], [o.x for o in outs])
                for k, o in enumerate(outs):
                    if stats["nf"][k] is not None:
                        col.add(f"n{o.node}:nf", stats["nf"][k], "sum")
                col.add(f"s{site.id}:origin", stats["origin"], "max")
                for i, m in stats["mask"].items():
                    col.add(f"s{site.id}:mask{i}", m, "max")
                if stats["zinf"] is not None:
                    col.add(f"s{site.id}:zinf", stats["zinf"], "max")
        if self.local_error and name in MEASURED and float_outs and all(o.s is not None for o in float_outs):
            self._local_error(site, ins, outs, apply)

    def _local_error(self, site, ins, outs, apply):
        """Bits lost by this equation alone. Outside loops the two results go back to the host, which computes
        the bits with numpy (:func:`ulp_bits_np`): one extra op per equation in the compiled program instead of
        twenty, which keeps its compile time near the plain program's."""
        col = self.col
        rounded = []
        for v in ins:
            if v.s is not None:
                rounded.append(v.s.astype(jax.typeof(v.x).dtype))
            else:
                rounded.append(v.x)
        y_loc = apply(*rounded)
        for yl, o in zip(y_loc, outs, strict=True):
            dtype = jax.typeof(o.x).dtype
            if not jnp.issubdtype(dtype, jnp.floating):
                continue
            if self._loops == 0 and self._host_left >= 2 * np.size(yl):
                col.arrays[f"s{site.id}:{len(col.arrays)}"] = (yl, o.s)
                self._host_left -= 2 * int(np.size(yl))
                continue
            bits, ok = ulp_bits(yl, o.s, dtype, site.primitive in SUMLIKE)
            col.add(f"s{site.id}:bits", jnp.sum(jnp.where(ok, bits, 0.0)), "sum")
            col.add(f"s{site.id}:count", jnp.sum(ok), "sum")
            col.add(f"s{site.id}:bitsmax", jnp.max(jnp.where(ok, bits, 0.0), initial=0.0), "max")

    # -- nested jaxprs
    def _alias_in(self, ctx, tag, j, v: Val, extra_sources=()):
        node = self.tr.node((*ctx.path, tag, j), "alias", None, [v.node, *extra_sources],
                            self.tr.nodes[v.node].is_float if v.node >= 0 else False)
        return Val(v.x, v.s, node)

    def _alias_outs(self, ctx, site, inner_outs, extra=None):
        outs = []
        for k, o in enumerate(inner_outs):
            srcs = [o.node] + ([e[k].node for e in extra] if extra else [])
            node = self.tr.node((*ctx.path, site.id, "o", k), "alias", site.id, srcs,
                                self.tr.nodes[o.node].is_float if o.node >= 0 else False)
            outs.append(Val(o.x, o.s, node))
        return outs

    def _call(self, eqn, site, ins, ctx):
        body, consts = _jax.call_body(eqn)
        inner = ctx.child(site, "call")
        in_vals = [self._alias_in(inner, "in", j, v) for j, v in enumerate(ins)]
        if self.cap is not None and site.primitive in _jax.CUSTOM_PRIMS:
            if ctx.in_cond or ctx.in_while:
                self.tr.note(f"the {site.primitive} rule at {site.frame} sits inside a cond/while_loop: not checked")
            else:
                self.cap.captures.setdefault(site.id, [v.x for v in ins])
        outs = self.eval_jaxpr(body, consts, in_vals, inner)
        return self._alias_outs(ctx, site, outs)

    def _pack(self, vals):
        return [(v.x, v.s) for v in vals]

    def _scan(self, eqn, site, ins, ctx):
        p = eqn.params
        body, body_consts = _jax.closed(p["jaxpr"])
        nc, ncar = p["num_consts"], p["num_carry"]
        consts, init, xs = ins[:nc], ins[nc:nc + ncar], ins[nc + ncar:]
        inner = ctx.child(site, "body")
        const_vals = [self._alias_in(inner, "in", j, v) for j, v in enumerate(consts)]
        carry_nodes = [self._alias_in(inner, "in", nc + j, v).node for j, v in enumerate(init)]
        x_nodes = [self._alias_in(inner, "in", nc + ncar + j, v).node for j, v in enumerate(xs)]
        box = {}

        def body_fn(carry, x):
            cvals = [Val(cx, cs, n) for (cx, cs), n in zip(carry, carry_nodes, strict=True)]
            xvals = [Val(a, b, n) for (a, b), n in zip(x, x_nodes, strict=True)]
            with self.collect() as col, self._in_loop():
                outs = self.eval_jaxpr(body, body_consts, const_vals + cvals + xvals, inner)
            box["outs"] = outs
            return self._pack(outs[:ncar]), (self._pack(outs[ncar:]), col.stats, col.captures)

        carry, (ys, stats, caps) = lax.scan(body_fn, self._pack(init), self._pack(xs), length=p["length"],
                                            reverse=p["reverse"], unroll=p["unroll"])
        body_outs = box["outs"]
        for j, n in enumerate(carry_nodes):  # loop edge: carry-in also comes from the previous carry-out
            src = body_outs[j].node
            if src not in self.tr.nodes[n].sources:
                self.tr.nodes[n].sources.append(src)
        if p["length"] > 0:
            self._merge(combine_stacked(stats), {sid: [v[0] for v in vals] for sid, vals in caps.items()})
        vals = [Val(a, b) for a, b in carry] + [Val(a, b) for a, b in ys]
        for v, o in zip(vals, body_outs, strict=True):
            v.node = o.node
        return self._alias_outs(ctx, site, vals)

    def _while(self, eqn, site, ins, ctx):
        p = eqn.params
        cond_j, cond_consts = _jax.closed(p["cond_jaxpr"])
        body_j, body_consts = _jax.closed(p["body_jaxpr"])
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
        inner = dataclasses.replace(ctx.child(site, "body"), in_while=True)
        cinner = dataclasses.replace(ctx.child(site, "cond"), in_while=True)
        bconst_vals = [self._alias_in(inner, "in", j, v) for j, v in enumerate(bconsts)]
        carry_nodes = [self._alias_in(inner, "in", bn + j, v).node for j, v in enumerate(init)]

        def run_body(carry):
            cvals = [Val(a, b, n) for (a, b), n in zip(carry, carry_nodes, strict=True)]
            with self.collect() as col, self._in_loop():
                outs = self.eval_jaxpr(body_j, body_consts, bconst_vals + cvals, inner)
            return outs, col.stats

        # Trace the body once outside the loop to learn which statistics it returns (XLA drops the unused
        # values); each iteration then adds into carried accumulators of the same structure.
        peel_outs, template = run_body(self._pack(init))
        zeros = {k: jnp.zeros_like(v) for k, v in template.items()}

        def cond_fn(state):
            carry, _ = state
            sub = Interpreter(self.tr, run32=self.run32, shadow=False)
            cvals = [Val(a, b, n) for (a, b), n in zip(carry, carry_nodes, strict=True)]
            out = sub.eval_jaxpr(cond_j, cond_consts, list(cconsts) + cvals, cinner)[0]
            return sub.primary(out)

        def body_fn(state):
            carry, acc = state
            outs, st = run_body(carry)
            acc = {k: merge_stat(k, acc[k], st[k]) for k in acc}
            return self._pack(outs), acc

        carry, acc = lax.while_loop(cond_fn, body_fn, (self._pack(init), zeros))
        for j, n in enumerate(carry_nodes):
            src = peel_outs[j].node
            if src not in self.tr.nodes[n].sources:
                self.tr.nodes[n].sources.append(src)
        self._merge(acc)
        vals = [Val(a, b, o.node) for (a, b), o in zip(carry, peel_outs, strict=True)]
        init_alias = [Val(v.x, v.s, v.node) for v in init]  # zero iterations: the output is the input
        return self._alias_outs(ctx, site, vals, extra=[init_alias])

    def _cond(self, eqn, site, ins, ctx):
        branches = eqn.params["branches"]
        index, ops = ins[0], ins[1:]
        inner = [dataclasses.replace(ctx.child(site, ("branch", k)), in_cond=True) for k in range(len(branches))]
        in_vals = [[self._alias_in(inner[k], "in", j, v) for j, v in enumerate(ops)] for k in range(len(branches))]

        def run(k, packed):
            jaxpr, consts = _jax.closed(branches[k])
            vals = [Val(a, b, v.node) for (a, b), v in zip(packed, in_vals[k], strict=True)]
            with self.collect() as col, self._in_loop():
                outs = self.eval_jaxpr(jaxpr, consts, vals, inner[k])
            return outs, col.stats

        # Each branch traced once outside to learn its statistics (unused values are dropped by XLA), so
        # that every branch returns the same structure, zeros for the others' entries.
        peeled = [run(k, self._pack(ops)) for k in range(len(branches))]
        keys = {}
        for _, st in peeled:
            keys.update({k: jnp.zeros_like(v) for k, v in st.items()})

        def make(k):
            def fn(packed):
                outs, st = run(k, packed)
                return self._pack(outs), {**keys, **st}
            return fn

        outs, st = lax.switch(self.primary(index), [make(k) for k in range(len(branches))], self._pack(ops))
        self._merge(st)
        first = [Val(a, b, o.node) for (a, b), o in zip(outs, peeled[0][0], strict=True)]
        return self._alias_outs(ctx, site, first, extra=[pk[0] for pk in peeled[1:]])
