"""The pure MLP and its flax NNX twin: shapes, inits, heads, same weights -> same training."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcalc.models.mlp import (
    MLP,
    init_mlp,
    mlp_apply,
    mlp_from_params,
    mlp_loss,
    mlp_to_params,
    nnx_mlp_loss,
    param_count,
)

X2 = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # the article's example 2
Y2 = jnp.array([2.0, 6.0])


def test_shapes_and_param_count():
    params = init_mlp(jax.random.key(0), (2, 10, 10, 1), init="glorot_uniform")
    assert [(w.shape, b.shape) for w, b in params] == [((2, 10), (10,)), ((10, 10), (10,)), ((10, 1), (1,))]
    assert param_count(params) == 151  # by hand: (2*10+10) + (10*10+10) + (10*1+1), as Keras' summary
    assert all(float(jnp.max(jnp.abs(b))) == 0.0 for _, b in params)


def test_glorot_uniform_bound_and_he_scale():
    params = init_mlp(jax.random.key(1), (300, 200), init="glorot_uniform")
    lim = math.sqrt(6.0 / 500)  # Keras GlorotUniform limit
    w = np.asarray(params[0][0])
    assert np.abs(w).max() <= lim and np.abs(w).max() > 0.95 * lim
    w_he = np.asarray(init_mlp(jax.random.key(1), (300, 200), init="he")[0][0])
    assert abs(w_he.std() / math.sqrt(2 / 300) - 1) < 0.1  # He: std = sqrt(2 / fan_in)


def test_apply_single_example_equals_batch_row():
    params = init_mlp(jax.random.key(2), (2, 10, 10, 1), init="glorot_uniform")
    batch = mlp_apply(params, X2, activation="tanh")
    single = mlp_apply(params, X2[1], activation="tanh")
    assert batch.shape == (2, 1) and single.shape == (1,)
    np.testing.assert_allclose(single, batch[1], rtol=1e-6)


def test_mse_head_needs_explicit_target_shape():
    params = init_mlp(jax.random.key(0), (2, 10, 10, 1), init="glorot_uniform")
    with pytest.raises(ValueError, match=r"\(2, 1\).*\(2,\)"):
        mlp_loss(params, {"x": X2, "y": Y2})
    assert mlp_loss(params, {"x": X2, "y": Y2[:, None]}).shape == ()


def test_cross_entropy_head_matches_optax():
    params = init_mlp(jax.random.key(3), (2, 4, 3))
    labels = jnp.array([0, 2])
    ref = optax.softmax_cross_entropy_with_integer_labels(mlp_apply(params, X2), labels).mean()
    np.testing.assert_allclose(mlp_loss(params, {"x": X2, "y": labels}, loss="cross_entropy"), ref, rtol=1e-6)


def test_bad_names_raise():
    params = init_mlp(jax.random.key(0), (2, 10, 10, 1), init="glorot_uniform")
    with pytest.raises(ValueError, match="unknown activation"):
        mlp_apply(params, X2, activation="gelu")
    with pytest.raises(ValueError, match="unknown loss"):
        mlp_loss(params, {"x": X2, "y": Y2[:, None]}, loss="hinge")
    with pytest.raises(ValueError, match="unknown init"):
        MLP((2, 3), init="zeros", rngs=nnx.Rngs(0))


def test_nnx_module_shapes_and_init():
    model = MLP((2, 10, 10, 1), init="glorot_uniform", rngs=nnx.Rngs(0))
    _, state = nnx.split(model)
    assert param_count(state) == 151
    for layer in model.layers:
        w = np.asarray(layer.kernel[...])
        assert np.abs(w).max() <= math.sqrt(6.0 / sum(w.shape))  # Keras GlorotUniform limit
    assert model(X2).shape == (2, 1)


def test_nnx_roundtrip_same_numbers_same_outputs():
    params = init_mlp(jax.random.key(4), (2, 10, 10, 1), init="glorot_uniform")
    model = mlp_from_params(params, activation="relu")
    back = mlp_to_params(model)
    for (w, b), (w2, b2) in zip(params, back, strict=True):
        assert np.array_equal(w, w2) and np.array_equal(b, b2)
    np.testing.assert_array_equal(model(X2), mlp_apply(params, X2))


def test_nnx_training_through_split_merge_matches_pure():
    # Same initial weights -> the same Adam trajectory whether the model is the pure list of
    # (W, b) or the NNX module split into (graphdef, state); 30 steps in one lax.scan each.
    params = init_mlp(jax.random.key(5), (2, 10, 10, 1), init="glorot_uniform")
    graphdef, state = nnx.split(mlp_from_params(params))
    batch = {"x": X2, "y": Y2[:, None]}
    opt = optax.adam(1e-2)

    def train(loss_fn, p):
        def step(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, _), losses_ = jax.lax.scan(step, (p, opt.init(p)), None, length=30)
        return p, losses_

    p_pure, l_pure = jax.jit(lambda p: train(lambda q: mlp_loss(q, batch), p))(params)
    s_nnx, l_nnx = jax.jit(lambda s: train(lambda q: nnx_mlp_loss(q, graphdef, batch), s))(state)
    np.testing.assert_allclose(l_nnx, l_pure, rtol=1e-5, atol=1e-7)
    assert float(l_pure[-1]) < 0.5 * float(l_pure[0])  # it did train
    trained = nnx.merge(graphdef, s_nnx)
    for (w, b), (w2, b2) in zip(mlp_to_params(trained), p_pure, strict=True):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-6)
