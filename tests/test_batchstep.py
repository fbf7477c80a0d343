"""jaxcalc.batchstep: the jaxpr proof of "mean over examples", chunked accumulation, feature-major layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcalc import batchstep, checks, losses
from jaxcalc.models.linear import mse_loss
from jaxcalc.models.mlp import init_mlp, mlp_apply

N, D, K = 10, 3, 4
X = jax.random.normal(jax.random.key(0), (N, D))
Y = jax.random.normal(jax.random.key(1), (N,))
LABELS = jnp.arange(N) % K
LIN = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.3)}
MLP = init_mlp(jax.random.key(2), (D, 5, K))
REG = {"x": X, "y": Y}
CLS = {"x": X, "y": LABELS}


def _ce(p, b):
    return losses.cross_entropy(mlp_apply(p, b["x"]), b["y"])


def _pred(p, b):
    return b["x"] @ p["w"] + p["b"]


def _checked_ce(p, b):  # a loss with a value check: the check does not enter the loss value
    checks.check_entries(b["y"] < 0, b["y"], name="labels", condition="is negative")
    return _ce(p, b)


def _branchy(p, b):  # a Python branch on the batch size
    e = losses.squared_error(_pred(p, b), b["y"])
    return jnp.mean(e) if b["x"].shape[0] > 5 else jnp.mean(2 * e)


MEANS = {
    "mse": (mse_loss, LIN, REG),
    "mse + l2 penalty": (lambda p, b: mse_loss(p, b) + 0.1 * jnp.sum(p["w"] ** 2), LIN, REG),
    "0.5 * mean over all entries": (lambda p, b: 0.5 * jnp.mean((b["x"] * p["w"][None, :]) ** 2), LIN, REG),
    "cross-entropy of an MLP": (_ce, MLP, CLS),
    "cross-entropy with a value check": (_checked_ce, MLP, CLS),
    "mean poisoned with NaN where bad": (lambda p, b: jnp.mean(checks.poison(
        losses.squared_error(_pred(p, b), b["y"]), b["y"] < -100.0)), LIN, REG),
}
NOT_MEANS = {
    "sum": (lambda p, b: jnp.sum(losses.squared_error(_pred(p, b), b["y"])), LIN, REG, "scaled by"),
    "root of a mean": (lambda p, b: jnp.sqrt(mse_loss(p, b)), LIN, REG, "not linear"),
    "batch-centred inputs": (lambda p, b: mse_loss(p, {"x": b["x"] - jnp.mean(b["x"], 0, keepdims=True),
                                                       "y": b["y"]}), LIN, REG, "combined with per-example"),
    "median": (lambda p, b: jnp.median(losses.squared_error(_pred(p, b), b["y"])), LIN, REG, "batch axis"),
    "batch size as a number": (lambda p, b: jnp.mean(b["x"].shape[0] * (_pred(p, b) - b["y"]) ** 2), LIN, REG,
                               "literal"),
    "weights by position": (lambda p, b: jnp.mean(jnp.arange(b["y"].shape[0]) * (_pred(p, b) - b["y"]) ** 2),
                            LIN, REG, "shape depends"),
    "python branch on n": (_branchy, LIN, REG, "traces differently"),
    "mean over features only": (lambda p, b: jnp.sum(jnp.mean(b["x"] * p["w"][None, :], axis=1)), LIN, REG,
                                "scaled by"),
}


@pytest.mark.parametrize("name", list(MEANS))
def test_proves_means(name):
    fn, params, batch = MEANS[name]
    proof = batchstep.prove_mean_over_examples(fn, params, batch, 3)
    assert proof.ok, proof.reason
    assert proof.example_bytes > 0


@pytest.mark.parametrize("name", list(NOT_MEANS))
def test_refuses_what_is_not_a_mean(name):
    fn, params, batch, why = NOT_MEANS[name]
    proof = batchstep.prove_mean_over_examples(fn, params, batch, 3)
    assert not proof.ok and why in proof.reason, proof.reason


@pytest.mark.parametrize("name,chunk", [("mse", 3), ("cross-entropy of an MLP", 4), ("mse + l2 penalty", 5)])
def test_chunked_value_and_grad_equals_whole_batch(name, chunk):
    fn, params, batch = MEANS[name]
    ref_loss, ref_grad = jax.value_and_grad(fn)(params, batch)
    loss, grad = jax.jit(batchstep.chunked_value_and_grad, static_argnums=(0, 3))(fn, params, batch, chunk)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_foldable_leaves():
    big = {"x": jnp.ones((64, D)), "y": jnp.ones(64)}
    assert batchstep.foldable_leaves(mse_loss, LIN, big) == (True, False)
    # a matrix-matrix product (an MLP layer), an elementwise use, too few examples: kept as given
    assert batchstep.foldable_leaves(_ce, MLP, {"x": jnp.ones((64, D)), "y": jnp.zeros(64, jnp.int32)}) == (False,
                                                                                                       False)
    assert batchstep.foldable_leaves(lambda p, b: mse_loss(p, {"x": b["x"] ** 2, "y": b["y"]}), LIN, big)[0] is False
    assert batchstep.foldable_leaves(mse_loss, LIN, REG)[0] is False  # n < 4 d


def test_fold_layout_gives_the_same_loss_and_gradient():
    x = jax.random.normal(jax.random.key(3), (64, D))
    y = jax.random.normal(jax.random.key(4), (64,))
    batch = {"x": x, "y": y}
    loss_t = batchstep.fold_layout(mse_loss, LIN, batch, (True, False))
    got = jax.jit(jax.value_and_grad(loss_t))(LIN, {"x": x.T, "y": y})
    ref = jax.value_and_grad(mse_loss)(LIN, batch)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # the stored transpose is what the products read: no transpose of it in the gradient's program
    text = str(jax.make_jaxpr(jax.grad(loss_t))(LIN, {"x": x.T, "y": y}))
    assert "transpose" not in text and text.count("dot_general") == 2
