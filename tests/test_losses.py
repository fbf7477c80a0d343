"""Losses against optax, closed-form gradients, stability and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcalc import losses as L

KEY = jax.random.key(0)


def _rand(shape, key=KEY, scale=1.0):
    return scale * jax.random.normal(key, shape)


# --- values equal optax ---------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (5,), (4, 3)])
def test_regression_losses_match_optax(shape):
    k1, k2 = jax.random.split(KEY)
    p, t = _rand(shape, k1), _rand(shape, k2)
    np.testing.assert_allclose(L.squared_error(p, t), optax.losses.squared_error(p, t), rtol=1e-6)
    np.testing.assert_allclose(L.huber(p, t, delta=0.7), optax.losses.huber_loss(p, t, delta=0.7), rtol=1e-6)
    np.testing.assert_allclose(L.absolute_error(p, t), jnp.abs(p - t), rtol=1e-6)  # numpy definition


def test_classification_losses_match_optax():
    k1, k2, k3 = jax.random.split(KEY, 3)
    logits = _rand((6, 4), k1, 3.0)
    labels = jax.random.randint(k2, (6,), 0, 4)
    probs = jax.nn.softmax(_rand((6, 4), k3))
    np.testing.assert_allclose(
        L.softmax_cross_entropy_with_integer_labels(logits, labels),
        optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, probs),
                               optax.losses.softmax_cross_entropy(logits, probs), rtol=1e-5)
    bin_labels = (labels % 2).astype(jnp.float32)
    np.testing.assert_allclose(L.sigmoid_binary_cross_entropy(logits[:, 0], bin_labels),
                               optax.losses.sigmoid_binary_cross_entropy(logits[:, 0], bin_labels), rtol=1e-5)


def test_reductions_are_means_and_jit():
    p, t = jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 2.0, 5.0])
    assert float(L.mse(p, t)) == pytest.approx(5 / 3)  # by hand: (1 + 0 + 4) / 3
    assert float(L.mae(p, t)) == pytest.approx(1.0)     # by hand: (1 + 0 + 2) / 3
    assert float(jax.jit(L.mse)(p, t)) == pytest.approx(5 / 3)
    logits = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    assert float(jax.jit(L.cross_entropy)(logits, jnp.array([0, 1]))) == pytest.approx(np.log(2))
    assert float(L.binary_cross_entropy(jnp.zeros(2), jnp.array([0.0, 1.0]))) == pytest.approx(np.log(2))


# --- analytic gradients ---------------------------------------------------------

def test_mse_gradient_closed_form(x64):
    k1, k2 = jax.random.split(KEY)
    p, t = _rand((7,), k1).astype(jnp.float64), _rand((7,), k2).astype(jnp.float64)
    g = jax.grad(L.mse)(p, t)
    np.testing.assert_allclose(g, 2 * (p - t) / 7, rtol=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_one_hot(x64):
    k1, k2 = jax.random.split(KEY)
    logits = _rand((5, 3), k1).astype(jnp.float64)
    labels = jax.random.randint(k2, (5,), 0, 3)
    g = jax.grad(L.cross_entropy)(logits, labels)
    expected = (jax.nn.softmax(logits) - jax.nn.one_hot(labels, 3, dtype=jnp.float64)) / 5
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_bce_gradient_is_sigmoid_minus_label(x64):
    z = jnp.array([-2.0, 0.5, 3.0], dtype=jnp.float64)
    y = jnp.array([0.0, 1.0, 1.0], dtype=jnp.float64)
    np.testing.assert_allclose(jax.grad(L.binary_cross_entropy)(z, y), (jax.nn.sigmoid(z) - y) / 3, rtol=1e-12)


# --- numerical stability ----------------------------------------------------------

@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits_finite(scale):
    logits = jnp.array([[scale, 0.0, -scale], [0.0, scale, 1.0]], dtype=jnp.float32)
    labels = jnp.array([2, 0])
    for fn, args in [
        (L.cross_entropy, (logits, labels)),
        (L.binary_cross_entropy, (logits[:, 0], jnp.array([0.0, 1.0]))),
        (lambda z, p: jnp.mean(L.softmax_cross_entropy(z, p)), (logits, jax.nn.one_hot(labels, 3))),
    ]:
        value, grad = jax.value_and_grad(fn)(*args)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), fn
    # the loss of a confidently wrong prediction is the margin, not inf (closed form)
    wrong = L.softmax_cross_entropy_with_integer_labels(jnp.array([[1e4, 0.0]]), jnp.array([1]))
    assert float(wrong[0]) == pytest.approx(1e4)


# --- bad input ------------------------------------------------------------------------

def test_article_example1_shapes_refused():
    X = jnp.array([[1.0], [2.0], [3.0]])   # (3, 1) as in the article
    y = jnp.array([2.0, 4.0, 6.0])         # (3,)
    with pytest.raises(ValueError, match=r"predictions \(3, 1\) vs targets \(3,\)"):
        L.mse(2.0 * X, y)
    with pytest.raises(ValueError, match=r"\(3, 1\).*\(3,\)"):
        jax.jit(L.squared_error)(X, y)  # refused at trace time too


def test_non_floating_predictions_type_error():
    with pytest.raises(TypeError, match="floating"):
        L.mse(jnp.array([1, 2]), jnp.array([1, 2]))
    with pytest.raises(TypeError, match="floating"):
        L.cross_entropy(jnp.array([[1, 2]]), jnp.array([0]))
    with pytest.raises(TypeError, match="integer"):
        L.cross_entropy(jnp.zeros((1, 2)), jnp.array([0.0]))


def test_label_out_of_range_names_index_and_value():
    logits = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"labels\[2\] = 3 .*\[0, 3\)"):
        L.cross_entropy(logits, jnp.array([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"labels\[0\] = -1"):
        L.cross_entropy(logits, jnp.array([-1, 1, 0, 2]))


def test_label_shape_mismatch():
    with pytest.raises(ValueError, match=r"logits \(4, 3\).*labels \(4, 1\)"):
        L.cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 1), dtype=jnp.int32))


def test_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        L.mse(jnp.zeros((0,)), jnp.zeros((0,)))
    with pytest.raises(ValueError, match="empty"):
        L.cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), dtype=jnp.int32))


def test_huber_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        L.huber(jnp.zeros(2), jnp.zeros(2), delta=0.0)


# --- properties (hypothesis) ---------------------------------------------------------

_floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(st.lists(_floats, min_size=5, max_size=5), st.lists(_floats, min_size=5, max_size=5))
def test_regression_losses_properties(p, t):
    p, t = jnp.array(p, jnp.float32), jnp.array(t, jnp.float32)
    assert float(L.mse(p, t)) >= 0 and float(L.mae(p, t)) >= 0
    np.testing.assert_allclose(L.mse(p, t), L.mse(t, p), rtol=1e-6)          # symmetric
    np.testing.assert_allclose(L.huber(p, t, delta=1e6), 0.5 * L.squared_error(p, t), rtol=1e-5)  # huge delta: ½e²


@settings(max_examples=25, deadline=None)
@given(st.lists(_floats, min_size=4, max_size=4), st.integers(0, 3))
def test_cross_entropy_properties(z, label):
    logits = jnp.array([z], jnp.float32)
    labels = jnp.array([label])
    value = float(L.cross_entropy(logits, labels))
    assert value >= 0 and np.isfinite(value)
    grad = jax.grad(L.cross_entropy)(logits, labels)
    assert abs(float(jnp.sum(grad))) < 1e-5     # softmax − one_hot sums to zero
    shifted = float(L.cross_entropy(logits + 7.0, labels))  # invariant to adding a constant to every logit
    assert shifted == pytest.approx(value, rel=1e-4, abs=1e-3)
