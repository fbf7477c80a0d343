"""Losses against optax, closed-form gradients, stability and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcalc import checks
from jaxcalc import losses as L

KEY = jax.random.key(0)


def _rand(shape, key=KEY, scale=1.0):
    return scale * jax.random.normal(key, shape)


# --- values (optax comparisons: tests/test_losses_optax_compat.py) ------------------------

def test_absolute_error_and_l2_by_definition():
    p, t = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.0, 1.0, 0.5])
    np.testing.assert_allclose(L.absolute_error(p, t), [1.0, 3.0, 0.0])   # by hand
    np.testing.assert_allclose(L.l2_loss(p, t), [0.5, 4.5, 0.0])          # by hand: ½e²
    np.testing.assert_allclose(L.absolute_error(p), np.abs(np.asarray(p)))  # targets=None means zeros


def test_reductions_are_means_and_jit():
    p, t = jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 2.0, 5.0])
    assert float(L.mse(p, t)) == pytest.approx(5 / 3)  # by hand: (1 + 0 + 4) / 3
    assert float(L.mae(p, t)) == pytest.approx(1.0)     # by hand: (1 + 0 + 2) / 3
    assert float(jax.jit(L.mse)(p, t)) == pytest.approx(5 / 3)
    logits = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    assert float(jax.jit(L.cross_entropy)(logits, jnp.array([0, 1]))) == pytest.approx(np.log(2))
    assert float(L.binary_cross_entropy(jnp.zeros(2), jnp.array([0.0, 1.0]))) == pytest.approx(np.log(2))
    # mean Huber = mean of the per-element huber_loss; by hand with delta=1: e = (-1, 0, -2) -> (0.5, 0, 1.5)
    assert float(L.mean_huber(p, t)) == pytest.approx(2 / 3)
    np.testing.assert_allclose(L.huber_loss(p, t), [0.5, 0.0, 1.5])


# --- analytic gradients ---------------------------------------------------------

# (inputs from numpy and gradients through one jit: eager jax would compile each primitive on its own)
_NP = np.random.default_rng(0)


def test_mse_gradient_closed_form(x64):
    p, t = _NP.standard_normal(7), _NP.standard_normal(7)  # float64
    g = jax.jit(jax.grad(L.mse))(p, t)
    np.testing.assert_allclose(g, 2 * (p - t) / 7, rtol=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_one_hot(x64):
    logits = _NP.standard_normal((5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    g = jax.jit(jax.grad(L.cross_entropy))(logits, labels)
    softmax = np.exp(logits) / np.sum(np.exp(logits), axis=1, keepdims=True)
    expected = (softmax - np.eye(3)[labels]) / 5  # numpy
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_bce_gradient_is_sigmoid_minus_label(x64):
    z = np.array([-2.0, 0.5, 3.0])
    y = np.array([0.0, 1.0, 1.0])
    np.testing.assert_allclose(jax.jit(jax.grad(L.binary_cross_entropy))(z, y), (1 / (1 + np.exp(-z)) - y) / 3,
                               rtol=1e-12)


# --- numerical stability ----------------------------------------------------------

@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits_finite(scale):
    logits = np.array([[scale, 0.0, -scale], [0.0, scale, 1.0]], dtype=np.float32)
    labels = np.array([2, 0])
    losses = [lambda z: L.cross_entropy(z, labels),
              lambda z: L.binary_cross_entropy(z[:, 0], np.array([0.0, 1.0], np.float32)),
              lambda z: jnp.mean(L.softmax_cross_entropy(z, np.eye(3, dtype=np.float32)[labels]))]
    results = jax.jit(lambda z: [jax.value_and_grad(f)(z) for f in losses])(logits)
    for value, grad in results:
        assert np.isfinite(value) and np.all(np.isfinite(grad))
    # the loss of a confidently wrong prediction is the margin, not inf (closed form)
    wrong = L.softmax_cross_entropy_with_integer_labels(np.array([[1e4, 0.0]], np.float32), np.array([1]))
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


def test_label_shape_mismatch():
    with pytest.raises(ValueError, match=r"logits \(4, 3\).*labels \(4, 1\)"):
        L.cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 1), dtype=jnp.int32))


def test_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        L.mse(jnp.zeros((0,)), jnp.zeros((0,)))
    with pytest.raises(ValueError, match="empty"):
        L.cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), dtype=jnp.int32))


# --- value checks: eagerly, NaN under a plain jit, the same ValueError through checks.checkify_fn -----
# Each case: (loss(x, data) -> scalar, x, valid data, bad data, message). Cases that share a loss share its
# compiled programs (same shapes), so 7 cases cost 4 losses x 5 programs.

_K = 10
_LOGITS = jnp.zeros((3, _K)).at[:, _K - 1].set(5.0)  # favours the last class: -1 read as "last" would look fine
_PROBS = jnp.array([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])


def _softmax_ce_mean(z, p):
    return jnp.mean(L.softmax_cross_entropy(z, p))


def _huber_mean(p, delta):
    return L.mean_huber(p, jnp.zeros_like(p), delta=delta)


VALUE_CASES = {
    "label k": (L.cross_entropy, _LOGITS, jnp.array([1, 2, 3]), jnp.array([1, 10, 3]),
                r"^labels\[1\] = 10 is outside the valid class range \[0, 10\) \(1 bad label\(s\) in all\)$"),
    "label -1": (L.cross_entropy, _LOGITS, jnp.array([2, 0, 9]), jnp.array([2, -1, -1]),
                 r"^labels\[1\] = -1 is outside the valid class range \[0, 10\) \(2 bad label\(s\) in all\)$"),
    "binary label 2": (L.binary_cross_entropy, jnp.zeros(3), jnp.array([0.0, 1.0, 0.3]), jnp.array([0.0, 2.0, 1.0]),
                       r"^labels\[1\] = 2\.0 is outside \[0, 1\] \(1 bad label\(s\) in all\)$"),
    "binary label -1": (L.binary_cross_entropy, jnp.zeros(3), jnp.array([1.0, 0.0, 1.0]),
                        jnp.array([-1.0, 0.0, 1.0]), r"^labels\[0\] = -1\.0 is outside \[0, 1\]"),
    "probability > 1": (_softmax_ce_mean, jnp.zeros((2, 3)), _PROBS, _PROBS.at[1].set(jnp.array([1.5, -0.5, 0.0])),
                        r"^labels\[1, 0\] = 1.5 is outside \[0, 1\] \(2 bad label entries in all\)$"),
    "row sum != 1": (_softmax_ce_mean, jnp.zeros((2, 3)), _PROBS, _PROBS.at[0, 2].set(0.4),
                     r"^labels\.sum\(axis=-1\)\[0\] = 0\.9 is not 1 ± 0\.001: .* \(1 bad row\(s\) in all\)$"),
    "delta <= 0": (_huber_mean, jnp.array([0.5, 3.0]), jnp.asarray(1.0), jnp.asarray(0.0),
                   r"^delta = 0\.0 is not positive$"),
}

_PROGRAMS = {}  # (loss, transform) -> compiled program, reused across cases


def _program(loss, transform):
    if (loss, transform) not in _PROGRAMS:
        def scan_steps(x, d_first, d_second):  # fit's structure: a scan of value_and_grad steps
            def step(carry, d):
                value, g = jax.value_and_grad(loss)(carry, d)
                return carry - 0.1 * g, value
            return jax.lax.scan(step, x, jax.tree.map(lambda a, b: jnp.stack([a, b]), d_first, d_second))[1]

        fn = {"plain jit": loss, "jit": loss, "grad": jax.grad(loss), "scan": scan_steps,
              "vmap": lambda x, d_first, d_second: jax.vmap(loss)(jnp.stack([x, x]), jnp.stack([d_first, d_second]))
              }[transform]
        _PROGRAMS[loss, transform] = jax.jit(fn if transform == "plain jit" else checks.checkify_fn(fn))
    return _PROGRAMS[loss, transform]


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_value_check_eager_names_first_index_and_value(case):
    loss, x, good, bad, message = VALUE_CASES[case]
    assert np.isfinite(loss(x, good))
    with pytest.raises(ValueError, match=message):
        loss(x, bad)


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_value_check_plain_jit_gives_nan_never_a_wrong_number(case):
    loss, x, good, bad, _ = VALUE_CASES[case]
    program = _program(loss, "plain jit")
    assert jnp.isnan(program(x, bad))  # e.g. label -1 is not scored as the last class
    np.testing.assert_allclose(program(x, good), loss(x, good), rtol=1e-6)


@pytest.mark.parametrize("transform", ["jit", "grad", "vmap", "scan"])
@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_value_check_through_checkify(case, transform):
    loss, x, good, bad, message = VALUE_CASES[case]
    program = _program(loss, transform)
    args = (x, good, bad) if transform in ("vmap", "scan") else (x, bad)
    err, _ = program(*args)
    with pytest.raises(ValueError, match=message):
        checks.raise_if_failed(err)
    err, out = program(*((x, good, good) if transform in ("vmap", "scan") else (x, good)))
    checks.raise_if_failed(err)  # valid inputs: no error, finite result
    assert np.all(np.isfinite(out))


def test_where_excludes_padding_rows_from_the_label_check():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]], np.float32)
    labels = np.array([2, -1])  # row 1 is padding
    mask = np.array([True, False])
    out = np.asarray(L.softmax_cross_entropy_with_integer_labels(logits, labels, where=mask))  # eager: no error
    assert out[1] == 0.0
    np.testing.assert_allclose(out[0], np.log(np.sum(np.exp(logits[0]))) - 3.0, rtol=1e-6)  # log-sum-exp − logit
    with pytest.raises(ValueError, match=r"labels\[1\] = -1"):  # the same row included is refused
        L.softmax_cross_entropy_with_integer_labels(logits, labels)
    probs = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], np.float32)  # a padding row need not be a distribution

    @jax.jit
    def traced(z):
        g = jax.grad(lambda q: jnp.sum(L.softmax_cross_entropy_with_integer_labels(q, labels, where=mask)))(z)
        return g, L.softmax_cross_entropy(z, probs, where=mask)

    g, out_probs = traced(logits)
    assert np.all(np.isfinite(g)) and np.all(g[1] == 0)
    np.testing.assert_allclose(out_probs, [out[0], 0.0], rtol=1e-6)


def test_bad_axis_and_where_arguments():
    z, y = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="out of bounds"):
        L.softmax_cross_entropy_with_integer_labels(z, y, axis=2)
    with pytest.raises(TypeError, match="axis must be"):
        L.softmax_cross_entropy_with_integer_labels(z, y, axis=None)  # as optax: an int or a tuple
    with pytest.raises(TypeError, match="boolean"):
        L.softmax_cross_entropy_with_integer_labels(z, y, where=jnp.array([1, 0]))
    with pytest.raises(ValueError, match=r"where has shape \(3,\)"):
        L.softmax_cross_entropy(z, jnp.full((2, 3), 1 / 3), where=jnp.array([True, False, True]))
    with pytest.raises(ValueError, match="scalar"):
        L.huber_loss(jnp.zeros(2), delta=jnp.ones(2))


# --- properties (hypothesis) ---------------------------------------------------------

_floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(st.lists(_floats, min_size=5, max_size=5), st.lists(_floats, min_size=5, max_size=5))
def test_regression_losses_properties(p, t):
    p, t = jnp.array(p, jnp.float32), jnp.array(t, jnp.float32)
    assert float(L.mse(p, t)) >= 0 and float(L.mae(p, t)) >= 0
    np.testing.assert_allclose(L.mse(p, t), L.mse(t, p), rtol=1e-6)          # symmetric
    np.testing.assert_allclose(L.huber_loss(p, t, delta=1e6), 0.5 * L.squared_error(p, t), rtol=1e-5)  # huge delta: ½e²


_ce_value_and_grad = jax.jit(jax.value_and_grad(L.cross_entropy))  # one compile for every example


@settings(max_examples=25, deadline=None)
@given(st.lists(_floats, min_size=4, max_size=4), st.integers(0, 3))
def test_cross_entropy_properties(z, label):
    logits = np.array([z], np.float32)
    labels = np.array([label])
    value, grad = _ce_value_and_grad(logits, labels)
    assert value >= 0 and np.isfinite(value)
    assert abs(float(np.sum(grad))) < 1e-5     # softmax − one_hot sums to zero
    shifted, _ = _ce_value_and_grad(logits + np.float32(7.0), labels)  # invariant to adding a constant to each logit
    assert float(shifted) == pytest.approx(float(value), rel=1e-4, abs=1e-3)
