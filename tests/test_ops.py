"""jaxcalc.ops against the XLA primitives it replaces (lax.conv_general_dilated, reduce_window max).

References: ``lax.conv_general_dilated`` and ``lax.reduce_window`` (outputs; their JAX-defined
gradients), central finite differences in float64 (``jaxcalc.check_grads`` and
``jax.test_util.check_grads``), and one hand-computed literal for the tie rule.
"""
import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jaxcalc
from jaxcalc import ops

F32 = dict(rtol=1e-5, atol=1e-5)
F64 = dict(rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ references (not jaxcalc code)
def ref_conv(x, kernel, bias, padding):
    y = lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias[None, None, None, :]


def ref_pool(x, window):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, window, window, 1), "VALID")


def ref_block(x, kernel, bias, padding, window):
    return ref_pool(jax.nn.relu(ref_conv(x, kernel, bias, padding)), window)


# One jitted "value and all gradients" per (function, static config): few compiles.
@functools.partial(jax.jit, static_argnums=(0, 5))
def _value_and_grads(fn, x, kernel, bias, cot, static):
    def scalar(x, kernel, bias):
        return jnp.sum(fn(x, kernel, bias, *static) * cot)

    return fn(x, kernel, bias, *static), jax.grad(scalar, argnums=(0, 1, 2))(x, kernel, bias)


def _conv_im2col(x, kernel, bias, padding):
    return ops.conv2d(x, kernel, bias, padding=padding, impl="im2col")


def _conv_auto(x, kernel, bias, padding):
    return ops.conv2d(x, kernel, bias, padding=padding, impl="auto")


def _block_im2col(x, kernel, bias, padding, window, chunk):
    return ops.conv2d_relu_max_pool(x, kernel, bias, window=window, padding=padding, impl="im2col", chunk=chunk)


def _ref_block5(x, kernel, bias, padding, window, chunk):
    return ref_block(x, kernel, bias, padding, window)


def _normal(seed, shape, dtype=np.float32):
    """Test data from numpy (no JAX dispatch, no compiles)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _data(seed, n, h, w, cin, cout, dtype=np.float32):
    return (_normal(seed, (n, h, w, cin), dtype), _normal(seed + 100, (3, 3, cin, cout), dtype),
            _normal(seed + 200, (cout,), dtype))


def _assert_close(got, want, tol, what):
    for g, w, name in zip(jax.tree.leaves(got), jax.tree.leaves(want), ("x", "kernel", "bias"), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), err_msg=f"{what}: d/d{name}", **tol)


# ------------------------------------------------------------------ conv2d
@pytest.mark.parametrize("padding,cin", [("VALID", 1), ("SAME", 3)])
def test_conv2d_matches_lax_conv_values_and_gradients(padding, cin):
    x, k, b = _data(cin, 2, 9, 7, cin, 4)  # odd, non-square image
    out_shape = (2, 9, 7, 4) if padding == "SAME" else (2, 7, 5, 4)
    cot = _normal(9, out_shape)
    y, g = _value_and_grads(_conv_auto, x, k, b, cot, (padding,))  # "auto": im2col on CPU
    y_ref, g_ref = _value_and_grads(ref_conv, x, k, b, cot, (padding,))
    assert y.shape == out_shape
    np.testing.assert_allclose(y, y_ref, **F32)
    _assert_close(g, g_ref, F32, f"conv2d {padding} cin={cin}")


def test_conv2d_float64_matches_to_1e12(x64):
    padding = "SAME"
    x, k, b = _data(1, 2, 7, 7, 3, 4, np.float64)
    cot = _normal(2, (2, 7, 7, 4), np.float64)
    y, g = _value_and_grads(_conv_im2col, x, k, b, cot, (padding,))
    y_ref, g_ref = _value_and_grads(ref_conv, x, k, b, cot, (padding,))
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, y_ref, **F64)
    _assert_close(g, g_ref, F64, f"conv2d float64 {padding}")


def test_conv2d_without_bias_and_xla_impl_is_lax():
    x, k, _ = _data(3, 1, 5, 5, 2, 3)
    want = ref_conv(x, k, jnp.zeros(3), "VALID")
    np.testing.assert_allclose(ops.conv2d(x, k, impl="im2col"), want, **F32)
    np.testing.assert_array_equal(ops.conv2d(x, k, impl="xla"), want)


def test_conv2d_im2col_forward_mode_against_finite_differences():
    # No custom rule on the im2col conv: forward and reverse mode both work.
    x, k, b = _data(4, 1, 4, 5, 1, 2)
    jaxcalc.check_grads(lambda x, k, b: ops.conv2d(x, k, b, padding="SAME", impl="im2col"), x, k, b,
                        argnums=(0, 1, 2), modes=("fwd", "rev"))


# ------------------------------------------------------------------ max_pool
_pool_reshape = jax.jit(lambda x, window: ops.max_pool(x, window, impl="reshape"), static_argnums=1)
_pool_ref = jax.jit(ref_pool, static_argnums=1)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _pool_vjp_jvp(fn, x, window, cot, tangent):
    y, vjp = jax.vjp(lambda x: fn(x, window), x)
    return y, vjp(cot)[0], jax.jvp(lambda x: fn(x, window), (x,), (tangent,))[1]


def _pool_r(x, window):
    return ops.max_pool(x, window, impl="reshape")


@pytest.mark.parametrize("shape,window", [((2, 8, 8, 3), 2), ((2, 7, 9, 3), 2), ((2, 10, 11, 1), 3)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_reduce_window_including_ties(shape, window, ties):
    x = _normal(5, shape)
    if ties:  # integers in {-2..2}: many windows hold several equal maxima
        x = jnp.asarray(np.round(np.asarray(x)))
    out = (shape[0], shape[1] // window, shape[2] // window, shape[3])
    cot = _normal(6, out)
    tangent = _normal(7, shape)
    y, dx, dy = _pool_vjp_jvp(_pool_r, x, window, cot, tangent)
    y_ref, dx_ref, dy_ref = _pool_vjp_jvp(ref_pool, x, window, cot, tangent)
    assert y.shape == out  # remainder rows/columns cropped (7x7 -> 3x3)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dy, dy_ref)


def test_max_pool_tie_goes_to_first_maximum_unlike_jnp_max():
    x = jnp.ones((1, 2, 2, 1))
    # By hand: XLA's reduce_window max backward (select_and_scatter with `>=`) picks the first maximum.
    want = np.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(jax.grad(lambda x: ref_pool(x, 2).sum())(x), want)
    np.testing.assert_array_equal(jax.grad(lambda x: ops.max_pool(x, 2, impl="reshape").sum())(x), want)
    # Plain autodiff of jnp.max splits the cotangent evenly (1/4 each): the reason for the custom rule.
    np.testing.assert_allclose(jax.grad(lambda x: jnp.max(x))(x), np.full((1, 2, 2, 1), 0.25))


def test_max_pool_float64_and_jax_check_grads(x64):
    x = _normal(8, (1, 5, 4, 2), np.float64)
    np.testing.assert_array_equal(ops.max_pool(x, impl="reshape"), ref_pool(x, 2))
    jax.test_util.check_grads(lambda x: ops.max_pool(x, 2, impl="reshape"), (x,), order=1, modes=("fwd", "rev"))


# ------------------------------------------------------------------ fused conv + relu + max_pool
@pytest.mark.parametrize("n,h,w,cin,padding,window,chunk", [
    (5, 10, 10, 3, "VALID", 2, 2),  # two whole chunks + a remainder of 1; 8x8 conv output
    (4, 9, 8, 1, "SAME", 3, 16),    # one short chunk; window 3 on a 9x8 output crops 2 columns
])
def test_conv2d_relu_max_pool_matches_lax_composition(n, h, w, cin, padding, window, chunk):
    x, k, b = _data(n + cin, n, h, w, cin, 5)
    out = jax.eval_shape(functools.partial(ref_block, padding=padding, window=window), x, k, b)
    cot = _normal(11, out.shape)
    y, g = _value_and_grads(_block_im2col, x, k, b, cot, (padding, window, chunk))
    y_ref, g_ref = _value_and_grads(_ref_block5, x, k, b, cot, (padding, window, chunk))
    np.testing.assert_allclose(y, y_ref, **F32)
    _assert_close(g, g_ref, F32, f"fused {padding} window={window} chunk={chunk}")


def test_conv2d_relu_max_pool_float64_and_check_grads(x64):
    x, k, b = _data(12, 3, 7, 6, 2, 3, np.float64)
    cot = _normal(13, (3, 2, 2, 3), np.float64)  # 5x4 conv -> 2x2 pooled
    y, g = _value_and_grads(_block_im2col, x, k, b, cot, ("VALID", 2, 2))
    y_ref, g_ref = _value_and_grads(_ref_block5, x, k, b, cot, ("VALID", 2, 2))
    np.testing.assert_allclose(y, y_ref, **F64)
    _assert_close(g, g_ref, F64, "fused float64")
    # The custom_vjp against finite differences (reverse mode: a custom_vjp has no forward mode).
    f = functools.partial(_block_im2col, padding="SAME", window=2, chunk=2)
    jaxcalc.check_grads(f, x[:, :4, :4, :1], k[:, :, :1], b, argnums=(0, 1, 2), modes=("rev",))


def test_conv2d_relu_max_pool_under_vmap_and_xla_impl():
    x, k, b = _data(14, 6, 8, 8, 3, 4)

    @jax.jit  # one compile for the whole comparison
    def results(k, x):
        xs = x.reshape(2, 3, 8, 8, 3)
        got = jax.vmap(lambda xi: ops.conv2d_relu_max_pool(xi, k, b, impl="im2col", chunk=2))(xs)
        want = ref_block(x, k, b, "VALID", 2).reshape(got.shape)  # vmap over groups == the whole batch
        # Per-example kernel gradients: vmap of grad through the custom_vjp.
        gk = jax.vmap(jax.grad(lambda k, xi: ops.conv2d_relu_max_pool(xi[None], k, b, impl="im2col").sum()),
                      in_axes=(None, 0))(k, x)
        gk_ref = jax.vmap(jax.grad(lambda k, xi: ref_block(xi[None], k, b, "VALID", 2).sum()), in_axes=(None, 0))(k, x)
        return got, want, gk, gk_ref, ops.conv2d_relu_max_pool(x, k, b, impl="xla")

    got, want, gk, gk_ref, via_xla = results(k, x)
    np.testing.assert_allclose(got, want, **F32)
    np.testing.assert_allclose(gk, gk_ref, **F32)
    np.testing.assert_allclose(via_xla, want.reshape(via_xla.shape), **F32)


def test_max_pool_and_conv_under_vmap():
    x, k, b = _data(15, 4, 6, 6, 2, 3)

    @jax.jit
    def results(x):
        got = jax.vmap(lambda xi: ops.max_pool(ops.conv2d(xi, k, b, impl="im2col"), impl="reshape"))(
            x.reshape(2, 2, 6, 6, 2))
        return got, ref_pool(ref_conv(x, k, b, "VALID"), 2).reshape(got.shape)

    got, want = results(x)
    np.testing.assert_allclose(got, want, **F32)


# ------------------------------------------------------------------ dispatch and errors
def test_auto_resolves_per_backend():
    want = "xla" if jax.default_backend() != "cpu" else "im2col"
    assert ops.resolve_impl("auto", "conv") == want
    assert ops.resolve_impl("auto", "pool") == ("xla" if want == "xla" else "reshape")
    assert ops.resolve_impl("xla", "conv") == "xla"


@pytest.mark.parametrize("call,match", [
    (lambda: ops.conv2d(jnp.ones((2, 5, 5)), jnp.ones((3, 3, 1, 2))), r"NHWC"),
    (lambda: ops.conv2d(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 2, 2))), r"kernel cin 2"),
    (lambda: ops.conv2d(jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2)), jnp.ones(3)), r"bias must have shape"),
    (lambda: ops.conv2d(jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2)), padding="FULL"), r"padding"),
    (lambda: ops.conv2d(jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2)), impl="cudnn"), r"impl"),
    (lambda: ops.conv2d(jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 2))), r"larger than the image"),
    (lambda: ops.max_pool(jnp.ones((1, 5, 5, 1)), 0), r"window"),
    (lambda: ops.max_pool(jnp.ones((1, 1, 5, 1)), 2), r"larger than the image"),
    (lambda: ops.conv2d_relu_max_pool(jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2)), chunk=0), r"chunk"),
    (lambda: ops.conv2d_relu_max_pool(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2)), window=3), r"window 3"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_images_raise_type_error():
    with pytest.raises(TypeError, match="floating"):
        ops.conv2d(jnp.ones((1, 5, 5, 1), jnp.int32), jnp.ones((3, 3, 1, 2)))
    with pytest.raises(TypeError, match="floating"):
        ops.max_pool(jnp.ones((1, 4, 4, 1), jnp.uint8))
