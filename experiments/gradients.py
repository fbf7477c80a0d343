"""Gradient checks: every jaxcalc loss and model, autodiff against float64 central differences."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc import losses
from jaxcalc.errors import GradientCheckError
from jaxcalc.gradcheck import check_grads
from jaxcalc.runio import RunWriter, figure

NAME = "gradients"

SMOOTH_RTOL = 1e-7   # cs231n's "good" for smooth functions in float64
KINK_RTOL = 1e-4     # where ReLU / max-pool kinks may lie within a step of the point


@dataclass(frozen=True)
class Config:
    """Settings of the gradient checks; each field is a ``jaxcalc run gradients`` option.

    Attributes:
      seed: PRNG seed for the random inputs, parameters and check directions.
      batch: examples in each loss and model check, 1 to 256 (a model sees 3 × batch ratings).
      directions: random unit directions per parameter leaf when a model is too large to check
        every coordinate, 1 to 64.
    """

    seed: int = 0
    batch: int = 6
    directions: int = 4

    def __post_init__(self):
        if not 1 <= self.batch <= 256:
            raise ValueError(f"batch must be in [1, 256], got {self.batch}")
        if not 1 <= self.directions <= 64:
            raise ValueError(f"directions must be in [1, 64], got {self.directions}")


QUICK = {"batch": 4, "directions": 2}


def _loss_cases(key, n):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    p, t = jax.random.normal(k1, (n,)), jax.random.normal(k2, (n,))
    logits = 3.0 * jax.random.normal(k3, (n, 4))
    labels = jax.random.randint(k4, (n,), 0, 4)
    probs = jax.nn.softmax(jax.random.normal(k4, (n, 4)))
    bits = (labels % 2).astype(jnp.float32)
    # Huber's kink sits at |e| = delta: the check is away from it unless a residual lands within h.
    return [  # (name, jaxcalc function, f, args, argnums, rtol)
        ("mean squared error", "losses.mse", losses.mse, (p, t), (0,), SMOOTH_RTOL),
        ("mean absolute error", "losses.mae", losses.mae, (p, t), (0,), KINK_RTOL),
        ("mean Huber loss (δ = 0.5)", "losses.mean_huber", lambda a, b: losses.mean_huber(a, b, delta=0.5), (p, t),
         (0,), KINK_RTOL),
        ("cross-entropy, integer labels", "losses.cross_entropy", losses.cross_entropy, (logits, labels), (0,),
         SMOOTH_RTOL),
        ("cross-entropy, probability targets", "losses.softmax_cross_entropy",
         lambda z, q: jnp.mean(losses.softmax_cross_entropy(z, q)), (logits, probs), (0, 1), SMOOTH_RTOL),
        ("binary cross-entropy", "losses.binary_cross_entropy", losses.binary_cross_entropy, (logits[:, 0], bits),
         (0,), SMOOTH_RTOL),
    ]


def _model_cases(key, n):
    from jaxcalc.models import cnn, linear, mlp, recommender

    k = jax.random.split(key, 8)
    x = jax.random.normal(k[0], (n, 5))
    y = jax.random.normal(k[1], (n,))
    lin = {"w": jax.random.normal(k[2], (5,)), "b": jnp.array(0.3)}
    mlp_params = mlp.init_mlp(k[3], (5, 8, 8, 3), init="glorot")
    labels = jax.random.randint(k[4], (n,), 0, 3)

    spec = cnn.CNNSpec(height=8, width=8, channels=1, num_classes=10, filters=4, hidden=8)
    apply, cnn_params = cnn.init_cnn(k[5], spec)
    images = jax.random.uniform(k[6], (n, 8, 8, 1))
    digits = jax.random.randint(k[7], (n,), 0, 10)
    drop_key = jax.random.key(1)

    rec = recommender.init(k[2], 7, 9, factors=3, init_scale=0.5, global_mean=3.5)
    ratings = {"user": jax.random.randint(k[3], (3 * n,), 0, 7), "item": jax.random.randint(k[4], (3 * n,), 0, 9),
               "rating": jax.random.uniform(k[5], (3 * n,), minval=1.0, maxval=5.0)}
    return [
        ("linear regression (MSE)", "models.linear", lambda p: losses.mse(linear.linear_apply(p, x), y), (lin,),
         (0,), SMOOTH_RTOL),
        ("MLP 5-8-8-3, tanh, cross-entropy", "models.mlp",
         lambda p: losses.cross_entropy(mlp.mlp_apply(p, x, activation="tanh"), labels), (mlp_params,), (0,),
         SMOOTH_RTOL),
        ("MLP 5-8-8-3, relu, cross-entropy", "models.mlp",
         lambda p: losses.cross_entropy(mlp.mlp_apply(p, x), labels), (mlp_params,), (0,), KINK_RTOL),
        ("CNN (flax NNX; conv, max-pool, dropout), cross-entropy", "models.cnn",
         lambda p: losses.cross_entropy(apply(p, images, key=drop_key, train=True), digits), (cnn_params,), (0,),
         KINK_RTOL),
        ("recommender (biased MF + L2)", "models.recommender", lambda p: recommender.loss(p, ratings, reg=0.05),
         (rec,), (0,), SMOOTH_RTOL),
    ]


def _check(name, function, kind, f, args, argnums, rtol, directions, key):
    # jaxcalc.ops' fast convolution is a custom_vjp (reverse mode only), so the CNN is checked in rev mode.
    modes = ("rev",) if name.startswith("CNN") else ("fwd", "rev")
    try:
        report = check_grads(f, *args, argnums=argnums, rtol=rtol, modes=modes, num_directions=directions, key=key)
        passed, worst, method = True, report.max_rel_error, report.worst.method
    except GradientCheckError as e:
        passed, worst, method = False, e.report.max_rel_error, e.report.worst.method
    return {"name": name, "function": function, "kind": kind, "method": method, "modes": "+".join(modes),
            "rtol": rtol, "worst_rel_error": worst, "passed": passed}


def _plot_losses(writer: RunWriter) -> None:
    """Each loss and its derivative (``jax.grad`` of the jaxcalc loss), over the error or the logit."""
    e = jnp.linspace(-3.0, 3.0, 241)
    zero = jnp.zeros_like(e)
    regression = {
        "squared error (ŷ − y)²": lambda a: losses.squared_error(a, zero),
        "absolute error |ŷ − y|": lambda a: losses.absolute_error(a, zero),
        "Huber, δ = 1": lambda a: losses.huber_loss(a, zero, delta=1.0),
    }
    z = jnp.linspace(-6.0, 6.0, 241)
    ten = jnp.zeros((z.shape[0], 10))
    classification = {
        "binary cross-entropy, label 1": lambda a: losses.sigmoid_binary_cross_entropy(a, jnp.ones_like(a)),
        "binary cross-entropy, label 0": lambda a: losses.sigmoid_binary_cross_entropy(a, jnp.zeros_like(a)),
        "cross-entropy, 10 classes, true logit z (others 0)":
            lambda a: losses.softmax_cross_entropy_with_integer_labels(ten.at[:, 0].set(a),
                                                                        jnp.zeros(a.shape, jnp.int32)),
    }

    @jax.jit
    def curves(e, z):  # per-example losses: the gradient of their sum is each example's derivative
        out = {}
        for group, x in (("regression", e), ("classification", z)):
            for name, f in (regression if group == "regression" else classification).items():
                out[name] = (f(x), jax.grad(lambda v, f=f: jnp.sum(f(v)))(x))
        return out

    values = curves(e, z)
    fig, axes = figure(1, 2, figsize=(12, 4.2))
    for ax, x, group, xlabel in ((axes[0], e, regression, "error e = ŷ − y"),
                                 (axes[1], z, classification, "logit z")):
        for i, name in enumerate(group):
            loss, grad = values[name]
            ax.plot(x, loss, color=f"C{i}", lw=1.6, label=name)
            ax.plot(x, grad, color=f"C{i}", lw=1.2, ls="--")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel=xlabel, ylabel="loss (solid), derivative (dashed)")
        ax.legend(fontsize=8)
    axes[0].set(title="Regression losses and dℓ/dŷ", ylim=(-3.5, 6))
    axes[1].set(title="Classification losses (on logits) and dℓ/dz", ylim=(-1.5, 6.5))
    writer.savefig(fig, "losses")


def _plot_checks(writer: RunWriter, checks: list[dict]) -> None:
    """Worst relative error of each check beside its tolerance (log scale)."""
    fig, ax = figure(figsize=(9, 0.42 * len(checks) + 1.2))
    y = np.arange(len(checks))[::-1]
    errs = np.array([max(c["worst_rel_error"], 1e-17) for c in checks])
    for kind, color in (("loss", "C0"), ("model", "C2")):
        mine = np.array([c["kind"] == kind and c["passed"] for c in checks])
        ax.barh(y[mine], errs[mine], color=color, height=0.6, label=f"{kind}, passed")
    failed = np.array([not c["passed"] for c in checks])
    if failed.any():
        ax.barh(y[failed], errs[failed], color="C3", height=0.6, label="FAILED")
    ax.scatter([c["rtol"] for c in checks], y, marker="|", s=300, color="k", zorder=3, label="tolerance")
    ax.set_xscale("log")
    ax.set_yticks(y, [f"{c['name']}" for c in checks], fontsize=8)
    ax.set_xlabel("worst relative error, autodiff vs float64 central differences (log scale)")
    ax.set_xlim(1e-17, 1e-2)
    ax.axvline(float(np.finfo(np.float64).eps), color="grey", lw=0.6, ls=":")
    ax.annotate("float64 ε", (float(np.finfo(np.float64).eps), y[-1] - 0.6), fontsize=7, color="grey")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Gradient checks: each bar must end left of its tolerance mark")
    writer.savefig(fig, "gradient_checks")


def run(config: Config, out_dir) -> dict:
    writer = RunWriter(out_dir, config)
    key = jax.random.key(config.seed)
    k_loss, k_model, k_dir = jax.random.split(key, 3)
    checks = []
    for kind, cases in (("loss", _loss_cases(k_loss, config.batch)), ("model", _model_cases(k_model, config.batch))):
        for name, function, f, args, argnums, rtol in cases:
            row = _check(name, function, kind, f, args, argnums, rtol, config.directions, k_dir)
            writer.log(**row)
            checks.append(row)
            print(f"{'ok  ' if row['passed'] else 'FAIL'} {name}: worst relative error {row['worst_rel_error']:.1e} "
                  f"(tolerance {rtol:.0e})", flush=True)
    _plot_losses(writer)
    _plot_checks(writer, checks)

    try:  # the article's example 1: predictions (3, 1) against targets (3,)
        losses.mse(jnp.array([[1.0], [2.0], [3.0]]), jnp.array([2.0, 4.0, 6.0]))
        shape_message = "NOT REFUSED"
    except ValueError as e:
        shape_message = str(e).split(";")[0]

    return writer.finish({
        "all_passed": all(c["passed"] for c in checks),
        "checks_run": len(checks),
        "losses_worst_rel_error": max(c["worst_rel_error"] for c in checks if c["kind"] == "loss"),
        "models_worst_rel_error": max(c["worst_rel_error"] for c in checks if c["kind"] == "model"),
        "shape_check_message": shape_message,
        "smooth_rtol": SMOOTH_RTOL,
        "kink_rtol": KINK_RTOL,
        "checks": checks,
    })
