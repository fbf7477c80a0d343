"""Finite differences: error against step size h (the V curve), float32 and float64, beside the theory.

For three functions whose derivative we know exactly: ``exp`` at ``x`` (derivative ``e^x``), ``sin``
at ``x`` (``cos x``) and a small smooth network loss along a random direction ``u`` in parameter space,
``φ(t) = mse(tanh-MLP_{θ + t u}(X), Y)`` at ``t = 0`` (exact ``φ'(0)`` from ``jax.jvp`` in float64),
we sweep ``h`` over a log grid and measure the relative error of the forward and central differences
in float32 and float64, plus the complex step in float64.

Theory (rule of thumb, unit-scale ``f``): forward error ``≈ h/2·|f''/f'| + eps/h`` is smallest near
``h ≈ sqrt(eps)`` with error ``≈ sqrt(eps)``; central ``≈ h²/6·|f'''/f'| + eps/h``, best near
``h ≈ eps^(1/3)`` with error ``≈ eps^(2/3)``. In log-log the truncation side rises with slope +1
(forward) or +2 (central) and the round-off side falls with slope −1. The complex step has no
round-off term: ``h = 1e-20`` is exact to float64 precision.

The "best h" and "min error" are read off the curve after a 5-point running median (round-off is
noise; one lucky cancellation should not decide), the raw minimum is kept beside it; slopes are
least-squares fits in log-log on each side of the best h. Each sweep is one jitted ``vmap`` over all step sizes
(``jaxcalc.derivatives.step_size_errors``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc import derivatives, losses
from jaxcalc.models.mlp import init_mlp, mlp_apply
from jaxcalc.runio import RunWriter, figure

NAME = "finite-differences"

METHODS = ("forward", "central")
DTYPES = ("float32", "float64")
FUNCTIONS = ("exp", "sin", "network")


@dataclass(frozen=True)
class Config:
    """Settings of the step-size study; each field is a ``jaxcalc run finite-differences`` option.

    Attributes:
      seed: PRNG seed for the network's weights, data and direction.
      x: the point where exp and sin are differentiated, finite with |x| <= 50.
      num_steps: step sizes on a log grid from h_min to h_max, >= 9.
      h_min: smallest step h, > 0.
      h_max: largest step h, above h_min and at most 10.
      hidden: width of the tanh MLP in the network loss, 1 to 4096.
      num_examples: examples in the network loss, 1 to 100000.
    """

    seed: int = 0
    x: float = 1.0
    num_steps: int = 97
    h_min: float = 1e-16
    h_max: float = 1.0
    hidden: int = 8
    num_examples: int = 16

    def __post_init__(self):
        if not math.isfinite(self.x) or abs(self.x) > 50:
            raise ValueError(f"x must be finite with |x| <= 50, got {self.x}")
        if self.num_steps < 9:
            raise ValueError(f"num_steps must be >= 9, got {self.num_steps}")
        if not 0 < self.h_min < self.h_max <= 10:
            raise ValueError(f"need 0 < h_min < h_max <= 10, got h_min={self.h_min}, h_max={self.h_max}")
        if not 1 <= self.hidden <= 4096:
            raise ValueError(f"hidden must be in [1, 4096], got {self.hidden}")
        if not 1 <= self.num_examples <= 100_000:
            raise ValueError(f"num_examples must be in [1, 100000], got {self.num_examples}")
        if self.num_steps > 100_000:
            raise ValueError(f"num_steps must be in [9, 100000], got {self.num_steps}")


QUICK = {"num_steps": 49}


def theory(method: str, dtype: str) -> tuple[float, float]:
    """Rule-of-thumb best step and smallest relative error: (sqrt(eps), sqrt(eps)) or (eps^(1/3), eps^(2/3))."""
    eps = float(np.finfo(dtype).eps)
    if method == "forward":
        return eps ** 0.5, eps ** 0.5
    return eps ** (1 / 3), eps ** (2 / 3)


def _network_data(seed: int, *, hidden: int, num_examples: int):
    """Float64 MLP parameters (3 -> hidden -> 1), data X (n, 3), targets Y (n, 1), unit direction u.

    Parameters come from ``init_mlp`` (keyed by ``seed``); data and direction from numpy's generator
    with the same seed (cheaper than compiling a PRNG program for a handful of numbers).
    """
    params = init_mlp(jax.random.key(seed), (3, hidden, 1), init="glorot", dtype=jnp.float64)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_examples, 3))
    Y = np.sin(X @ np.array([[1.0], [-2.0], [0.5]]))
    u = rng.standard_normal(sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params)))
    return params, jnp.asarray(X), jnp.asarray(Y), jnp.asarray(u / np.linalg.norm(u))


def _network(config: Config):
    """φ(t) = mse(MLP_{θ + t u}(X), Y): a smooth scalar function of t, and its exact φ'(0) (float64)."""
    params, X, Y, u = _network_data(config.seed, hidden=config.hidden,
                                    num_examples=config.num_examples)
    theta = jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(params)])

    def make(dtype):
        th, uu, xx, yy = (a.astype(dtype) for a in (theta, u, X, Y))

        def phi(t):  # t real (finite differences) or complex (complex step): params follow t's dtype
            p = _unravel(params, th + t * uu)
            return losses.mse(mlp_apply(p, xx, activation="tanh"), yy)

        return phi

    phi64 = make(jnp.float64)
    exact = jax.jit(lambda t: jax.jvp(phi64, (t,), (jnp.ones_like(t),))[1])(jnp.float64(0.0))
    return make, exact


def _unravel(like, flat):
    """Unflatten ``flat`` into the structure of ``like`` keeping ``flat``'s dtype (ravel_pytree's
    unravel would cast back to float64)."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    out, i = [], 0
    for leaf in leaves:
        out.append(flat[i:i + leaf.size].reshape(leaf.shape))
        i += leaf.size
    return jax.tree_util.tree_unflatten(treedef, out)


def _running_median(errs, width: int = 5):
    """Median over ``width`` neighbouring step sizes: the round-off side is noise, and a single
    lucky cancellation should not decide the "best h"."""
    pad = width // 2
    padded = np.pad(errs, pad, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)


def _slope(hs, errs, lo, hi):
    """Least-squares slope of log(error) against log(h) for lo <= h <= hi (nan if < 3 usable points)."""
    keep = (hs >= lo) & (hs <= hi) & (errs > 0) & np.isfinite(errs)
    if keep.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log(hs[keep]), np.log(errs[keep]), 1)[0])


def run(config: Config, out_dir) -> dict:
    writer = RunWriter(out_dir, config)
    hs64 = np.logspace(math.log10(config.h_min), math.log10(config.h_max), config.num_steps)
    curves: dict[tuple[str, str, str], np.ndarray] = {}
    summary: dict = {}
    with jax.enable_x64(True):
        make_net, net_exact = _network(config)
        cases = {
            "exp": (lambda dt: jnp.exp, config.x, math.exp(config.x)),
            "sin": (lambda dt: jnp.sin, config.x, math.cos(config.x)),
            "network": (make_net, 0.0, float(net_exact)),
        }
        for fname, (make, x0, exact) in cases.items():
            for dtype in DTYPES:
                f = make(jnp.dtype(dtype))
                x = jnp.asarray(x0, dtype)
                hs = jnp.asarray(hs64, dtype)
                methods = METHODS + (("complex",) if dtype == "float64" else ())
                sweep = jax.jit(lambda x, hs, f=f, methods=methods, exact=exact: {
                    m: derivatives.step_size_errors(f, x, jnp.float64(exact), hs, method=m) for m in methods}
                    | ({"complex_step_1e-20": derivatives.step_size_errors(
                        f, x, jnp.float64(exact), jnp.full((1,), 1e-20, x.dtype), method="complex")}
                       if x.dtype == jnp.float64 else {}))
                errs = {m: np.asarray(v, np.float64) for m, v in sweep(x, hs).items()}
                if "complex_step_1e-20" in errs:
                    summary[f"{fname}_complex_step_error"] = float(errs.pop("complex_step_1e-20")[0])
                for m, e in errs.items():
                    curves[(fname, m, dtype)] = e
                    writer.log_many({"function": fname, "method": m, "dtype": dtype, "h": float(h),
                                     "rel_error": float(err)} for h, err in zip(hs64, e, strict=True))

    rows = []
    for fname in FUNCTIONS:
        for method in METHODS:
            for dtype in DTYPES:
                e = curves[(fname, method, dtype)]
                smooth = _running_median(e)
                i = int(np.argmin(smooth))
                h_best, e_best = float(hs64[i]), float(smooth[i])
                h_th, e_th = theory(method, dtype)
                eps = float(np.finfo(dtype).eps)
                scale = max(1.0, abs(cases[fname][1]))
                key = f"{fname}_{method}_{dtype}"
                summary[f"{key}_best_h"] = h_best
                summary[f"{key}_min_error"] = e_best
                summary[f"{key}_raw_min_error"] = float(np.min(e))
                summary[f"{key}_truncation_slope"] = _slope(hs64, e, 10 * h_best, config.h_max)
                summary[f"{key}_roundoff_slope"] = _slope(hs64, e, 4 * eps * scale, h_best / 3)
                rows.append((fname, method, dtype, h_best, h_th, e_best, e_th,
                             summary[f"{key}_truncation_slope"], summary[f"{key}_roundoff_slope"]))
    for method in METHODS:
        for dtype in DTYPES:
            h_th, e_th = theory(method, dtype)
            summary[f"theory_{method}_{dtype}_best_h"] = h_th
            summary[f"theory_{method}_{dtype}_error"] = e_th

    table = ["| function | method | dtype | best h | theory h | min rel error | theory error | trunc. slope "
             "| round-off slope |",
             "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {f} | {m} | {d} | {hb:.1e} | {ht:.1e} | {eb:.1e} | {et:.1e} | {ts:+.2f} | {rs:+.2f} |"
              for f, m, d, hb, ht, eb, et, ts, rs in rows]
    table += [f"| {f} | complex step (h=1e-20) | float64 | - | - | {summary[f'{f}_complex_step_error']:.1e} | "
              f"{np.finfo(np.float64).eps:.1e} | - | - |" for f in FUNCTIONS]
    print("\n".join(table))
    summary["table_markdown"] = "\n".join(table)

    fig, axes = figure(1, len(FUNCTIONS), figsize=(5.2 * len(FUNCTIONS), 4.4), sharey=True)
    styles = {("forward", "float32"): ("C0", "--"), ("central", "float32"): ("C1", "--"),
              ("forward", "float64"): ("C0", "-"), ("central", "float64"): ("C1", "-"),
              ("complex", "float64"): ("C2", "-")}
    floor = 1e-18
    titles = {"exp": f"exp at x={config.x:g}", "sin": f"sin at x={config.x:g}",
              "network": "tanh-MLP MSE along a random direction"}
    for ax, fname in zip(axes, FUNCTIONS, strict=True):
        for (m, d), (c, ls) in styles.items():
            ax.loglog(hs64, np.maximum(curves[(fname, m, d)], floor), color=c, ls=ls, lw=1.4, label=f"{m} {d}")
        # reference slopes, anchored on the float64 curves' large-h end and small-h end
        for m, p, anchor in (("forward", 1, "float64"), ("central", 2, "float64")):
            e = curves[(fname, m, anchor)]
            ref_line = 0.03 * e[-1] * (hs64[-12:] / hs64[-1]) ** p  # drawn a little below its curve
            ax.loglog(hs64[-12:], ref_line, "k:", lw=1)
            ax.annotate(f"slope +{p}", (hs64[-12], ref_line[0]), fontsize=7)
        e = curves[(fname, "central", "float64")]
        j = np.searchsorted(hs64, 1e-13)
        ref = hs64[j:j + 12]
        ax.loglog(ref, e[j] * (ref / ref[0]) ** -1, "k-.", lw=1)
        ax.annotate("slope −1 (round-off)", (ref[0], e[j]), fontsize=7)
        for m, d in (("forward", "float64"), ("central", "float64"), ("central", "float32")):
            ax.axvline(theory(m, d)[0], color="grey", lw=0.6, ls=":")
        ax.set(title=titles[fname], xlabel="step h", ylim=(floor, 10))
    axes[0].set_ylabel("relative error |D_h f − f'| / |f'|")
    axes[0].legend(fontsize=7, loc="lower left")
    writer.savefig(fig, "error_vs_step")
    return writer.finish(summary)
