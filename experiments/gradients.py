"""Gradient checks: every jaxcalc loss and model, autodiff against float64 central differences."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxcalc import losses
from jaxcalc.errors import GradientCheckError
from jaxcalc.gradcheck import check_grads
from jaxcalc.runio import RunWriter

NAME = "gradients"

SMOOTH_RTOL = 1e-7   # cs231n's "good" for smooth functions in float64
KINK_RTOL = 1e-4     # where ReLU / max-pool kinks may lie within a step of the point


@dataclass(frozen=True)
class Config:
    seed: int = 0
    batch: int = 6          # examples per check
    directions: int = 4     # random directions per leaf for the large models

    def __post_init__(self):
        if self.batch < 1 or self.directions < 1:
            raise ValueError(f"batch and directions must be >= 1, got {self.batch}, {self.directions}")


QUICK = {"batch": 4, "directions": 2}


def _loss_cases(key, n):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    p, t = jax.random.normal(k1, (n,)), jax.random.normal(k2, (n,))
    logits = 3.0 * jax.random.normal(k3, (n, 4))
    labels = jax.random.randint(k4, (n,), 0, 4)
    probs = jax.nn.softmax(jax.random.normal(k4, (n, 4)))
    bits = (labels % 2).astype(jnp.float32)
    # Huber's kink sits at |e| = delta: the check is away from it unless a residual lands within h.
    return [
        ("mse", losses.mse, (p, t), (0,), SMOOTH_RTOL),
        ("mae", losses.mae, (p, t), (0,), KINK_RTOL),
        ("mean_huber", lambda a, b: losses.mean_huber(a, b, delta=0.5), (p, t), (0,), KINK_RTOL),
        ("cross_entropy (integer labels)", losses.cross_entropy, (logits, labels), (0,), SMOOTH_RTOL),
        ("softmax_cross_entropy (probabilities)", lambda z, q: jnp.mean(losses.softmax_cross_entropy(z, q)),
         (logits, probs), (0, 1), SMOOTH_RTOL),
        ("binary_cross_entropy", losses.binary_cross_entropy, (logits[:, 0], bits), (0,), SMOOTH_RTOL),
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
        ("linear regression (MSE)", lambda p: losses.mse(linear.linear_apply(p, x), y), (lin,), (0,), SMOOTH_RTOL),
        ("MLP 5-8-8-3, tanh, cross-entropy",
         lambda p: losses.cross_entropy(mlp.mlp_apply(p, x, activation="tanh"), labels), (mlp_params,), (0,),
         SMOOTH_RTOL),
        ("MLP 5-8-8-3, relu, cross-entropy",
         lambda p: losses.cross_entropy(mlp.mlp_apply(p, x), labels), (mlp_params,), (0,), KINK_RTOL),
        ("CNN (flax NNX; conv, max-pool, dropout), cross-entropy",
         lambda p: losses.cross_entropy(apply(p, images, key=drop_key, train=True), digits), (cnn_params,), (0,),
         KINK_RTOL),
        ("recommender (biased MF + L2)", lambda p: recommender.loss(p, ratings, reg=0.05), (rec,), (0,),
         SMOOTH_RTOL),
    ]


def _check(name, kind, f, args, argnums, rtol, directions, key):
    # jaxcalc.ops' fast convolution is a custom_vjp (reverse mode only), so the CNN is checked in rev mode.
    modes = ("rev",) if name.startswith("CNN") else ("fwd", "rev")
    try:
        report = check_grads(f, *args, argnums=argnums, rtol=rtol, modes=modes, num_directions=directions, key=key)
        passed, worst, method = True, report.max_rel_error, report.worst.method
    except GradientCheckError as e:
        passed, worst, method = False, e.report.max_rel_error, e.report.worst.method
    return {"name": name, "kind": kind, "method": method, "rtol": rtol, "worst_rel_error": worst, "passed": passed}


def run(config: Config, out_dir) -> dict:
    writer = RunWriter(out_dir, config)
    key = jax.random.key(config.seed)
    k_loss, k_model, k_dir = jax.random.split(key, 3)
    checks = []
    for kind, cases in (("loss", _loss_cases(k_loss, config.batch)), ("model", _model_cases(k_model, config.batch))):
        for name, f, args, argnums, rtol in cases:
            row = _check(name, kind, f, args, argnums, rtol, config.directions, k_dir)
            writer.log(**row)
            checks.append(row)

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
        "checks": checks,
    })
