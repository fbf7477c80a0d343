"""check_grads: passes on every loss and an MLP, fails loudly on wrong rules, agrees with jax.test_util."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads as jax_check_grads

import jaxcalc
from jaxcalc import losses
from jaxcalc.errors import GradientCheckError
from jaxcalc.gradcheck import GradCheckReport, check_grads
from jaxcalc.models.mlp import init_mlp, mlp_apply

K = jax.random.key


# ------------------------------------------------------------------ functions with known (wrong) rules


@jax.custom_vjp
def sin_sum_off_1pct(x):
    return jnp.sum(jnp.sin(x))


def _fwd(x):
    return sin_sum_off_1pct(x), x


def _bwd(x, g):
    return (1.01 * g * jnp.cos(x),)  # deliberately 1% wrong: d/dx sum(sin x) = cos x


sin_sum_off_1pct.defvjp(_fwd, _bwd)


@jax.custom_vjp
def sin_sum_right(x):
    return jnp.sum(jnp.sin(x))


sin_sum_right.defvjp(lambda x: (jnp.sum(jnp.sin(x)), x), lambda x, g: (g * jnp.cos(x),))


@jax.custom_jvp
def exp_wrong_jvp(x):
    return jnp.exp(x)


@exp_wrong_jvp.defjvp
def _exp_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = jnp.exp(x)
    return y, 0.99 * y * t  # deliberately 1% wrong


@jax.custom_jvp
def softplus_right(x):
    return jnp.logaddexp(x, 0.0)


@softplus_right.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus_right(x), jax.nn.sigmoid(x) * t


@jax.custom_jvp
def tanh_wrong_sign(x):
    return jnp.tanh(x)


@tanh_wrong_sign.defjvp
def _tanh_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = jnp.tanh(x)
    return y, -(1 - y ** 2) * t


# ------------------------------------------------------------------ losses (integration test)

_rng = np.random.default_rng(0)  # numpy draws: no PRNG compile in the tests
_logits = jnp.asarray(_rng.standard_normal((5, 3)))
_labels = jnp.array([0, 2, 1, 1, 0])
_preds = jnp.asarray(_rng.standard_normal(6))
_targets = _preds + jnp.array([0.5, -1.5, 0.3, 2.0, -0.2, 0.9])  # |error| away from 0 and from delta=1
_probs = jax.nn.softmax(jnp.asarray(_rng.standard_normal((5, 3))))
_bin_logits = jnp.asarray(_rng.standard_normal(7))
_bin_labels = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.3, 0.8])

LOSS_CASES = {
    "squared_error": (losses.squared_error, (_preds, _targets), 0),
    "absolute_error": (losses.absolute_error, (_preds, _targets), 0),
    "huber_loss": (losses.huber_loss, (_preds, _targets), 0),
    "l2_loss": (losses.l2_loss, (_preds, _targets), 0),
    "sigmoid_binary_cross_entropy": (losses.sigmoid_binary_cross_entropy, (_bin_logits, _bin_labels), 0),
    "softmax_cross_entropy": (losses.softmax_cross_entropy, (_logits, _probs), (0, 1)),
    "softmax_cross_entropy_with_integer_labels": (losses.softmax_cross_entropy_with_integer_labels,
                                                  (_logits, _labels), 0),
    "mse": (losses.mse, (_preds, _targets), 0),
    "mae": (losses.mae, (_preds, _targets), 0),
    "mean_huber": (losses.mean_huber, (_preds, _targets), 0),
    "cross_entropy": (losses.cross_entropy, (_logits, _labels), 0),
    "binary_cross_entropy": (losses.binary_cross_entropy, (_bin_logits, _bin_labels), 0),
}


def test_every_loss_is_covered():
    assert set(LOSS_CASES) == set(losses.__all__)
    assert jaxcalc.check_grads is check_grads  # the top-level name


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_check_grads_passes_on_each_loss(name):
    fn, args, argnums = LOSS_CASES[name]
    report = check_grads(fn, *args, argnums=argnums)
    assert report.passed
    assert report.max_rel_error < 1e-7  # cs231n's "happy" threshold for smooth functions
    first = fn.__code__.co_varnames[0]
    assert first in report.rel_errors()


def test_integer_labels_are_left_alone_and_inputs_cast_to_float64():
    seen = []

    def loss(logits, labels):
        seen.append((logits.dtype, labels.dtype))
        return losses.cross_entropy(logits, labels)

    check_grads(loss, _logits.astype(jnp.float32), _labels)
    assert all(d == jnp.float64 for d, _ in seen)
    assert all(jnp.issubdtype(d, jnp.integer) for _, d in seen)
    with pytest.raises(TypeError, match="nothing to differentiate"):
        check_grads(losses.cross_entropy, _logits, _labels, argnums=1)


# ------------------------------------------------------------------ MLP and flax NNX


@pytest.fixture(scope="module")
def mlp_case():
    params = init_mlp(K(0), (3, 4, 2), init="glorot")
    x = jnp.asarray(_rng.standard_normal((6, 3)), jnp.float32)
    y = jnp.asarray(_rng.standard_normal((6, 2)), jnp.float32)
    return params, x, y


def _mlp_loss(params, x, y, activation="tanh"):
    return losses.mse(mlp_apply(params, x, activation=activation), y)


def test_mlp_full_order2(mlp_case):
    params, x, y = mlp_case
    report = check_grads(_mlp_loss, params, x, y, order=2)
    paths = report.rel_errors()
    assert set(paths) == {"params[0][0]", "params[0][1]", "params[1][0]", "params[1][1]"}
    assert set(paths["params[0][0]"]) == {"fwd", "rev", "fwd2", "rev2"}
    assert report.max_rel_error < 1e-7
    assert "params[1][0]" in str(report) and "passed" in str(report)


def test_mlp_relu_directional_and_argnums_tuple(mlp_case):
    params, x, y = mlp_case
    loss = lambda params, x, y: _mlp_loss(params, x, y, activation="relu")
    report = check_grads(loss, params, x, y, argnums=(0, 1), method="directional")
    assert {r.method for r in report.results} == {"directional"}
    assert "x" in report.rel_errors()
    assert report.passed


def test_flax_nnx_state():
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x = jnp.asarray(_rng.standard_normal((4, 3)), jnp.float32)
    loss = lambda state, x: jnp.mean(jnp.tanh(nnx.merge(graphdef, state)(x)) ** 2)
    report = check_grads(loss, state, x)
    assert any("kernel" in p for p in report.rel_errors())
    assert report.passed


# ------------------------------------------------------------------ failures


def test_wrong_custom_vjp_fails_naming_leaf_index_and_values():
    x = jnp.array([0.3, -1.1, 2.0])
    with pytest.raises(TypeError, match=r"modes=\('rev',\)"):
        check_grads(sin_sum_off_1pct, x)  # no forward mode for custom_vjp
    with pytest.raises(GradientCheckError) as info:
        check_grads(sin_sum_off_1pct, x, modes=("rev",))
    msg = str(info.value)
    assert "sin_sum_off_1pct" in msg and "for x" in msg and "VJP" in msg
    r = info.value.report.worst
    assert isinstance(info.value.report, GradCheckReport) and not info.value.report.passed
    # the worst coordinate is the one with the largest |cos x|: x = 2.0 (index 2)... or -1.1? |cos 2| = 0.416,
    # |cos -1.1| = 0.454, |cos 0.3| = 0.955: the error is 1% of each, relative error 1/101 everywhere
    assert r.rel_error == pytest.approx(0.01 / 1.01, rel=1e-4)
    assert f"index {r.index}" in msg
    np.testing.assert_allclose(r.autodiff, 1.01 * np.cos(float(x[r.index])), rtol=1e-12)
    np.testing.assert_allclose(r.numerical, np.cos(float(x[r.index])), rtol=1e-9)
    assert re.search(r"autodiff [-0-9.]+ vs finite difference [-0-9.]+", msg)
    # directional mode catches it too
    with pytest.raises(GradientCheckError):
        check_grads(sin_sum_off_1pct, x, modes=("rev",), method="directional")
    assert check_grads(sin_sum_right, x, modes=("rev",)).passed


def test_a_tenth_of_a_percent_error_fails_in_float64():
    # in float32 central differences are only good to ~eps^(2/3) = 4e-5 relative; the float64 check is not fooled
    @jax.custom_vjp
    def f(x):
        return jnp.sum(x ** 3)

    f.defvjp(lambda x: (f(x), x), lambda x, g: (1.001 * 3 * g * x ** 2,))
    with pytest.raises(GradientCheckError):
        check_grads(f, jnp.array([0.5, 1.5], jnp.float32), modes=("rev",))


def test_relu_kink_documented():
    # at exactly 0 the central difference is (h - 0)/2h = 0.5 while jax.grad(relu)(0) = 0
    assert "0.5" in jaxcalc.gradcheck.__doc__
    relu_sum = lambda x: jnp.sum(jax.nn.relu(x))
    with pytest.raises(GradientCheckError) as info:
        check_grads(relu_sum, jnp.array([1.0, 0.0, -2.0]))
    worst = info.value.report.worst
    assert worst.index == (1,) and worst.autodiff == 0.0 and worst.numerical == pytest.approx(0.5)
    assert check_grads(relu_sum, jnp.array([1.0, 0.3, -2.0])).passed  # away from the kink


# ------------------------------------------------------------------ agreement with jax.test_util.check_grads


AGREEMENT = [
    ("sin_sum", lambda x: jnp.sum(jnp.sin(x)), ("fwd", "rev"), True),
    ("logsumexp", lambda x: jax.nn.logsumexp(x * x), ("fwd", "rev"), True),
    ("softplus_right", lambda x: jnp.sum(softplus_right(x)), ("fwd", "rev"), True),
    ("sin_sum_right", sin_sum_right, ("rev",), True),
    ("exp_wrong_jvp", lambda x: jnp.sum(exp_wrong_jvp(x)), ("fwd", "rev"), False),
    ("tanh_wrong_sign", lambda x: jnp.tanh(x) + tanh_wrong_sign(x), ("fwd", "rev"), False),
    ("sin_sum_off_1pct", sin_sum_off_1pct, ("rev",), False),
]


@pytest.mark.parametrize("name,fn,modes,correct", AGREEMENT, ids=[a[0] for a in AGREEMENT])
def test_agrees_with_jax_test_util(name, fn, modes, correct):
    x = np.array([0.4, -0.7, 1.3])
    with jax.enable_x64(True):
        try:
            jax_check_grads(fn, (jnp.asarray(x),), order=1, modes=modes)
            jax_ok = True
        except AssertionError:
            jax_ok = False
    try:
        check_grads(fn, jnp.asarray(x, jnp.float32), modes=modes)
        ours = True
    except GradientCheckError:
        ours = False
    assert ours == jax_ok == correct


# ------------------------------------------------------------------ bad input


def test_bad_arguments():
    x = jnp.ones(3)
    f = lambda x: jnp.sum(x ** 2)
    with pytest.raises(ValueError, match="order"):
        check_grads(f, x, order=3)
    with pytest.raises(ValueError, match="modes"):
        check_grads(f, x, modes=("lin",))
    with pytest.raises(ValueError, match="method"):
        check_grads(f, x, method="sparse")
    with pytest.raises(ValueError, match="out of range"):
        check_grads(f, x, argnums=2)
    with pytest.raises(ValueError, match="not finite"):
        check_grads(lambda x: jnp.sum(jnp.log(x - 2.0)), x)


def test_auto_picks_directional_for_large_inputs_and_accepts_python_scalars():
    big = jnp.asarray(np.random.default_rng(1).standard_normal(jaxcalc.gradcheck.FULL_MAX + 1))
    report = check_grads(lambda x: jnp.sum(jnp.tanh(x) ** 2), big, modes=("rev",))
    assert [r.method for r in report.results] == ["directional"]
    scalar = check_grads(lambda w, b: jnp.sin(w) * b, 0.3, 2.0, argnums=(0, 1))
    assert set(scalar.rel_errors()) == {"w", "b"} and scalar.results[0].index == ()


def test_repeated_checks_reuse_the_compiled_program():
    from jaxcalc import gradcheck

    check_grads(losses.mse, _preds, _targets)
    size = gradcheck._compute_cached._cache_size()
    check_grads(losses.mse, _preds + 1.0, _targets)  # same function and shapes, new values
    assert gradcheck._compute_cached._cache_size() == size
