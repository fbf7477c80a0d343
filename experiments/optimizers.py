"""Optimizers and their convergence issues: GD, momentum, Nesterov, RMSProp and Adam.

Three problems, each a ``loss(params, batch)`` trained with :func:`jaxcalc.train.sweep`:

* an ill-conditioned quadratic (condition number 1000): least squares ``mse(B x, c)`` whose
  Hessian ``2BᵀB/n = Q diag(λ) Qᵀ`` has eigenvalues log-spaced in [1, 1000];
* Rosenbrock ``(a − x)² + b (y − x²)²`` with ``a = 1, b = 100`` (the "data"), from (−1.2, 1);
* L2-regularised logistic regression on scikit-learn's breast-cancer set (standardised),
  ``binary_cross_entropy(X w + b, y) + ½ l2 |w|²``; its optimum comes from Newton's method in
  float64 (``jax.hessian``).

Each optimizer runs at the best learning rate of a log grid (one vmapped program per optimizer
and problem; "best" = fewest steps to the tolerance, else the lowest final gap). The table gives
the steps after which ``f − f* <= tol · (f(x₀) − f*)`` holds to the end of the run (a run that
only dips under it while oscillating does not count).

Learning-rate stability: for GD on the quadratic the largest stable rate is found by vmapped
rounds of a 32-point grid (stable: after ``stability_steps`` steps the loss is finite and below
its start), each round zooming into the bracket between the last stable and first unstable
rate, and compared with theory, ``2/λ_max`` of ``jax.hessian`` of the loss.
Finally :func:`jaxcalc.train.lr_find` (a learning-rate range test) on the logistic regression.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc import losses, optim, train
from jaxcalc._validate import check_fields_at_least
from jaxcalc.runio import RunWriter, figure

NAME = "optimizers"
BREAST_CANCER_EXAMPLES = 569  # scikit-learn's breast-cancer set, the logistic regression's data

OPTIMIZERS = {
    "gd": optim.gd,
    "momentum": optim.momentum,
    "nesterov": optim.nesterov,
    "rmsprop": optim.rmsprop,
    "adam": optim.adam,
}


@dataclass(frozen=True)
class Config:
    """Settings of the optimizer comparison; each field is a ``jaxcalc run optimizers`` option.

    Attributes:
      seed: PRNG seed for the quadratic's rotation and optimum and lr_find's batches.
      dim: dimension of the ill-conditioned quadratic, 2 to 1000.
      condition: condition number λ_max/λ_min of the quadratic's Hessian, 1 to 1e8.
      tol: relative gap (f − f*)/(f(x₀) − f*) an optimizer must reach and keep, in (0, 1).
      quadratic_steps: steps on the quadratic per learning rate, >= 1.
      rosenbrock_steps: steps on Rosenbrock's function per learning rate, >= 1.
      logistic_steps: full-batch steps on the logistic regression per learning rate, >= 1.
      l2: L2 strength ½·l2·|w|² of the logistic regression, >= 0.
      grid_points: learning rates tried per optimizer, log-spaced from grid_min to grid_max, 2 to 256.
      grid_min: smallest learning rate of the grid, > 0.
      grid_max: largest learning rate of the grid, above grid_min.
      stability_steps: GD steps after which a learning rate counts as stable on the quadratic, >= 1.
      stability_rounds: zoom-in rounds of the largest-stable-rate search, 1 to 20.
      lr_find_steps: steps of the learning-rate range test, 3 to 100000.
      lr_find_batch_size: examples per step of the range test, 1 to 569 (the breast-cancer examples).
      optimizers: comma-separated subset of gd, momentum, nesterov, rmsprop, adam.
    """

    seed: int = 0
    dim: int = 10
    condition: float = 1000.0
    tol: float = 1e-6
    quadratic_steps: int = 10000
    rosenbrock_steps: int = 20000
    logistic_steps: int = 5000
    l2: float = 0.01
    grid_points: int = 16
    grid_min: float = 1e-5
    grid_max: float = 1.0
    stability_steps: int = 2000
    stability_rounds: int = 4
    lr_find_steps: int = 200
    lr_find_batch_size: int = 64
    optimizers: str = "gd,momentum,nesterov,rmsprop,adam"

    def __post_init__(self):
        names = [n.strip() for n in self.optimizers.split(",") if n.strip()]
        unknown = [n for n in names if n not in OPTIMIZERS]
        if not names or unknown:
            raise ValueError(f"optimizers must be a comma-separated subset of {', '.join(OPTIMIZERS)}; "
                             f"got {self.optimizers!r}")
        check_fields_at_least(self, ("dim", "quadratic_steps", "rosenbrock_steps", "logistic_steps",
                                     "stability_steps", "stability_rounds", "lr_find_batch_size"))
        if not 2 <= self.dim <= 1000:
            raise ValueError(f"dim must be in [2, 1000], got {self.dim}")
        if not 1 <= self.condition <= 1e8:
            raise ValueError(f"condition must be in [1, 1e8], got {self.condition}")
        if not 0 < self.tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {self.tol}")
        if not 2 <= self.grid_points <= 256:
            raise ValueError(f"grid_points must be in [2, 256], got {self.grid_points}")
        if not (0 < self.grid_min < self.grid_max and math.isfinite(self.grid_max)):
            raise ValueError(f"need 0 < grid_min < grid_max (finite), got grid_min={self.grid_min}, "
                             f"grid_max={self.grid_max}")
        if self.lr_find_batch_size > BREAST_CANCER_EXAMPLES:
            raise ValueError(f"lr_find_batch_size must be at most {BREAST_CANCER_EXAMPLES} (the breast-cancer "
                             f"examples), got {self.lr_find_batch_size}")
        if self.stability_rounds > 20:
            raise ValueError(f"stability_rounds must be in [1, 20], got {self.stability_rounds}")
        if not 3 <= self.lr_find_steps <= 100_000:
            raise ValueError(f"lr_find_steps must be in [3, 100000], got {self.lr_find_steps}")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2}")


QUICK = {"quadratic_steps": 3000, "rosenbrock_steps": 5000, "logistic_steps": 1000,
         "grid_points": 12, "stability_steps": 1000, "stability_rounds": 3}


# ------------------------------------------------------------------ problems


def quadratic_problem(key, dim: int, condition: float):
    """Least squares with Hessian eigenvalues log-spaced in [1, condition]; minimum f* = 0."""
    kq, kx = jax.random.split(key)
    q, _ = jnp.linalg.qr(jax.random.normal(kq, (dim, dim)))
    lam = jnp.logspace(0.0, jnp.log10(condition), dim)
    # mse(B x, c) = (1/n)|Bx − c|², Hessian 2BᵀB/n = Q diag(λ) Qᵀ for B = sqrt(n/2) diag(√λ) Qᵀ
    b = jnp.sqrt(dim / 2.0) * jnp.sqrt(lam)[:, None] * q.T
    x_star = jax.random.normal(kx, (dim,))
    return {"b": b, "c": b @ x_star}, jnp.zeros(dim), 0.0


def quadratic_loss(x, batch):
    return losses.mse(batch["b"] @ x, batch["c"])


def rosenbrock_loss(xy, batch):
    """Mean over the "examples" of ``(a − x)² + b (y − x²)²``; minimum 0 at (a, a²)."""
    x, y = xy[0], xy[1]
    return jnp.mean((batch["a"] - x) ** 2 + batch["b"] * (y - x**2) ** 2)


ROSENBROCK = ({"a": jnp.array([1.0]), "b": jnp.array([100.0])}, jnp.array([-1.2, 1.0]), 0.0)


def make_logistic_loss(l2: float):
    def loss(params, batch):
        logits = batch["x"] @ params["w"] + params["b"]
        return losses.binary_cross_entropy(logits, batch["y"]) + 0.5 * l2 * jnp.sum(params["w"] ** 2)
    return loss


def logistic_problem(l2: float):
    """Breast cancer (standardised), zero init, and f* from Newton's method in float64."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    p0 = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    loss = make_logistic_loss(l2)
    with jax.enable_x64(True):
        d64 = {"x": jnp.asarray(x, jnp.float64), "y": jnp.asarray(y, jnp.float64)}
        flat, unravel = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a: a.astype(jnp.float64), p0))
        f = lambda v: loss(unravel(v), d64)
        @jax.jit
        def newton(v):  # 30 Newton steps, then (f, |∇f|) at the result
            v = jax.lax.fori_loop(
                0, 30, lambda _, v: v - jnp.linalg.solve(jax.hessian(f)(v), jax.grad(f)(v)), v)
            return f(v), jnp.linalg.norm(jax.grad(f)(v))

        f_star, grad_norm_star = (float(a) for a in newton(flat))
    return data, p0, f_star, grad_norm_star


# ------------------------------------------------------------------ runs


def _steps_to_tol(loss_hist, f_star, f0, tol):
    """Steps after which (f − f*) <= tol·(f0 − f*) holds for good (to the end of the run), or
    None. A run that dips under the tolerance while oscillating does not count.
    loss_hist: (steps,), the loss before each step."""
    gap = np.asarray(loss_hist, np.float64) - f_star
    above = np.nonzero(~(np.isfinite(gap) & (gap <= tol * (f0 - f_star))))[0]
    if above.size == 0:
        return 0
    first_good = int(above[-1]) + 1
    return first_good if first_good < gap.size else None


def _best_over_grid(loss_fn, params, data, make_opt, lrs, steps, f_star, tol):
    """Sweep a learning-rate grid (one vmapped program); pick the best lr."""
    _, hist = train.sweep(loss_fn, params, data, make_optimizer=make_opt, learning_rates=lrs,
                          epochs=steps)
    f0 = float(loss_fn(params, data))
    reach = [_steps_to_tol(h, f_star, f0, tol) for h in hist["loss"]]
    if any(r is not None for r in reach):
        i = min((r, i) for i, r in enumerate(reach) if r is not None)[1]
    else:
        final = np.where(np.isfinite(hist["loss"][:, -1]), hist["loss"][:, -1], np.inf)
        i = int(np.argmin(final))
    return {"lr": float(lrs[i]), "steps": reach[i], "loss": hist["loss"][i], "f0": f0}


def _trajectory(loss_fn, params, data, opt, steps):
    """Parameters after each step (for plotting a 2-D path)."""
    def body(carry, _):
        p, s = carry
        g = jax.grad(loss_fn)(p, data)
        u, s = opt.update(g, s, p)
        p = p + u
        return (p, s), p
    _, path = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return np.concatenate([np.asarray(params)[None], np.asarray(path)])


def largest_stable_lr(loss_fn, params, data, *, lo, hi, steps, rounds, points=32):
    """Largest lr for which GD keeps the loss finite and below its start after ``steps``.

    Each round is one vmapped :func:`train.sweep` over ``points`` rates in ``[lo, hi]``
    (log-spaced in round 0, linear after), then zooms into ``[last stable, first unstable]``.
    The rates are traced, so every round reuses the same compiled program.
    """
    f0 = float(loss_fn(params, data))
    history = []
    for r in range(rounds):
        lrs = np.geomspace(lo, hi, points) if r == 0 else np.linspace(lo, hi, points)
        _, hist = train.sweep(loss_fn, params, data, make_optimizer=optim.gd, learning_rates=lrs,
                              epochs=steps)
        last = hist["loss"][:, -1]
        stable = (hist["status"] != "diverged") & np.isfinite(last) & (last < f0)
        history.append({"lrs": lrs, "stable": stable})
        if not stable.any():
            raise ValueError(f"no stable learning rate in [{lo}, {hi}]")
        i = int(np.nonzero(stable)[0].max())
        if i == points - 1:
            raise ValueError(f"every learning rate up to {hi} is stable; raise the upper bound")
        lo, hi = float(lrs[i]), float(lrs[i + 1])
    return lo, hi, history


def run(config: Config, out_dir) -> dict:
    writer = RunWriter(out_dir, config)
    key = jax.random.key(config.seed)
    q_data, q_x0, q_star = quadratic_problem(key, config.dim, config.condition)
    l_data, l_p0, l_star, l_gstar = logistic_problem(config.l2)
    logistic_loss = make_logistic_loss(config.l2)
    problems = {
        "quadratic": (quadratic_loss, q_x0, q_data, q_star, config.quadratic_steps),
        "rosenbrock": (rosenbrock_loss, ROSENBROCK[1], ROSENBROCK[0], ROSENBROCK[2], config.rosenbrock_steps),
        "logistic": (logistic_loss, l_p0, l_data, l_star, config.logistic_steps),
    }
    chosen = {n.strip(): OPTIMIZERS[n.strip()] for n in config.optimizers.split(",") if n.strip()}
    lrs = np.geomspace(config.grid_min, config.grid_max, config.grid_points)
    results = {p: {} for p in problems}
    for pname, (loss_fn, x0, data, f_star, steps) in problems.items():
        for oname, make_opt in chosen.items():
            res = _best_over_grid(loss_fn, x0, data, make_opt, lrs, steps, f_star, config.tol)
            results[pname][oname] = res
            writer.log(problem=pname, optimizer=oname, best_lr=res["lr"], steps_to_tol=res["steps"],
                       final_gap=float(res["loss"][-1] - f_star))

    # table: steps to tolerance (best lr)
    header = "| optimizer | " + " | ".join(f"{p} (steps @ lr)" for p in problems) + " |"
    lines = [header, "|" + "---|" * (len(problems) + 1)]
    for oname in chosen:
        cells = []
        for pname, (_, _, _, _, steps) in problems.items():
            r = results[pname][oname]
            cells.append(f"{r['steps']} @ {r['lr']:.2g}" if r["steps"] is not None
                         else f"> {steps} (best lr {r['lr']:.2g})")
        lines.append(f"| {oname} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"steps until (f − f*) <= {config.tol:g}·(f(x₀) − f*) for good, each optimizer at its "
          "best grid lr:")
    print(table)

    # plots: loss gap against step; Rosenbrock trajectories
    fig, axes = figure(1, 3, figsize=(16, 4.2))
    for ax, (pname, (_, _, _, f_star, _)) in zip(axes, problems.items(), strict=True):
        for oname, r in results[pname].items():
            gap = np.maximum(np.asarray(r["loss"], np.float64) - f_star, 1e-12)
            ax.semilogy(gap, label=f"{oname} (lr {r['lr']:.2g})")
        ax.set_title(pname)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("f − f*")
    writer.savefig(fig, "loss_vs_step")

    fig, ax = figure(figsize=(7, 5.5))
    gx, gy = np.meshgrid(np.linspace(-2, 2, 200), np.linspace(-1, 3, 200))
    f = (1 - gx) ** 2 + 100 * (gy - gx**2) ** 2
    ax.contour(gx, gy, f, levels=np.logspace(-1, 3.5, 18), cmap="gray", linewidths=0.6)
    for oname, make_opt in chosen.items():
        r = results["rosenbrock"][oname]
        path = _trajectory(rosenbrock_loss, ROSENBROCK[1], ROSENBROCK[0], make_opt(r["lr"]),
                           config.rosenbrock_steps)
        ax.plot(path[:, 0], path[:, 1], lw=1, label=f"{oname} (lr {r['lr']:.2g})")
    ax.plot([1], [1], "k*", ms=12, label="minimum (1, 1)")
    ax.plot([-1.2], [1.0], "ko", ms=5, label="start")
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1, 3)
    ax.legend(fontsize=8)
    ax.set_title("Rosenbrock: trajectories at each optimizer's best grid lr")
    writer.savefig(fig, "rosenbrock_trajectories")

    # learning-rate stability of GD on the quadratic
    flat = jnp.ravel(q_x0)
    hess = jax.jit(jax.hessian(quadratic_loss))(flat, q_data)
    lam_max = float(np.max(np.linalg.eigvalsh(np.asarray(hess, np.float64))))
    theory = 2.0 / lam_max
    lo, hi, rounds = largest_stable_lr(quadratic_loss, q_x0, q_data, lo=config.grid_min,
                                       hi=config.grid_max, steps=config.stability_steps,
                                       rounds=config.stability_rounds)
    for i, rnd in enumerate(rounds):
        writer.log_many({"stability_round": i, "lr": float(lr), "stable": bool(s)}
                        for lr, s in zip(rnd["lrs"], rnd["stable"], strict=True))
    ratio = lo / theory
    print(f"GD on the quadratic: largest stable lr {lo:.6g} (first unstable {hi:.6g}); "
          f"theory 2/λ_max = {theory:.6g}; ratio {ratio:.4f}")

    # learning-rate range test on the logistic regression
    lf = train.lr_find(logistic_loss, l_p0, l_data, optimizer_fn=optim.gd, min_lr=1e-4, max_lr=100.0,
                       steps=config.lr_find_steps, key=jax.random.fold_in(key, 7),
                       batch_size=config.lr_find_batch_size)
    fig, ax = figure(figsize=(6.5, 4))
    ax.semilogx(lf["lrs"], lf["losses"], alpha=0.35, label="loss")
    ax.semilogx(lf["lrs"], lf["smoothed"], label="smoothed")
    ax.axvline(lf["suggested_lr"], color="r", ls="--", label=f"steepest: {lf['suggested_lr']:.3g}")
    ax.axvline(lf["lr_min_over_10"], color="g", ls=":", label=f"min/10: {lf['lr_min_over_10']:.3g}")
    ax.set_ylim(0.9 * float(np.min(lf["smoothed"])), 2.0 * float(lf["smoothed"][0]))
    ax.set_xlabel("learning rate (GD, mini-batches)")
    ax.set_ylabel("logistic loss")
    ax.legend()
    writer.savefig(fig, "lr_find_logistic")
    print(f"lr_find on logistic regression: suggested {lf['suggested_lr']:.3g}, "
          f"min/10 {lf['lr_min_over_10']:.3g}")

    summary = {
        "tol": config.tol, "condition": config.condition, "dim": config.dim,
        "steps_budget": {p: problems[p][4] for p in problems},
        "steps_to_tol": {p: {o: r["steps"] for o, r in res.items()} for p, res in results.items()},
        "best_lr": {p: {o: r["lr"] for o, r in res.items()} for p, res in results.items()},
        "final_gap": {p: {o: float(r["loss"][-1] - problems[p][3]) for o, r in res.items()}
                      for p, res in results.items()},
        "table": table,
        "quadratic_lambda_max": lam_max,
        "lr_max_theory": theory, "lr_max_measured": lo, "lr_first_unstable": hi,
        "lr_max_measured_over_theory": ratio,
        "lr_max_within_2pct": abs(ratio - 1) <= 0.02,
        "logistic_f_star": l_star, "logistic_newton_grad_norm": l_gstar,
        "lr_find_suggested_lr": lf["suggested_lr"], "lr_find_min_over_10": lf["lr_min_over_10"],
        "lr_find_stopped_step": lf["stopped_step"],
    }
    return writer.finish(summary)
