"""The article's CNN: parameter counts, forward pass against a plain-lax reference, dropout keys, loss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcalc.models.cnn import CNNSpec, abstract_params, init_cnn, make_loss, param_count

DIGITS = CNNSpec(height=8, width=8, channels=1, num_classes=10)


@pytest.fixture(scope="module")
def digits_model():
    apply, params = init_cnn(jax.random.key(0), DIGITS)
    return jax.jit(apply, static_argnames="train"), params


def test_param_count_cifar():
    # Keras model.summary() of the article's model on 32x32x3: conv2d 896, dense 460,864, dense_1 650.
    _, params = abstract_params(CNNSpec())
    assert param_count(params) == 462_410
    assert CNNSpec().param_count == 462_410


def test_param_count_digits(digits_model):
    # By hand: conv 3*3*1*32 + 32 = 320; (8-2)//2 = 3 -> 3*3*32 = 288 features; 288*64 + 64 = 18,496;
    # 64*10 + 10 = 650.
    _, params = digits_model
    assert param_count(params) == 320 + 18_496 + 650 == DIGITS.param_count


def test_shapes_of_other_configurations():
    spec = CNNSpec(height=7, width=9, channels=2, num_classes=3)
    apply, params = abstract_params(spec)
    assert jax.eval_shape(apply, params, jax.ShapeDtypeStruct((4, 7, 9, 2), jnp.float32)).shape == (4, 3)
    assert param_count(params) == spec.param_count  # (7-2)//2 = 2, (9-2)//2 = 3 -> 2*3*32 features


def _reference_forward(params, x):
    # Plain lax + numpy matmuls, independent of jaxcalc.ops and flax's modules.
    y = jax.lax.conv_general_dilated(x, params["conv_kernel"][...], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + params["conv_bias"][...][None, None, None, :])
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    y = y.reshape(y.shape[0], -1)
    y = jax.nn.relu(y @ params["dense"]["kernel"][...] + params["dense"]["bias"][...][None, :])
    return y @ params["out"]["kernel"][...] + params["out"]["bias"][...][None, :]


def test_eval_forward_matches_lax_reference(digits_model):
    apply, params = digits_model
    x = jax.random.uniform(jax.random.key(2), (5, 8, 8, 1))
    np.testing.assert_allclose(apply(params, x), jax.jit(_reference_forward)(params, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(apply(params, x), apply(params, x))  # eval has no randomness


def test_dropout_uses_the_explicit_key(digits_model):
    apply, params = digits_model
    x = jax.random.uniform(jax.random.key(3), (16, 8, 8, 1))
    k1, k2 = jax.random.split(jax.random.key(4))
    a, b, c = (apply(params, x, key=k, train=True) for k in (k1, k1, k2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, apply(params, x))
    with pytest.raises(ValueError, match="train=True needs a dropout key"):
        apply(params, x, train=True)


def test_bad_inputs(digits_model):
    apply, params = digits_model
    with pytest.raises(ValueError, match=r"shape \(n, 8, 8, 1\).*got \(2, 8, 8, 3\)"):
        apply(params, jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(TypeError, match="floating point"):
        apply(params, jnp.zeros((2, 8, 8, 1), jnp.uint8))
    with pytest.raises(ValueError, match="too small"):
        CNNSpec(height=3, width=3)
    with pytest.raises(ValueError, match="num_classes"):
        CNNSpec(num_classes=1)


def test_loss_is_softmax_cross_entropy_on_logits(digits_model):
    apply, params = digits_model
    loss = make_loss(apply)
    x = jax.random.uniform(jax.random.key(7), (6, 8, 8, 1))
    y = jnp.array([0, 1, 2, 3, 4, 9], jnp.int32)
    value, logits = loss(params, {"x": x, "y": y}, None, train=False)
    ref = optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()
    np.testing.assert_allclose(value, ref, rtol=1e-6)
    np.testing.assert_array_equal(logits, apply(params, x))


def test_gradient_matches_lax_reference(digits_model):
    # jaxcalc.ops may use a hand-written backward pass; the gradient must equal that of plain lax.
    apply, params = digits_model
    x = jax.random.uniform(jax.random.key(8), (4, 8, 8, 1))
    y = jnp.array([1, 5, 7, 0], jnp.int32)
    g = jax.jit(jax.grad(lambda p: make_loss(apply)(p, {"x": x, "y": y}, None, train=False)[0]))(params)
    g_ref = jax.jit(jax.grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(_reference_forward(p, x), y).mean()))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
