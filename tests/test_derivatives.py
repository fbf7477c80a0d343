"""Finite differences against closed forms and jax.grad (float64), step rules, kinks, bad input."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcalc import derivatives as D


def _rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


def test_exp_at_one_each_method_float64(x64):
    # d/dx e^x at 1 = e (closed form)
    x = jnp.float64(1.0)
    assert _rel(D.forward_difference(jnp.exp, x), math.e) < 1e-7     # ~ sqrt(eps) = 1.5e-8
    assert _rel(D.central_difference(jnp.exp, x), math.e) < 1e-9     # ~ eps^(2/3) = 3.7e-11
    assert _rel(D.complex_step(jnp.exp, x), math.e) < 1e-15          # no round-off term


def test_float32_default_steps_reach_theory():
    x = jnp.float32(1.0)
    eps32 = float(jnp.finfo(jnp.float32).eps)
    g_fwd = D.forward_difference(jnp.exp, x)
    g_cen = D.central_difference(jnp.exp, x)
    assert g_fwd.dtype == jnp.float32 and g_cen.dtype == jnp.float32
    assert _rel(g_fwd, math.e) < 10 * math.sqrt(eps32)
    assert _rel(g_cen, math.e) < 10 * eps32 ** (2 / 3)
    assert _rel(D.complex_step(jnp.exp, x), math.e) < 2 * eps32


def test_pytree_gradient_matches_jax_grad(x64):
    params = {"w": jnp.array([[0.3, -1.2], [2.0, 0.5]]), "b": jnp.array(0.7), "v": [jnp.array([1.5, -0.4])]}

    def f(p):
        return jnp.sum(jnp.tanh(p["w"] @ p["v"][0] + p["b"]) ** 2) + jnp.exp(p["b"])

    exact = jax.grad(f)(params)
    for approx, tol in ((D.central_difference(f, params), 1e-9), (D.complex_step(f, params), 1e-14),
                        (D.forward_difference(f, params), 1e-6)):
        for a, e in zip(jax.tree_util.tree_leaves(approx), jax.tree_util.tree_leaves(exact), strict=True):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


def test_default_step_rule(x64):
    eps = 2.0 ** -52  # float64 machine epsilon
    x = jnp.array([0.5, 1.0, 100.0, -1e4])
    h_c = D.default_step(x, "central")
    h_f = D.default_step(x, "forward")
    scale = np.maximum(1.0, np.abs(np.asarray(x)))
    np.testing.assert_allclose(h_c, eps ** (1 / 3) * scale, rtol=1e-6)
    np.testing.assert_allclose(h_f, eps ** 0.5 * scale, rtol=1e-6)
    assert bool(jnp.all((x + h_c) - x == h_c))  # exactly representable steps
    eps32 = 2.0 ** -23
    assert float(D.default_step(jnp.float32(1.0), "central")) == pytest.approx(eps32 ** (1 / 3), rel=1e-5)


def test_explicit_h_and_per_coordinate_h(x64):
    x = jnp.array([0.1, 0.2])
    f = lambda v: jnp.sum(v ** 3)
    # central difference of x^3 is exact up to the h^2 term: ((x+h)^3 - (x-h)^3)/2h = 3x^2 + h^2 (by hand)
    g = D.central_difference(f, x, h=1e-2)
    np.testing.assert_allclose(g, 3 * np.asarray(x) ** 2 + 1e-4, rtol=1e-9)
    g2 = D.central_difference(f, x, h=jnp.array([1e-2, 2e-2]))
    np.testing.assert_allclose(g2, 3 * np.asarray(x) ** 2 + np.array([1e-4, 4e-4]), rtol=1e-9)
    with pytest.raises(ValueError, match="one step per coordinate"):
        D.central_difference(f, x, h=jnp.ones(3))


def test_relu_kink_at_zero():
    # the central difference averages the one-sided slopes 0 and 1; autodiff picks 0
    assert float(D.central_difference(jax.nn.relu, 0.0)) == 0.5
    assert float(D.forward_difference(jax.nn.relu, 0.0)) == 1.0
    assert float(jax.grad(jax.nn.relu)(0.0)) == 0.0


def test_jit_and_vectorised(x64):
    f = lambda v: jnp.sum(jnp.sin(v) * v)
    g = jax.jit(lambda v: D.central_difference(f, v))(jnp.linspace(0.0, 1.0, 7))
    np.testing.assert_allclose(g, jax.grad(f)(jnp.linspace(0.0, 1.0, 7)), rtol=1e-8, atol=1e-10)
    jaxpr = str(jax.make_jaxpr(lambda v: D.central_difference(f, v))(jnp.ones(50)))
    assert jaxpr.count("sin") <= 2  # one batched evaluation per side, not one per coordinate


def test_bad_input():
    with pytest.raises(TypeError, match="floating"):
        D.central_difference(lambda v: jnp.sum(v), jnp.array([1, 2]))
    with pytest.raises(ValueError, match="scalar"):
        D.forward_difference(lambda v: v * 2, jnp.ones(3))
    with pytest.raises(ValueError, match="scalar"):
        D.complex_step(lambda v: v * 2, jnp.ones(3))
    with pytest.raises(ValueError, match="method"):
        D.default_step(jnp.ones(2), "backward")


def test_step_size_errors_v_curve(x64):
    hs = jnp.logspace(-14, -1, 40)
    exact = jnp.exp(1.0)  # d/dx e^x at 1, float64 reference
    errs = jax.jit(lambda h: D.step_size_errors(jnp.exp, jnp.float64(1.0), exact, h, method="central"))(hs)
    errs = np.asarray(errs)
    i = int(np.argmin(errs))
    eps = 2.0 ** -52
    assert errs[i] < 1e-10
    assert 1e-2 * eps ** (1 / 3) < float(hs[i]) < 1e2 * eps ** (1 / 3)
    # truncation: relative error of the central difference of exp is h^2/6 + O(h^4) (Taylor)
    assert errs[-1] == pytest.approx(float(hs[-1]) ** 2 / 6, rel=0.01)
    fwd = np.asarray(D.step_size_errors(jnp.exp, jnp.float64(1.0), exact, hs, method="forward"))
    assert fwd[-1] == pytest.approx(float(hs[-1]) / 2, rel=0.05)  # h/2 (Taylor)
    cs = np.asarray(D.step_size_errors(jnp.exp, jnp.float64(1.0), exact, jnp.array([1e-20]), method="complex"))
    assert cs[0] < 1e-15
