"""Hand-written backprop vs jax.grad / jax.vjp / finite differences (jax.test_util.check_grads)."""
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxcalc import backprop as bp
from jaxcalc import losses
from jaxcalc.models.mlp import ACTIVATIONS, init_mlp, mlp_loss


def _problem(depth, batch, loss, dtype, seed=0, d_in=7, width=9, k=4):
    """A random MLP with ``depth`` dense layers and a batch of inputs/targets.

    Drawn with numpy (cheap: no per-shape compilation of jax.random kernels).
    """
    rng = np.random.default_rng(seed)
    sizes = (d_in,) + (width,) * (depth - 1) + (k,)
    params = [(jnp.asarray(rng.normal(size=(m, n)) * np.sqrt(2.0 / (m + n)), dtype),
               jnp.asarray(rng.normal(size=(n,)) * 0.1, dtype))
              for m, n in itertools.pairwise(sizes)]
    x = jnp.asarray(rng.normal(size=(batch, d_in)), dtype)
    if loss == "mse":
        y = jnp.asarray(rng.normal(size=(batch, k)), dtype)
    else:
        y = jnp.asarray(rng.integers(0, k, size=(batch,)), jnp.int32)
    return params, x, y


# Depths 1..5 and batch sizes 1..512: each depth meets a different batch size (and
# activation / head), so every depth and every batch size is covered with few compiles.
CASES = [
    (1, 1, "mse", "relu"),
    (2, 512, "cross_entropy", "tanh"),
    (3, 37, "mse", "sigmoid"),
    (4, 1, "cross_entropy", "relu"),
    (5, 512, "mse", "tanh"),
]


@partial(jax.jit, static_argnames=("loss", "activation"))
def _compare(params, x, y, *, loss, activation):
    """Hand-written, per-layer-vjp and jax.grad gradients; their max relative differences."""
    ref = jax.grad(mlp_loss)(params, {"x": x, "y": y}, loss=loss, activation=activation)
    mine = bp.backprop_grads(params, x, y, loss=loss, activation=activation)
    via_vjp = bp.vjp_backprop_grads(params, x, y, loss=loss, activation=activation)
    return mine, ref, bp.max_relative_difference(mine, ref), bp.max_relative_difference(via_vjp, ref)


@pytest.mark.parametrize("depth,batch,loss,act", CASES)
def test_backprop_equals_jax_grad_float64(x64, depth, batch, loss, act):
    params, x, y = _problem(depth, batch, loss, jnp.float64)
    mine, ref, rel, rel_vjp = _compare(params, x, y, loss=loss, activation=act)
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(params)
    assert mine[0][0].dtype == jnp.float64
    assert float(rel) <= 1e-10
    assert float(rel_vjp) <= 1e-10
    # stricter, entry by entry (absolute floor for entries that are zero up to rounding)
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("depth,batch,loss,act", CASES)
def test_backprop_equals_jax_grad_float32(depth, batch, loss, act):
    params, x, y = _problem(depth, batch, loss, jnp.float32)
    mine, _, rel, rel_vjp = _compare(params, x, y, loss=loss, activation=act)
    assert mine[0][0].dtype == jnp.float32
    assert float(rel) <= 1e-5
    assert float(rel_vjp) <= 1e-5


@pytest.mark.parametrize("loss,act", [("mse", "relu"), ("cross_entropy", "tanh"), ("mse", "sigmoid")])
def test_backprop_passes_check_grads(x64, act, loss):
    # jax.grad(backprop_loss) runs the hand-written backward (custom_vjp); check_grads
    # compares it with central finite differences along a random direction.
    params, x, y = _problem(3, 5, loss, jnp.float64, seed=1)
    if loss == "mse":
        f = jax.jit(lambda p, x, y: bp.backprop_loss(p, x, y, loss=loss, activation=act))
        check_grads(f, (params, x, y), order=1, modes=["rev"])
    else:
        f = jax.jit(lambda p, x: bp.backprop_loss(p, x, y, loss=loss, activation=act))
        check_grads(f, (params, x), order=1, modes=["rev"])


def test_backprop_loss_grad_is_the_manual_pass(x64):
    params, x, y = _problem(4, 11, "mse", jnp.float64, seed=2)
    value, grads = jax.jit(jax.value_and_grad(partial(bp.backprop_loss, activation="sigmoid")))(params, x, y)
    v2, g2 = jax.jit(partial(bp.backprop_value_and_grads, activation="sigmoid"))(params, x, y)
    assert float(value) == float(v2)
    assert float(bp.max_relative_difference(grads, g2)) == 0.0
    # and the input gradient (one more chain-rule step through layer 1) matches jax.grad
    dx = jax.jit(jax.grad(partial(bp.backprop_loss, activation="sigmoid"), argnums=1))(params, x, y)
    dx_ref = jax.jit(jax.grad(lambda x: mlp_loss(params, {"x": x, "y": y}, activation="sigmoid")))(x)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("loss,act", [("mse", "relu"), ("cross_entropy", "tanh")])
def test_loss_values_agree_with_jaxcalc_losses(x64, loss, act):
    params, x, y = _problem(2, 6, loss, jnp.float64)

    @jax.jit
    def both(params, x, y):
        out, _ = bp.mlp_forward(params, x, activation=act)
        v, _ = bp.backprop_value_and_grads(params, x, y, loss=loss, activation=act)
        return v, (losses.mse(out, y) if loss == "mse" else losses.cross_entropy(out, y))

    v, ref = both(params, x, y)
    assert float(v) == float(ref)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "identity"])
def test_each_activation_backward_is_its_vjp(x64, name):
    fwd = getattr(bp, f"{name}_forward")
    bwd = getattr(bp, f"{name}_backward")
    z = jnp.array([[-3.0, -0.5, 0.0, 0.25, 4.0], [1e-3, -1e-3, 2.0, -2.0, 0.0]])
    dout = jnp.arange(10.0).reshape(2, 5) - 4.5
    out, cache = fwd(z)
    ref_out, vjp = jax.vjp(ACTIVATIONS[name], z)
    np.testing.assert_allclose(out, ref_out, rtol=1e-15)
    np.testing.assert_allclose(bwd(cache, dout), vjp(dout)[0], rtol=1e-13, atol=1e-300)


def test_relu_kink_derivative_is_zero():
    # jax.nn.relu's derivative at 0 is 0; the hand-written rule uses the same convention.
    _, cache = bp.relu_forward(jnp.zeros((1, 3)))
    assert np.all(np.asarray(bp.relu_backward(cache, jnp.ones((1, 3)))) == 0.0)


def test_dense_backward_is_its_vjp(x64):
    rng = np.random.default_rng(5)
    x, w, b, dz = (jnp.asarray(rng.normal(size=s)) for s in [(6, 3), (3, 4), (4,), (6, 4)])
    _, cache = bp.dense_forward(x, w, b)
    _, vjp = jax.vjp(lambda x, w, b: x @ w + b[None, :], x, w, b)
    for mine, ref in zip(bp.dense_backward(cache, dz), vjp(dz), strict=True):
        np.testing.assert_allclose(mine, ref, rtol=1e-13)


def test_cross_entropy_head_is_softmax_minus_one_hot_at_extreme_logits():
    # closed form: d mean(CE)/dz = (softmax(z) - one_hot(y)) / n, finite at |z| = 1e4
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], jnp.float32)
    labels = jnp.array([1, 2])
    v, cache = bp.cross_entropy_forward(logits, labels)
    d = bp.cross_entropy_backward(cache)
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(d)))
    ref = jax.grad(losses.cross_entropy)(logits, labels)
    np.testing.assert_allclose(d, ref, atol=1e-7)
    # by hand: row 0 softmax = (1, 0, 0) -> ((1, -1, 0))/2; row 1 = (0, .5, .5) -> (0, .5, -.5)/2
    np.testing.assert_allclose(d, [[0.5, -0.5, 0.0], [0.0, 0.25, -0.25]], atol=1e-7)


def test_mse_head_refuses_broadcast():
    # the article's (n, 1) vs (n,) slip is an error, not a silent (n, n) broadcast
    params = init_mlp(jax.random.key(0), (2, 3, 1))
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(4,\)"):
        bp.backprop_grads(params, x, jnp.ones((4,)))


def test_bad_inputs_raise():
    params = init_mlp(jax.random.key(0), (2, 3, 1))
    with pytest.raises(ValueError, match="unknown loss"):
        bp.backprop_grads(params, jnp.ones((4, 2)), jnp.ones((4, 1)), loss="hinge")
    with pytest.raises(ValueError, match="unknown activation"):
        bp.backprop_grads(params, jnp.ones((4, 2)), jnp.ones((4, 1)), activation="gelu")
    with pytest.raises(ValueError, match="features"):
        bp.backprop_grads(params, jnp.ones((4, 5)), jnp.ones((4, 1)))
    with pytest.raises(ValueError, match=r"\(n, d_in\)"):
        bp.backprop_grads(params, jnp.ones((2,)), jnp.ones((1,)))
    with pytest.raises(TypeError, match="floating"):
        bp.backprop_grads(params, jnp.ones((4, 2), jnp.int32), jnp.ones((4, 1)))
    with pytest.raises(ValueError, match=r"\(W, b\)"):
        bp.backprop_grads([params[0][0]], jnp.ones((4, 2)), jnp.ones((4, 1)))


def test_max_relative_difference_detects_a_wrong_gradient(x64):
    params, x, y = _problem(2, 6, "mse", jnp.float64)
    ref = jax.jit(bp.autodiff_grads)(params, x, y)
    wrong = jax.tree_util.tree_map(lambda g: g * (1 + 1e-3), ref)
    assert 0.5e-3 < float(bp.max_relative_difference(wrong, ref)) < 2e-3


def test_backprop_passes_jaxcalc_check_grads():
    # jaxcalc's own checker, every coordinate, leaf by leaf (reverse mode: custom_vjp has no jvp).
    import jaxcalc

    params, x, y = _problem(2, 4, "mse", jnp.float32, seed=4, d_in=3, width=5, k=2)  # cast up inside
    report = jaxcalc.check_grads(lambda p: bp.backprop_loss(p, x, y, activation="tanh"), params,
                                 modes=("rev",), method="full")
    assert report.passed and report.max_rel_error < 1e-6
    assert len(report.results) == 4  # W1, b1, W2, b2
