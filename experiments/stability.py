"""Numerical stability: naive softmax, log(softmax) and log(1 + eˣ) against the stable forms, in float32.

Each case is a scalar input ``s`` swept from 0 to ``s_max`` (one jitted ``vmap`` over the grid), fed to
a naive formula and to the stable one jaxcalc uses (``jax.nn.softmax``, ``jax.nn.log_softmax`` =
``z − logsumexp(z)``, ``jax.nn.softplus``), and compared with a float64 reference. We report the input
at which each naive form first returns inf or NaN (refined between grid points to float32 resolution),
where its relative error first exceeds 1%, and where its gradient first stops being finite.

Theory (float32): ``exp`` overflows above ``log(max) = 88.72``; ``exp(−s)`` reaches 0 below the
smallest subnormal at ``s ≈ 103.28``, or already at ``87.34`` (the smallest normal) where denormals
are flushed to zero, as XLA does on CPU. Measured here: XLA on CPU divides an array by a scalar
through its reciprocal, so the naive ``e / Σe`` already returns 0 once ``1 / Σe`` flushes to zero
(``Σe > 1/tiny``, i.e. ``s > 87.34``), before ``exp`` overflows. The stable forms subtract the maximum first
(softmax is shift-invariant), so they never exponentiate a positive number. Relative errors are
taken against ``max(|reference|, tiny)``; the stable forms' worst error is reported where the
reference is above ``tiny / eps`` (below it even a correct float32 result has lost precision).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc.runio import RunWriter, figure

NAME = "stability"


@dataclass(frozen=True)
class Config:
    """Settings of the stability sweep; each field is a ``jaxcalc run stability`` option.

    Attributes:
      seed: unused (the sweep is deterministic); kept so every experiment takes --seed.
      dtype: precision of the naive and stable forms: float32, float16 or bfloat16.
      s_max: the sweep's inputs s run from 0 to s_max, 1 to 10000.
      num_points: grid points of the sweep, 11 to 1000000 (the first failure is then refined
        between two of them).
    """

    seed: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    s_max: float = 200.0
    num_points: int = 4001

    def __post_init__(self):
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if not (math.isfinite(self.s_max) and 1.0 <= self.s_max <= 1e4):
            raise ValueError(f"s_max must be in [1, 1e4], got {self.s_max}")
        if not 11 <= self.num_points <= 1_000_000:
            raise ValueError(f"num_points must be in [11, 1000000], got {self.num_points}")


QUICK = {"num_points": 1001}


@dataclass(frozen=True)
class Case:
    name: str
    formula: str          # what is computed, as a function of the swept input s
    naive: Callable       # s -> scalar, the textbook formula
    stable: Callable      # s -> scalar, the form jaxcalc uses


def _naive_softmax(z):
    e = jnp.exp(z)
    return e / jnp.sum(e)


CASES = (
    Case("softmax_large", "softmax([s, 0])[0]",
         lambda s: _naive_softmax(jnp.stack([s, jnp.zeros_like(s)]))[0],
         lambda s: jax.nn.softmax(jnp.stack([s, jnp.zeros_like(s)]))[0]),
    Case("softmax_negative", "softmax([−s, −s − 1])[0]",
         lambda s: _naive_softmax(jnp.stack([-s, -s - 1]))[0],
         lambda s: jax.nn.softmax(jnp.stack([-s, -s - 1]))[0]),
    Case("log_softmax_large", "log(softmax([s, 0]))[1]",
         lambda s: jnp.log(_naive_softmax(jnp.stack([s, jnp.zeros_like(s)])))[1],
         lambda s: jax.nn.log_softmax(jnp.stack([s, jnp.zeros_like(s)]))[1]),
    Case("log_softmax_spread", "log(softmax([0, −s]))[1]",
         lambda s: jnp.log(_naive_softmax(jnp.stack([jnp.zeros_like(s), -s])))[1],
         lambda s: jax.nn.log_softmax(jnp.stack([jnp.zeros_like(s), -s]))[1]),
    Case("log1p_exp", "log(1 + exp(s))", lambda s: jnp.log(1 + jnp.exp(s)), jax.nn.softplus),
    Case("log1p_exp_negative", "log(1 + exp(−s))", lambda s: jnp.log(1 + jnp.exp(-s)),
         lambda s: jax.nn.softplus(-s)),
)


def _evaluate(case: Case, dtype):
    """Jitted: values of the naive and stable forms, the naive gradient, over a grid of s."""

    @jax.jit
    def ev(s):
        s = s.astype(dtype)
        naive = jax.vmap(case.naive)(s)
        stable = jax.vmap(case.stable)(s)
        grad = jax.vmap(jax.grad(lambda t: case.naive(t).astype(jnp.float32)))(s)
        return naive, stable, grad

    return ev


def _reference(case: Case):
    """The stable form in float64: the truth the float32 forms are measured against."""
    return jax.jit(lambda s: jax.vmap(case.stable)(s.astype(jnp.float64)))


def _rel_error(approx, ref, tiny):
    approx = np.asarray(approx, np.float64)
    return np.abs(approx - ref) / np.maximum(np.abs(ref), tiny)


def _first(pred: Callable[[np.ndarray], np.ndarray], grid: np.ndarray, dtype, rounds: int = 2):
    """The first grid value where ``pred`` holds, refined ``rounds`` times between neighbours.

    Returns None when ``pred`` never holds on the grid.
    """
    hit = np.flatnonzero(pred(grid))
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(grid[0])
    lo, hi = float(grid[i - 1]), float(grid[i])
    for _ in range(rounds):
        fine = np.linspace(lo, hi, grid.size).astype(dtype).astype(np.float64)  # same size: no recompile
        hit = np.flatnonzero(pred(fine))
        j = int(hit[0]) if hit.size else len(fine) - 1
        lo, hi = float(fine[max(j - 1, 0)]), float(fine[j])
    return hi


def run(config: Config, out_dir) -> dict:
    writer = RunWriter(out_dir, config)
    dtype = jnp.dtype(config.dtype)
    finfo = jnp.finfo(dtype)
    tiny = float(finfo.tiny)  # relative errors are taken against max(|reference|, smallest normal)
    full_precision = tiny / float(finfo.eps)  # below this, values have lost relative precision (subnormals)
    grid = np.linspace(0.0, config.s_max, config.num_points).astype(dtype).astype(np.float64)  # representable
    summary: dict = {
        "dtype": config.dtype,
        "s_max": config.s_max,
        "theory_exp_overflow": math.log(float(finfo.max)),
        "theory_exp_underflow_subnormal": -math.log(float(finfo.smallest_subnormal)),
        "theory_exp_underflow_normal": -math.log(float(finfo.tiny)),
    }
    rows, curves = [], {}
    with jax.enable_x64(True):
        for case in CASES:
            ev, ref_fn = _evaluate(case, dtype), _reference(case)

            def values(s, ev=ev, ref_fn=ref_fn):
                naive, stable, grad = ev(jnp.asarray(s, jnp.float64))
                return (np.asarray(naive, np.float64), np.asarray(stable, np.float64),
                        np.asarray(grad, np.float64), np.asarray(ref_fn(jnp.asarray(s, jnp.float64))))

            naive, stable, _grad, ref = values(grid)
            curves[case.name] = (naive, stable, ref)
            s_bad = _first(lambda s: ~np.isfinite(values(s)[0]), grid, dtype)
            s_err = _first(lambda s: ~(_rel_error(*values(s)[::3], tiny) <= 0.01), grid, dtype)
            s_grad = _first(lambda s: ~np.isfinite(values(s)[2]), grid, dtype)
            naive_at = stable_at = None
            if s_bad is not None:
                nv, sv, _, _ = values(np.full(grid.shape, s_bad))  # same shape as the grid: no recompile
                naive_at, stable_at = float(nv[0]), float(sv[0])
            normal = np.abs(ref) >= full_precision
            stable_err = float(np.max(_rel_error(stable[normal], ref[normal], tiny), initial=0.0))
            stable_finite = bool(np.all(np.isfinite(stable)))
            p = case.name
            summary.update({
                f"{p}_naive_first_nonfinite": s_bad,
                f"{p}_naive_value_there": naive_at,
                f"{p}_stable_value_there": stable_at,
                f"{p}_naive_first_rel_error_1pct": s_err,
                f"{p}_naive_grad_first_nonfinite": s_grad,
                f"{p}_stable_max_rel_error": stable_err,
                f"{p}_stable_all_finite": stable_finite,
            })
            rows.append((case, s_bad, naive_at, stable_at, s_err, s_grad, stable_err))
            every = max(1, len(grid) // 200)
            writer.log_many({"case": p, "s": float(s), "naive": float(a), "stable": float(b), "reference": float(r)}
                            for s, a, b, r in zip(grid[::every], naive[::every], stable[::every], ref[::every],
                                                  strict=True))

    def fmt(v, spec=".4f"):
        return "never" if v is None else (f"{v:{spec}}" if isinstance(v, float) and math.isfinite(v) else str(v))

    table = [f"| case ({config.dtype}) | naive formula | naive first inf/NaN at s = | naive there | stable there "
             "| naive rel. err > 1% from s = | naive gradient inf/NaN from s = | stable max rel. err |",
             "|---|---|---|---|---|---|---|---|"]
    for case, s_bad, naive_at, stable_at, s_err, s_grad, stable_err in rows:
        table.append(f"| {case.name} | {case.formula} | {fmt(s_bad)} | {fmt(naive_at, '.4g')} | "
                     f"{fmt(stable_at, '.6g')} | {fmt(s_err)} | {fmt(s_grad)} | {stable_err:.1e} |")
    table.append(f"| theory | exp overflow log(max) = {summary['theory_exp_overflow']:.4f}; exp(−s) = 0 past "
                 f"{summary['theory_exp_underflow_subnormal']:.4f} (subnormal) or "
                 f"{summary['theory_exp_underflow_normal']:.4f} (flush-to-zero) | | | | | | |")
    text = "\n".join(table)
    print(text)
    summary["table_markdown"] = text

    fig, axes = figure(2, 3, figsize=(15, 8.5), layout="constrained")
    top = 1e3
    for ax, (case, s_bad, *_rest) in zip(axes.ravel(), rows, strict=True):
        naive, stable, ref = curves[case.name]
        e_naive = _rel_error(naive, ref, tiny)
        e_stable = _rel_error(stable, ref, tiny)
        bad = ~np.isfinite(e_naive)
        floor = 1e-10
        ax.semilogy(grid, np.clip(np.where(bad, top, e_naive), floor, top), color="C3", lw=1.2, label="naive")
        ax.semilogy(grid, np.clip(e_stable, floor, top), color="C0", lw=1.2, label="stable (jax.nn)")
        if bad.any():
            ax.plot(grid[bad], np.full(bad.sum(), top), "x", color="C3", ms=3, label="naive inf/NaN")
        if s_bad is not None:
            ax.axvline(s_bad, color="C3", ls="--", lw=0.8)
            ax.annotate(f"s = {s_bad:.2f}", (s_bad, 1e-2), fontsize=8, color="C3")
        ax.axhline(float(finfo.eps), color="grey", lw=0.6, ls=":")
        ax.set(title=case.formula, xlabel="input s", ylabel="relative error vs float64", ylim=(floor, top * 3))
    axes[0, 0].legend(fontsize=8, loc="center left")
    fig.suptitle(f"Naive vs stable forms in {config.dtype}: relative error against float64 (× = inf/NaN)")
    writer.savefig(fig, "stability")
    return writer.finish(summary)
