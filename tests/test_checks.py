"""jaxcalc.checks: one message eagerly and from a checkified program (jit, grad, scan); NaN under plain jit."""
import jax
import jax.numpy as jnp
import pytest

from jaxcalc import checks

MSG = r"x\[2\] = -1\.0 is negative \(2 bad entries in all\)"


def _loss(x):
    bad = x < 0
    checks.check_entries(bad, x, name="x", condition="is negative")
    return jnp.sum(checks.poison(jnp.sqrt(jnp.where(bad, 0.0, x)), bad))


X_BAD = jnp.array([1.0, 4.0, -1.0, -2.0])


def test_eager_raises_first_index_value_and_count():
    with pytest.raises(ValueError, match=MSG):
        _loss(X_BAD)
    with pytest.raises(ValueError, match=r"m\[1, 0\] = 7 is odd \(1 bad entries in all\)"):
        m = jnp.array([[2, 4], [7, 0]])
        checks.check_entries(m % 2 == 1, m, name="m", condition="is odd")


def test_plain_jit_gives_nan_not_a_number():
    assert jnp.isnan(jax.jit(_loss)(X_BAD))
    assert float(jax.jit(_loss)(jnp.array([1.0, 4.0]))) == 3.0


@pytest.mark.parametrize("transform", ["jit", "grad", "scan"])
def test_checkified_program_raises_the_same_message(transform):
    fn = {"jit": _loss, "grad": jax.grad(_loss),
          "scan": lambda x: jax.lax.scan(lambda c, row: (c + _loss(row), None), 0.0, x)[0]}[transform]
    x = X_BAD if transform != "scan" else jnp.stack([jnp.ones(4), X_BAD])
    err, _ = jax.jit(checks.checkify_fn(fn))(x)
    with pytest.raises(ValueError, match=MSG):
        checks.raise_if_failed(err)
    err, _ = jax.jit(checks.checkify_fn(fn))(jnp.abs(x) + 1.0)
    checks.raise_if_failed(err)  # valid input: nothing raised


def _positive(d):
    bad = ~(d > 0)
    checks.check_entries(bad, d, name="delta", condition="is not positive")
    return checks.poison(2.0 * d, bad)


def test_scalar_and_float32_values_read_the_same_eagerly_and_compiled():
    with pytest.raises(ValueError, match=r"^delta = -0\.1 is not positive$"):  # float32 -0.1, not -0.100000001
        _positive(jnp.float32(-0.1))
    err, out = jax.jit(checks.checkify_fn(_positive))(jnp.float32(-0.1))
    with pytest.raises(ValueError, match=r"^delta = -0\.1 is not positive$"):
        checks.raise_if_failed(err)
    assert jnp.isnan(out)


def test_plain_trace_has_no_effect_so_jit_keeps_its_fast_dispatch():
    # a debug_check, even one compiled to nothing, marks the jaxpr effectful: jax then dispatches every
    # call through Python (about 0.1 ms more per call); outside checkify_fn nothing is emitted
    assert not jax.make_jaxpr(_loss)(X_BAD).effects
    assert not jax.make_jaxpr(jax.grad(_loss))(X_BAD).effects


def test_function_jitted_before_is_checked_inside_checkify_fn():
    jitted = jax.jit(_loss)
    assert jnp.isnan(jitted(X_BAD))  # traced and cached without checks
    err, _ = jax.jit(checks.checkify_fn(jitted))(X_BAD)  # traced again, with them
    with pytest.raises(ValueError, match=MSG):
        checks.raise_if_failed(err)
