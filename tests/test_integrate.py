"""Quadrature against closed forms; convergence orders; FTC and Leibniz through jax.grad; MC rate; bad input."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcalc import integrate as I

RULES = {"trapezoid": I.trapezoid, "simpson": I.simpson, "gauss_legendre": I.gauss_legendre}


def test_closed_forms(x64):
    # ∫_0^π sin = 2 and ∫_{-1}^{1} e^x = e - 1/e (closed forms)
    for name, rule, n, tol in (("trapezoid", I.trapezoid, 2048, 1e-6), ("simpson", I.simpson, 64, 1e-7),
                               ("gauss_legendre", I.gauss_legendre, 12, 1e-13)):
        assert float(rule(jnp.sin, 0.0, math.pi, n=n)) == pytest.approx(2.0, rel=tol), name
        assert float(rule(jnp.exp, -1.0, 1.0, n=n)) == pytest.approx(math.e - 1 / math.e, rel=tol), name
    # reversed limits flip the sign
    assert float(I.gauss_legendre(jnp.sin, math.pi, 0.0, n=12)) == pytest.approx(-2.0, rel=1e-13)


def test_float32_default_and_jit():
    val = jax.jit(lambda a, b: I.simpson(jnp.sin, a, b, n=32))(0.0, math.pi)
    assert val.dtype == jnp.float32
    assert float(val) == pytest.approx(2.0, rel=1e-5)


def test_convergence_orders(x64):
    exact = math.e - 1.0  # ∫_0^1 e^x
    err = {name: [abs(float(RULES[name](jnp.exp, 0.0, 1.0, n=n)) - exact) for n in (8, 16, 32)]
           for name in ("trapezoid", "simpson")}
    t, s = err["trapezoid"], err["simpson"]
    # halving h: trapezoid error / 4 (O(h²)), Simpson / 16 (O(h⁴))
    for i in range(2):
        assert 3.9 < t[i] / t[i + 1] < 4.1
        assert 15.5 < s[i] / s[i + 1] < 16.5
    # leading trapezoid error term: (b - a) h² (f'(b) - f'(a)) / 12 (Euler–Maclaurin)
    assert t[2] == pytest.approx((1 / 32) ** 2 * (math.e - 1) / 12, rel=1e-3)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_gauss_legendre_exact_to_degree_2n_minus_1(x64, n):
    rng = np.random.default_rng(n)
    coeffs = rng.standard_normal(2 * n)          # degree 2n - 1
    poly = np.polynomial.Polynomial(coeffs)
    a, b = -0.7, 1.9
    anti = poly.integ()                           # numpy's exact antiderivative
    exact = anti(b) - anti(a)
    got = float(I.gauss_legendre(lambda t: jnp.polyval(jnp.asarray(coeffs[::-1]), t), a, b, n=n))
    assert got == pytest.approx(exact, rel=1e-12, abs=1e-12)
    # ... and not beyond: t^(2n) is integrated with a visible error
    mono_exact = (b ** (2 * n + 1) - a ** (2 * n + 1)) / (2 * n + 1)
    mono = float(I.gauss_legendre(lambda t: t ** (2 * n), a, b, n=n))
    assert abs(mono - mono_exact) > 1e-6


def test_fundamental_theorem_of_calculus(x64):
    xs = jnp.linspace(0.2, 2.5, 5)
    f = lambda t: jnp.exp(-t * t) * jnp.cos(3 * t)
    for rule, n, tol in ((I.gauss_legendre, 24, 1e-12), (I.simpson, 256, 1e-7), (I.trapezoid, 1024, 1e-5)):
        d_upper = jax.jit(jax.vmap(jax.grad(lambda x, rule=rule, n=n: rule(f, 0.1, x, n=n))))(xs)
        np.testing.assert_allclose(d_upper, f(xs), atol=tol)
        d_lower = jax.jit(jax.vmap(jax.grad(lambda x, rule=rule, n=n: rule(f, x, 3.0, n=n))))(xs)
        np.testing.assert_allclose(d_lower, -f(xs), atol=tol)


def test_leibniz_rule_for_a_parameter(x64):
    # F(θ) = ∫_0^1 e^{θt} dt = (e^θ - 1)/θ, F'(θ) = (θe^θ - e^θ + 1)/θ² (closed form)
    f = lambda t, th: jnp.exp(th * t)
    thetas = jnp.array([0.5, 1.0, 2.0])
    dF = jax.vmap(jax.grad(lambda th: I.gauss_legendre(f, 0.0, 1.0, n=16, args=(th,))))(thetas)
    th = np.asarray(thetas)
    np.testing.assert_allclose(dF, (th * np.exp(th) - np.exp(th) + 1) / th ** 2, rtol=1e-12)
    # with the parameter in the limit too: G(θ) = ∫_0^θ sin(θt) dt = (1 - cos θ²)/θ, and
    # G'(θ) = sin(θ²) + ∫_0^θ t cos(θt) dt (Leibniz) = (2θ² sin θ² - 1 + cos θ²)/θ² (closed form)
    G = lambda th: I.gauss_legendre(lambda t: jnp.sin(th * t), 0.0, th, n=20)
    leibniz = lambda th: jnp.sin(th ** 2) + I.gauss_legendre(lambda t: t * jnp.cos(th * t), 0.0, th, n=20)
    for t in (0.7, 1.3):
        closed = (2 * t ** 2 * math.sin(t ** 2) - 1 + math.cos(t ** 2)) / t ** 2
        assert float(jax.grad(G)(t)) == pytest.approx(closed, rel=1e-12)
        assert float(leibniz(t)) == pytest.approx(closed, rel=1e-12)


def test_vmap_over_limits_params_and_vector_output(x64):
    bs = jnp.array([0.5, 1.0, 2.0])
    got = jax.vmap(lambda b: I.simpson(jnp.exp, 0.0, b, n=64))(bs)
    np.testing.assert_allclose(got, np.expm1(np.asarray(bs)), rtol=1e-8)
    # closing over a parameter vs passing it in args: same numbers
    ws = jnp.array([1.0, 2.0, 3.0])
    via_args = jax.vmap(lambda w: I.trapezoid(lambda t, w: jnp.sin(w * t), 0.0, 1.0, n=64, args=(w,)))(ws)
    via_closure = jax.vmap(lambda w: I.trapezoid(lambda t: jnp.sin(w * t), 0.0, 1.0, n=64))(ws)
    np.testing.assert_allclose(via_args, via_closure, rtol=1e-14)
    np.testing.assert_allclose(via_args, (1 - np.cos(np.asarray(ws))) / np.asarray(ws), rtol=1e-3)  # O(h²)
    # vector-valued f integrates componentwise: ∫_0^1 (1, t, t²) = (1, 1/2, 1/3)
    vec = I.gauss_legendre(lambda t: jnp.stack([jnp.ones_like(t), t, t * t]), 0.0, 1.0, n=3)
    np.testing.assert_allclose(vec, [1.0, 0.5, 1 / 3], rtol=1e-14)


def test_monte_carlo_rate_and_gradient(x64):
    # ∫_0^π sin = 2; RMSE = π·std(sin(πU))/sqrt(n), Var = 1/2 - 4/π² (closed form)
    sd = math.pi * math.sqrt(0.5 - 4 / math.pi ** 2)
    keys = jax.random.split(jax.random.key(0), 128)
    rmse = {}
    for n in (64, 4096):
        vals = jax.jit(jax.vmap(lambda k, n=n: I.monte_carlo(jnp.sin, 0.0, math.pi, n=n, key=k)))(keys)
        rmse[n] = float(jnp.sqrt(jnp.mean((vals - 2.0) ** 2)))
        assert rmse[n] == pytest.approx(sd / math.sqrt(n), rel=0.2)
    assert 5.0 < rmse[64] / rmse[4096] < 11.0  # 64x more samples -> about 8x smaller error
    k = jax.random.key(1)
    once = float(I.monte_carlo(jnp.sin, 0.0, 1.0, n=100, key=k))
    assert once == float(I.monte_carlo(jnp.sin, 0.0, 1.0, n=100, key=k))
    # reparametrised samples: d/db of the estimate is an unbiased estimate of f(b)
    g = float(jax.jit(jax.grad(lambda b: I.monte_carlo(jnp.cos, 0.0, b, n=20_000, key=k)))(1.0))
    assert g == pytest.approx(math.cos(1.0), abs=0.02)


@pytest.mark.parametrize("name", [*sorted(RULES), "monte_carlo"])
def test_bad_input(name):
    def call(a=0.0, b=1.0, n=4):
        if name == "monte_carlo":
            return I.monte_carlo(jnp.sin, a, b, n=n, key=jax.random.key(0))
        return RULES[name](jnp.sin, a, b, n=n)

    with pytest.raises(ValueError, match="n must be >="):
        call(n=0)
    with pytest.raises(ValueError, match="not finite"):
        call(b=float("inf"))
    with pytest.raises(ValueError, match="not finite"):
        call(a=jnp.nan)
    with pytest.raises(TypeError, match="Python int"):
        call(n=2.5)
    with pytest.raises(ValueError, match="scalar"):
        call(b=jnp.array([1.0, 2.0]))


def test_simpson_needs_even_n():
    with pytest.raises(ValueError, match="even"):
        I.simpson(jnp.sin, 0.0, 1.0, n=3)
    with pytest.raises(ValueError, match=">= 2"):
        I.simpson(jnp.sin, 0.0, 1.0, n=1)
