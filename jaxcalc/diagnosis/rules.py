"""Check each custom_jvp / custom_vjp rule in place: its derivative at the actual inputs against float64
central differences of its primal function.

For a call ``y = g(x)`` found in the trace (with its inputs captured while ``f`` ran):

* the rule's derivative is JAX's own: ``jax.jvp`` (custom_jvp) or ``jax.vjp`` (custom_vjp) of the bound
  primitive, traced to a jaxpr at the float32 inputs' shapes and then evaluated in float64 by the
  shadow interpreter (so round-off of the rule itself is ~1e-16, not float32's 1e-7);
* the reference is central differences of the primal body (``call_jaxpr``), also in float64, with the
  step rule of :func:`jaxcalc.derivatives.default_step` (``eps^(1/3)·max(1, |x|)``) and
  :mod:`jaxcalc.gradcheck`'s relative error ``|a − b| / max(|a|, |b|, floor)``;
* every coordinate (``"full"``) when the Jacobian is small, else ``num_directions`` directions
  (``"directional"``: for a VJP rule, half of them along the rule's own VJP ``u = Jᵀw / |Jᵀw|``, where a
  rule that is off by a factor shows its whole error, half random).

Kinks (ReLU, max-pool, ``abs``): the differences are taken at two steps, ``h`` and ``h/8``. Away from a
kink the one-sided slopes ``(F(x+h)−F(x))/h`` and ``(F(x)−F(x−h))/h`` differ by ``O(h)`` and shrink 8× with
the smaller step; across a kink they differ by the jump and do not shrink. Where that happens the rule may
return any value between the two one-sided slopes (a valid element of the generalised gradient, e.g.
max-pool's first argmax), else it must match a central difference within ``rtol``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc.derivatives import default_step
from jaxcalc.diagnosis import _jax
from jaxcalc.diagnosis.interpret import Ctx, Interpreter, Tracker, Val, is_float

FULL_MAX = 256          # every coordinate when inputs (JVP) / inputs and outputs (VJP) have at most this many
NUM_DIRECTIONS = 4
SMALL_STEP = 8.0        # the second step is h / SMALL_STEP


def _size(aval) -> int:
    return int(np.prod(aval.shape, dtype=int))


class RuleCheck:
    """Everything static about checking one custom call: its rule traced to a jaxpr, shapes, method."""

    def __init__(self, site):
        eqn = site.eqn
        self.site = site
        self.kind = "jvp" if eqn.primitive.name == "custom_jvp_call" else "vjp"
        self.rule = _jax.rule_name(eqn)
        self.primal = _jax.primal_name(eqn)
        nc = eqn.params.get("num_consts", 0)
        self.in_avals = [v.aval for v in eqn.invars]
        out_avals = [v.aval for v in eqn.outvars]
        self.diff = [j for j in range(nc, len(self.in_avals))
                     if is_float(self.in_avals[j]) and _size(self.in_avals[j]) > 0]
        self.fouts = [k for k, a in enumerate(out_avals) if is_float(a) and _size(a) > 0]
        self.out_avals = [out_avals[k] for k in self.fouts]
        self.n = sum(_size(self.in_avals[j]) for j in self.diff)
        self.m = sum(_size(a) for a in self.out_avals)
        self.body, self.body_consts = _jax.call_body(eqn)
        apply = _jax.bind_fn(eqn)
        diff, fouts, kind = self.diff, self.fouts, self.kind

        def rule(all_vals, d):
            def g(*dargs):
                full = list(all_vals)
                for j, a in zip(diff, dargs, strict=True):
                    full[j] = a
                outs = apply(*full)
                return [outs[k] for k in fouts]
            primals = [all_vals[j] for j in diff]
            if kind == "jvp":
                return jax.jvp(g, primals, list(d))[1]
            return list(jax.vjp(g, *primals)[1](list(d)))

        ins = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in self.in_avals]
        if kind == "jvp":
            ds = [jax.ShapeDtypeStruct(self.in_avals[j].shape, self.in_avals[j].dtype) for j in diff]
        else:
            ds = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in self.out_avals]
        self.rule_jaxpr = jax.make_jaxpr(rule)(ins, ds)   # traced at float32, evaluated in float64
        if kind == "jvp":
            self.method = "full" if self.n <= FULL_MAX else "directional"
        else:
            self.method = "full" if (self.n <= FULL_MAX and self.m <= FULL_MAX) else "directional"

    def draws(self, seed: int = 0):
        """Random directions ``(k, n)`` and cotangents ``(k, m)`` for the directional method, drawn with numpy
        (an argument of the compiled check: cheaper to compile than an in-graph threefry)."""
        if self.method == "full":
            return None
        rng = np.random.default_rng(seed)
        return rng.standard_normal((NUM_DIRECTIONS, self.n)), rng.standard_normal((NUM_DIRECTIONS, self.m))

    def evaluate(self, vals, draws, rtol: float):
        """Traced (under x64): ``{"rel_error": worst relative error, "entries": compared entries}``."""
        tr = Tracker()
        sh = Interpreter(tr, run32=False)
        ctx = Ctx(path=("check",), program="check", pass_="forward", parent=None, frame=None, depth=0)
        vals64 = [jnp.asarray(v, jnp.float64) if is_float(a) else v for v, a in zip(vals, self.in_avals, strict=True)]
        shapes = [self.in_avals[j].shape for j in self.diff]
        sizes = [_size(self.in_avals[j]) for j in self.diff]
        x0 = jnp.concatenate([jnp.ravel(vals64[j]) for j in self.diff])

        def unravel(flat):
            parts, start = [], 0
            for shp, sz in zip(shapes, sizes, strict=True):
                parts.append(flat[start:start + sz].reshape(shp))
                start += sz
            return parts

        def full_inputs(flat):
            full = list(vals64)
            for j, a in zip(self.diff, unravel(flat), strict=True):
                full[j] = a
            return full

        def F(flat):
            ins = [Val(None, v) for v in full_inputs(flat)]
            outs = sh.eval_jaxpr(self.body, self.body_consts, ins, ctx)
            return jnp.concatenate([jnp.ravel(outs[k].s) for k in self.fouts])

        def R(d_flat):
            if self.kind == "jvp":
                ds = unravel(d_flat)
            else:
                ds, start = [], 0
                for a in self.out_avals:
                    ds.append(d_flat[start:start + _size(a)].reshape(a.shape))
                    start += _size(a)
            ins = [Val(None, v) for v in vals64] + [Val(None, d) for d in ds]
            outs = sh.eval_closed(self.rule_jaxpr, ins, ctx)
            return jnp.concatenate([jnp.ravel(o.s) for o in outs])

        eps64 = float(jnp.finfo(jnp.float64).eps)

        def evaluate_all(steps):
            """F at x0 and at x0 ± steps[i] for both step sizes, in ONE vmapped call (one copy of F in the
            compiled program): ``f0, [(F(x0 + s), F(x0 − s)) for the two step sizes]``."""
            pts = [x0[None, :]]
            for st in steps:
                pts += [x0[None, :] + st, x0[None, :] - st]
            vals = jax.vmap(F)(jnp.concatenate(pts))
            k = steps[0].shape[0]
            parts = [vals[1 + i * k:1 + (i + 1) * k] for i in range(2 * len(steps))]
            return vals[0], [(parts[2 * i], parts[2 * i + 1]) for i in range(len(steps))]

        if self.method == "full":
            h = default_step(x0, "central")
            hs = [h / scale for scale in (1.0, SMALL_STEP)]
            f0, pairs = evaluate_all([jnp.diag(hh) for hh in hs])
            cols = [(fp, fm, hh[:, None]) for (fp, fm), hh in zip(pairs, hs, strict=True)]
            if self.kind == "jvp":
                J = jax.vmap(R)(jnp.eye(self.n, dtype=jnp.float64))          # (n, m)
            else:
                J = jax.vmap(R)(jnp.eye(self.m, dtype=jnp.float64)).T        # (n, m)
            h_small = jnp.min(h) / SMALL_STEP
        else:
            k = NUM_DIRECTIONS
            scale_x = jnp.maximum(1.0, jnp.max(jnp.abs(x0)))
            h0 = eps64 ** (1.0 / 3.0) * scale_x
            us = jnp.asarray(draws[0], jnp.float64)
            if self.kind == "vjp":
                ws = jnp.asarray(draws[1], jnp.float64)
                vs = jax.vmap(R)(ws)                                       # (k, n) rule VJPs
                half = k // 2
                norms = jnp.linalg.norm(vs[:half], axis=1, keepdims=True)
                along = jnp.where(norms > 0, vs[:half] / jnp.where(norms > 0, norms, 1.0), us[:half])
                us = jnp.concatenate([along, us[half:]])
            us = us / jnp.linalg.norm(us, axis=1, keepdims=True)
            hs = [h0 / scale for scale in (1.0, SMALL_STEP)]
            f0, pairs = evaluate_all([hh * us for hh in hs])
            cols = []
            for (fp, fm), hh in zip(pairs, hs, strict=True):
                if self.kind == "vjp":  # scalar <w, F(x ± h u)>
                    fp, fm = jnp.sum(fp * ws, axis=1, keepdims=True), jnp.sum(fm * ws, axis=1, keepdims=True)
                cols.append((fp, fm, hh))
            if self.kind == "jvp":
                J = jax.vmap(R)(us)                                          # (k, m)
            else:
                J = jnp.sum(us * vs, axis=1, keepdims=True)                  # (k, 1): <u, Jᵀw>
                f0 = jnp.sum(f0[None, :] * ws, axis=1)
            h_small = h0 / SMALL_STEP
        base = f0[:, None] if (self.method == "directional" and self.kind == "vjp") else f0[None, :]
        (fp1, fm1, h1), (fp2, fm2, h2) = cols
        c1, c2 = (fp1 - fm1) / (2 * h1), (fp2 - fm2) / (2 * h2)
        dp1, dm1 = (fp1 - base) / h1, (base - fm1) / h1
        dp2, dm2 = (fp2 - base) / h2, (base - fm2) / h2
        roundoff = 64 * eps64 * jnp.maximum(1.0, jnp.max(jnp.abs(f0))) / h_small
        floor = jnp.maximum(1e-6 * jnp.max(jnp.abs(c2)), roundoff / rtol)
        denom = jnp.maximum(jnp.maximum(jnp.abs(J), jnp.abs(c2)), floor)
        err_c = jnp.minimum(jnp.abs(J - c1), jnp.abs(J - c2)) / denom
        kink = jnp.abs(dp2 - dm2) > 0.5 * jnp.abs(dp1 - dm1) + roundoff
        lo, hi = jnp.minimum(dp2, dm2), jnp.maximum(dp2, dm2)
        err_k = jnp.maximum(jnp.maximum(lo - J, J - hi), 0.0) / denom
        err = jnp.where(kink, jnp.minimum(err_c, err_k), err_c)
        err = jnp.where(jnp.isfinite(err), err, jnp.inf)
        finite = jnp.all(jnp.isfinite(f0)) & jnp.all(jnp.isfinite(J)) & jnp.all(jnp.isfinite(x0))
        return {"rel_error": jnp.max(err, initial=0.0), "entries": jnp.asarray(err.size),
                "finite": finite.astype(jnp.float32)}
