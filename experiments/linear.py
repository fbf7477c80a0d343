"""Linear regression by gradient descent: the article's example 1, then real and synthetic data.

Part A runs the article's example 1 exactly as printed (numpy, ``X`` of shape (3, 1), ``y`` of
shape (3,), lr 0.01, 1000 iterations, summed gradients). ``w * X + b - y`` broadcasts
(3, 1) − (3,) to (3, 3): every prediction is compared with every target, so the fit is the best
*constant* (w ≈ 0, b ≈ mean(y) = 4) instead of y = 2x. jaxcalc's losses refuse that subtraction;
with the shapes right, the loss whose gradient is the article's summed ``dw, db`` is
``½ Σᵢ (w xᵢ + b − yᵢ)²`` (∂/∂w = Σ (ŷ − y) x, ∂/∂b = Σ (ŷ − y)), and the same lr and
iterations reach w ≈ 2, b ≈ 0.

Part B: scikit-learn's diabetes set (features standardised, target as shipped), batch GD, SGD
and mini-batch against the closed-form least squares. Distances are relative in the Euclidean
norm of all parameters, ``‖θ − θ*‖ / ‖θ*‖`` with ``θ = (w, b)``. Batch GD uses lr = 1/λ_max of
the loss's Hessian (from ``jax.hessian``). SGD and mini-batch sample gradients whose noise does
not vanish at the optimum, so with a constant rate they hover at a distance proportional to the
rate (the Hessian's smallest eigenvalue is 0.017, so the slow direction is also the noisiest);
they run a constant rate long enough to converge the slow direction, then decay it slowly
(geometrically per epoch, slower than the slow direction contracts, so the error can follow the
rate down), which takes the noise floor under 1e-3 in float32 (checked over 4-8 data orders each:
at most 6e-4). Mini-batches have 34 examples, which divides the 442: a smaller last batch
would weigh its examples more (1/26 instead of 1/34) in that epoch, a first-order noise that
kept mini-batch near 1e-3 with batches of 32.
Then a synthetic set with known w, b, where the recovered coefficients are compared with the
generating ones in units of their standard errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc import losses, optim, train
from jaxcalc._validate import check_fields_at_least
from jaxcalc.data import synthetic
from jaxcalc.models.linear import init_linear, least_squares, linear_apply, mse_loss
from jaxcalc.runio import RunWriter, figure

NAME = "linear"
METHOD_NAMES = {"batch": "batch GD", "sgd": "SGD", "minibatch": "mini-batch"}


DIABETES_EXAMPLES = 442  # scikit-learn's diabetes set


@dataclass(frozen=True)
class Config:
    """Settings of the linear-regression experiment; each field is a ``jaxcalc run linear`` option.

    Attributes:
      seed: PRNG seed for the SGD and mini-batch data orders and the synthetic data set.
      article_lr: learning rate of the article's example 1, > 0 (the article's 0.01).
      article_iterations: gradient-descent iterations of example 1, >= 1 (the article's 1000).
      batch_epochs: batch gradient-descent steps on the diabetes data (one step per epoch), >= 1.
      sgd_epochs: SGD epochs on the diabetes data (442 one-example steps each), >= 1.
      sgd_lr: SGD's initial learning rate, > 0.
      sgd_constant_epochs: SGD epochs at the initial rate before the decay starts, >= 0.
      sgd_decay: SGD's learning-rate factor per epoch after the constant phase, in (0, 1].
      minibatch_epochs: mini-batch epochs on the diabetes data, >= 1.
      batch_size: examples per mini-batch, 1 to 442 and at most synthetic_n (34 divides the 442
        diabetes examples: no smaller last batch).
      minibatch_lr: mini-batch descent's initial learning rate, > 0.
      minibatch_constant_epochs: mini-batch epochs at the initial rate before the decay, >= 0.
      minibatch_decay: mini-batch learning-rate factor per epoch after the constant phase, in (0, 1].
      synthetic_n: examples in the synthetic data set with known coefficients, >= 2.
      synthetic_d: features of the synthetic data set, >= 1.
      synthetic_noise: standard deviation of the synthetic targets' Gaussian noise, > 0.
      synthetic_epochs: mini-batch epochs on the synthetic data, >= 1.
    """

    seed: int = 0
    article_lr: float = 0.01
    article_iterations: int = 1000
    batch_epochs: int = 4000
    sgd_epochs: int = 1000
    sgd_lr: float = 0.005
    sgd_constant_epochs: int = 200
    sgd_decay: float = 0.993
    minibatch_epochs: int = 2500
    batch_size: int = 34
    minibatch_lr: float = 0.15
    minibatch_constant_epochs: int = 300
    minibatch_decay: float = 0.997
    synthetic_n: int = 1000
    synthetic_d: int = 5
    synthetic_noise: float = 0.1
    synthetic_epochs: int = 100

    def __post_init__(self):
        check_fields_at_least(self, ("article_iterations", "batch_epochs", "sgd_epochs", "minibatch_epochs",
                                     "batch_size", "synthetic_d", "synthetic_epochs"))
        check_fields_at_least(self, ("sgd_constant_epochs", "minibatch_constant_epochs"), minimum=0)
        check_fields_at_least(self, ("synthetic_n",), minimum=2)
        for name in ("article_lr", "sgd_lr", "minibatch_lr", "synthetic_noise"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("sgd_decay", "minibatch_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.batch_size > min(DIABETES_EXAMPLES, self.synthetic_n):
            raise ValueError(f"batch_size must be at most {min(DIABETES_EXAMPLES, self.synthetic_n)} (the diabetes "
                             f"set has {DIABETES_EXAMPLES} examples, synthetic_n is {self.synthetic_n}), "
                             f"got {self.batch_size}")


# --quick shortens only SGD (the costly one: an update per example); its distance to lstsq is
# then typically 4e-4..2e-3 depending on the data order, instead of < 1e-3.
QUICK = {"sgd_epochs": 400, "sgd_constant_epochs": 100, "sgd_decay": 0.98}


# ------------------------------------------------------------------ Part A


def article_example_1(lr: float = 0.01, n_iter: int = 1000):
    """The article's example 1, verbatim (numpy; ``X`` (3, 1), ``y`` (3,)). Returns (w, b)."""
    X = np.array([[1], [2], [3]])
    y = np.array([2, 4, 6])
    w = 0
    b = 0
    for _ in range(n_iter):
        y_pred = w * X + b
        dw = np.sum((y_pred - y) * X)
        db = np.sum(y_pred - y)
        w -= lr * dw
        b -= lr * db
    return w, b


def summed_squared_error(params, batch):
    """``½ Σᵢ (w xᵢ + b − yᵢ)²``: its gradient is the article's summed (dw, db)."""
    return 0.5 * jnp.sum(losses.squared_error(params["w"] * batch["x"] + params["b"], batch["y"]))


def _part_a(config: Config) -> dict:
    w_np, b_np = article_example_1(config.article_lr, config.article_iterations)
    X = jnp.array([[1.0], [2.0], [3.0]])
    y = jnp.array([2.0, 4.0, 6.0])
    try:
        losses.mse(0.0 * X + 0.0, y)
        refusal = None
    except ValueError as err:
        refusal = str(err)
    data = {"x": X[:, 0], "y": y}  # the explicit reshape the article needed
    p0 = {"w": jnp.zeros(()), "b": jnp.zeros(())}
    g = jax.grad(summed_squared_error)(p0, data)
    x_np, y_np = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])
    article_grad = {"w": float(np.sum((0 - y_np) * x_np)), "b": float(np.sum(0 - y_np))}
    params, hist = train.fit(summed_squared_error, p0, data, optimizer=optim.gd(config.article_lr),
                             method="batch", epochs=config.article_iterations)
    return {
        "seed_as_written_w": float(w_np), "seed_as_written_b": float(b_np),
        "seed_as_written_printed": f"Final weights: {w_np}\nFinal bias: {b_np}",
        "shape_check_refusal": refusal,
        "grad_at_zero": {"w": float(g["w"]), "b": float(g["b"])}, "article_grad_at_zero": article_grad,
        "w": float(params["w"]), "b": float(params["b"]),
        "w_within_0.02_of_2": abs(float(params["w"]) - 2) <= 0.02,
        "b_within_0.03_of_0": abs(float(params["b"])) <= 0.03,
        "article_final_loss": float(hist["loss"][-1]),
        "article_lr": config.article_lr, "article_iterations": config.article_iterations,
    }


# ------------------------------------------------------------------ Part B


def _flat(p):
    return jnp.concatenate([jnp.ravel(p["w"]), jnp.ravel(p["b"])])


def _rel(p, ref) -> float:
    return float(jnp.linalg.norm(_flat(p) - _flat(ref)) / jnp.linalg.norm(_flat(ref)))


def _decay_schedule(lr0: float, constant_epochs: int, decay: float, steps_per_epoch: int):
    """``lr0`` for ``constant_epochs`` epochs, then ``× decay`` per epoch (smooth in steps)."""
    def schedule(count):
        epochs_past = jnp.maximum(0.0, count / steps_per_epoch - constant_epochs)
        return lr0 * decay**epochs_past
    return schedule


def load_diabetes_standardised():
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def _part_b(config: Config, writer: RunWriter) -> dict:
    data = load_diabetes_standardised()
    n, d = data["x"].shape
    p0 = init_linear(None, d)
    ref = least_squares(data["x"], data["y"])
    ref_loss = float(mse_loss(ref, data))
    flat0, unravel = jax.flatten_util.ravel_pytree(p0)
    hess = jax.jit(jax.hessian(lambda f: mse_loss(unravel(f), data)))(flat0)
    eig = np.linalg.eigvalsh(np.asarray(hess, np.float64))
    lr_batch = float(1.0 / eig[-1])
    key = jax.random.key(config.seed)
    mb_steps = -(-n // config.batch_size)
    runs = {
        "batch": dict(optimizer=optim.gd(lr_batch), method="batch", epochs=config.batch_epochs),
        "sgd": dict(optimizer=optim.gd(_decay_schedule(config.sgd_lr, config.sgd_constant_epochs,
                                                       config.sgd_decay, n)),
                    method="sgd", epochs=config.sgd_epochs, key=jax.random.fold_in(key, 1)),
        "minibatch": dict(optimizer=optim.gd(_decay_schedule(
            config.minibatch_lr, config.minibatch_constant_epochs, config.minibatch_decay, mb_steps)),
            method="minibatch", batch_size=config.batch_size, epochs=config.minibatch_epochs,
            key=jax.random.fold_in(key, 2)),
    }
    rel, hists, fitted = {}, {}, {}
    for name, kw in runs.items():
        params, hist = train.fit(mse_loss, p0, data, full_loss=True, **kw)
        rel[name], hists[name], fitted[name] = _rel(params, ref), hist, params
        writer.log_many({"part": "diabetes", "method": name, "epoch": e, "loss": float(loss),
                         "full_loss": float(f), "grad_norm": float(g)}
                        for e, (loss, f, g) in enumerate(
                            zip(hist["loss"], hist["full_loss"], hist["grad_norm"], strict=True)))

    # Batch GD on a quadratic, exactly: with H = Q diag(λ) Qᵀ and lr = 1/λ_max, the error's component along
    # eigenvector i shrinks by (1 − λ_i/λ_max) per step, so after k steps the excess loss is
    # ½ Σ_i λ_i c_i² (1 − λ_i/λ_max)^(2k), with c = Qᵀ(θ₀ − θ*) (float64).
    lam, vecs = np.linalg.eigh(np.asarray(hess, np.float64))
    c = vecs.T @ (np.asarray(flat0, np.float64) - np.asarray(jax.flatten_util.ravel_pytree(ref)[0], np.float64))
    steps = np.arange(1, config.batch_epochs + 1)
    theory = 0.5 * np.sum(lam[:, None] * c[:, None] ** 2 * (1 - lam[:, None] / lam[-1]) ** (2 * steps[None, :]),
                          axis=0)
    floor = 1e-7 * ref_loss  # float32 resolution of a loss of this size
    fig, ax = figure(figsize=(7, 4))
    measured = np.asarray(hists["batch"]["full_loss"], np.float64) - ref_loss
    ax.semilogy(steps, np.maximum(measured, floor), lw=2, label="batch gradient descent (float32)")
    ax.semilogy(steps, np.maximum(theory, floor), "k--", lw=1,
                label="theory: ½ Σ λᵢ cᵢ² (1 − λᵢ/λ_max)^(2k), float64")
    ax.axhline(ref_loss * float(np.finfo(np.float32).eps), color="grey", lw=0.6, ls=":")
    ax.annotate("float32 resolution of the loss", (steps[-1], ref_loss * float(np.finfo(np.float32).eps)),
                fontsize=7, color="grey", ha="right", va="bottom")
    ax.set(xlabel="step k (one per epoch)", ylabel="MSE − MSE(lstsq)  (log scale)",
           title=f"Diabetes: batch GD at lr = 1/λ_max, Hessian condition number {lam[-1] / lam[0]:.0f}")
    ax.legend(fontsize=8)
    writer.savefig(fig, "batch_gd")

    # all three methods against the least-squares optimum, on all the data after each epoch
    fig, (ax1, ax2) = figure(1, 2, figsize=(13, 4.2))
    for i, (name, hist) in enumerate(hists.items()):
        full = np.asarray(hist["full_loss"], np.float64)
        ep = np.arange(1, len(full) + 1)
        label = f"{METHOD_NAMES[name]}: ‖θ−θ*‖/‖θ*‖ = {rel[name]:.1e}"
        ax1.semilogx(ep, full, color=f"C{i}", lw=1.2, label=label)
        ax2.loglog(ep, np.maximum(full - ref_loss, floor), color=f"C{i}", lw=1, alpha=0.85, label=label)
    ax1.axhline(ref_loss, color="k", ls="--", lw=1, label=f"least squares (lstsq): {ref_loss:.1f}")
    ax1.set(xlabel="epoch (log scale)", ylabel="MSE on all 442 examples", title="Loss against the optimum",
            ylim=(0.97 * ref_loss, 1.6 * ref_loss))
    ax2.set(xlabel="epoch (log scale)", ylabel="MSE − MSE(lstsq)  (log scale)", title="Excess loss")
    ax1.legend(fontsize=8)
    writer.savefig(fig, "diabetes_loss")

    return {
        "diabetes_examples": n, "diabetes_features": d,
        "epochs": {name: kw["epochs"] for name, kw in runs.items()},
        "examples_per_step": {"batch": n, "sgd": 1, "minibatch": config.batch_size},
        "lr_batch": lr_batch, "hessian_condition_number": float(eig[-1] / eig[0]),
        "lstsq_w": ref["w"], "lstsq_b": float(ref["b"]), "lstsq_mse": ref_loss,
        "rel_diff_to_lstsq": rel, "max_rel_diff_to_lstsq": max(rel.values()),
        "all_within_1e-3": max(rel.values()) <= 1e-3,
        "diabetes_final_loss": {k: float(h["full_loss"][-1]) for k, h in hists.items()},
    }


def _part_synthetic(config: Config, writer: RunWriter) -> dict:
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    data, truth = synthetic.linear_regression(key, config.synthetic_n, config.synthetic_d,
                                              noise=config.synthetic_noise)
    steps = -(-config.synthetic_n // config.batch_size)
    params, hist = train.fit(
        mse_loss, init_linear(None, config.synthetic_d), data,
        optimizer=optim.gd(_decay_schedule(0.05, config.synthetic_epochs // 2, 0.9, steps)),
        method="minibatch", batch_size=config.batch_size, epochs=config.synthetic_epochs,
        key=jax.random.fold_in(key, 1))
    writer.log_many({"part": "synthetic", "method": "minibatch", "epoch": e, "loss": float(loss)}
                    for e, loss in enumerate(hist["loss"]))
    # standard errors of OLS coefficients: noise · sqrt(diag((AᵀA)⁻¹)), A = [x, 1]
    a = np.c_[np.asarray(data["x"], np.float64), np.ones(config.synthetic_n)]
    se = config.synthetic_noise * np.sqrt(np.diag(np.linalg.inv(a.T @ a)))
    err = np.asarray(_flat(params), np.float64) - np.asarray(_flat(truth), np.float64)
    z = np.abs(err) / np.maximum(se, 1e-12)
    pred = linear_apply(params, data["x"])
    return {
        "synthetic_n": config.synthetic_n, "synthetic_d": config.synthetic_d,
        "synthetic_noise": config.synthetic_noise,
        "synthetic_w_true": truth["w"], "synthetic_b_true": float(truth["b"]),
        "synthetic_w": params["w"], "synthetic_b": float(params["b"]),
        "synthetic_max_abs_err": float(np.max(np.abs(err))),
        "synthetic_max_z": float(np.max(z)),
        "synthetic_recovered_within_noise": bool(np.max(z) < 4.0),
        "synthetic_residual_std": float(jnp.std(pred - data["y"])),
    }


def _plot_article_example_1(writer: RunWriter, part_a: dict) -> None:
    x = np.array([1.0, 2.0, 3.0])
    grid = np.linspace(0.0, 4.0, 50)
    fig, ax = figure(figsize=(6.5, 4.2))
    ax.plot(x, 2 * x, "ko", ms=7, label="data: y = 2x")
    ax.plot(grid, part_a["seed_as_written_w"] * grid + part_a["seed_as_written_b"], "C3-", lw=1.6,
            label=f"as printed (numpy broadcasts (3, 1) − (3,) to (3, 3)): "
                  f"w = {part_a['seed_as_written_w']:.1g}, b = {part_a['seed_as_written_b']:.2f}")
    ax.plot(grid, part_a["w"] * grid + part_a["b"], "C0--", lw=1.6,
            label=f"jaxcalc, shapes checked: w = {part_a['w']:.3f}, b = {part_a['b']:.3f}")
    ax.set(xlabel="x", ylabel="y", title=f"Article example 1: lr {part_a['article_lr']:g}, "
                                         f"{part_a['article_iterations']} iterations", ylim=(-0.5, 8.5))
    ax.legend(fontsize=8, loc="upper left")
    writer.savefig(fig, "article_example_1")


def run(config: Config, out_dir) -> dict:
    writer = RunWriter(out_dir, config)
    summary = _part_a(config)
    _plot_article_example_1(writer, summary)
    summary.update(_part_b(config, writer))
    summary.update(_part_synthetic(config, writer))
    summary = writer.finish(summary)
    print(f"article example 1 as written: w = {summary['seed_as_written_w']:.4g}, "
          f"b = {summary['seed_as_written_b']:.4g}  ((3, 1) - (3,) broadcasts to (3, 3))")
    print(f"jaxcalc refuses it: {summary['shape_check_refusal']}")
    print(f"shape-checked, same lr/iterations: w = {summary['w']:.4f}, b = {summary['b']:.4f}")
    print("diabetes, ‖θ−θ*‖/‖θ*‖ against lstsq: " + ", ".join(
        f"{k} {v:.2e}" for k, v in summary["rel_diff_to_lstsq"].items())
        + f"; max {summary['max_rel_diff_to_lstsq']:.2e}")
    print(f"synthetic: max |θ − θ_true| = {summary['synthetic_max_abs_err']:.4f} "
          f"({summary['synthetic_max_z']:.2f} standard errors)")
    return summary
