"""Convolution and max-pooling for the CNN, in two formulations each.

``conv2d`` and ``max_pool`` compute exactly what ``lax.conv_general_dilated`` and
``lax.reduce_window(max)`` compute (the outputs and the gradients), in one of two ways:

- ``impl="xla"``: the XLA primitives themselves (``lax.conv_general_dilated``,
  ``lax.reduce_window``). On GPU/TPU these map to cuDNN / the MXU and are the fast path.
- ``impl="im2col"`` (conv) / ``impl="reshape"`` (pool): the convolution as *im2col*
  (the ``kh*kw`` shifted views of the input stacked on the channel axis) followed by
  ONE matrix multiply, and pooling as a reshape to ``(n, h/p, p, w/p, p, c)`` followed
  by a max over the two window axes. Both have hand-written backward passes
  (``jax.custom_vjp``) made of matmuls and elementwise ops only. On CPU, XLA's
  convolution and the backward of ``reduce_window`` are slow (12-17 GFLOP/s for the
  article's first layer, against a ~300 GFLOP/s float32 matmul peak), while a matmul
  runs near peak: that is the whole reason for the second formulation.
- ``impl="auto"``: ``"xla"`` on GPU/TPU (cuDNN and the TPU convolution units beat an
  im2col matmul there, and they avoid materialising the ``kh*kw``-times larger patch
  matrix in accelerator memory); the im2col/reshape path on CPU, where it was
  measured faster (``benchmarks/bench_cnn.py``).

Layouts follow flax/TensorFlow: images NHWC ``(n, h, w, c)``, kernels HWIO
``(kh, kw, cin, cout)``; stride 1 for the convolution; pooling stride = window.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxcalc._validate import check_floating, shape_of

__all__ = ["conv2d", "max_pool", "conv2d_xla", "conv2d_im2col", "max_pool_xla", "max_pool_reshape",
           "resolve_impl"]

_CONV_IMPLS = ("auto", "xla", "im2col")
_POOL_IMPLS = ("auto", "xla", "reshape")
_PADDINGS = ("VALID", "SAME")


def resolve_impl(impl: str, kind: str) -> str:
    """The concrete implementation ``impl="auto"`` stands for on the default backend.

    Args:
      impl: ``"auto"`` or a concrete name (returned unchanged).
      kind: ``"conv"`` or ``"pool"``.

    Returns:
      ``"xla"`` on GPU/TPU; ``"im2col"`` (conv) or ``"reshape"`` (pool) on CPU.
    """
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "xla"
    return "im2col" if kind == "conv" else "reshape"


# --------------------------------------------------------------------------- checks
def _check_conv_args(x, kernel, bias, padding, impl):
    if impl not in _CONV_IMPLS:
        raise ValueError(f"conv2d: impl must be one of {_CONV_IMPLS}, got {impl!r}")
    if padding not in _PADDINGS:
        raise ValueError(f"conv2d: padding must be 'VALID' or 'SAME' (stride 1), got {padding!r}")
    check_floating(x, "conv2d input x")
    check_floating(kernel, "conv2d kernel")
    xs, ks = shape_of(x), shape_of(kernel)
    if len(xs) != 4:
        raise ValueError(f"conv2d: x must be NHWC (n, h, w, cin), got shape {xs}")
    if len(ks) != 4:
        raise ValueError(f"conv2d: kernel must be HWIO (kh, kw, cin, cout), got shape {ks}")
    if ks[2] != xs[3]:
        raise ValueError(f"conv2d: kernel cin {ks[2]} (kernel shape {ks}) != input channels {xs[3]} "
                         f"(x shape {xs})")
    if padding == "VALID" and (ks[0] > xs[1] or ks[1] > xs[2]):
        raise ValueError(f"conv2d: kernel {ks[:2]} larger than the image {xs[1:3]} with VALID padding")
    if bias is not None:
        check_floating(bias, "conv2d bias")
        if shape_of(bias) != (ks[3],):
            raise ValueError(f"conv2d: bias must have shape (cout,) = ({ks[3]},), got {shape_of(bias)}")


def _check_pool_args(x, window, impl):
    if impl not in _POOL_IMPLS:
        raise ValueError(f"max_pool: impl must be one of {_POOL_IMPLS}, got {impl!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"max_pool: window must be a positive int, got {window!r}")
    check_floating(x, "max_pool input x")
    xs = shape_of(x)
    if len(xs) != 4:
        raise ValueError(f"max_pool: x must be NHWC (n, h, w, c), got shape {xs}")
    if xs[1] < window or xs[2] < window:
        raise ValueError(f"max_pool: window {window} larger than the image {xs[1:3]} (x shape {xs})")


def _same_pads(k: int) -> tuple[int, int]:
    # lax.padtype_to_pads for stride 1: total k - 1, the smaller half before.
    return (k - 1) // 2, (k - 1) - (k - 1) // 2


# --------------------------------------------------------------------------- conv: xla
def conv2d_xla(x, kernel, bias=None, *, padding="VALID"):
    """``lax.conv_general_dilated`` in NHWC/HWIO, stride 1 (the reference formulation)."""
    y = lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding=padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if bias is not None:
        y = y + bias[None, None, None, :]
    return y


# --------------------------------------------------------------------------- conv: im2col
def _patches(xp, kh, kw):
    """im2col of an already padded NHWC image: ``(n, ho, wo, kh*kw*c)``.

    The last axis is ordered ``(i, j, c)``, the row order of ``kernel.reshape(kh*kw*cin, cout)``
    for an HWIO kernel, so ``patches @ kernel2d`` is the convolution.
    """
    n, hp, wp, c = xp.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    views = [lax.slice(xp, (0, i, j, 0), (n, i + ho, j + wo, c)) for i in range(kh) for j in range(kw)]
    return jnp.concatenate(views, axis=-1) if len(views) > 1 else views[0]


def _col2im(dpatches, kh, kw, c, hp, wp):
    """Transpose of ``_patches``: scatter-add each shifted block back, ``(n, hp, wp, c)``."""
    n, ho, wo, _ = dpatches.shape
    out = jnp.zeros((n, hp, wp, c), dpatches.dtype)
    for i in range(kh):
        for j in range(kw):
            k = (i * kw + j) * c
            block = lax.slice_in_dim(dpatches, k, k + c, axis=3)
            out = out + lax.pad(block, jnp.zeros((), dpatches.dtype),
                                ((0, 0, 0), (i, hp - ho - i, 0), (j, wp - wo - j, 0), (0, 0, 0)))
    return out


def _pad_input(x, kh, kw, padding):
    if padding == "VALID":
        return x
    (ht, hb), (wl, wr) = _same_pads(kh), _same_pads(kw)
    return jnp.pad(x, ((0, 0), (ht, hb), (wl, wr), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _im2col_conv(x, kernel, padding):
    kh, kw, cin, cout = kernel.shape
    p = _patches(_pad_input(x, kh, kw, padding), kh, kw)
    return jnp.matmul(p, kernel.reshape(kh * kw * cin, cout))


def _im2col_conv_fwd(x, kernel, padding):
    kh, kw, cin, cout = kernel.shape
    p = _patches(_pad_input(x, kh, kw, padding), kh, kw)
    return jnp.matmul(p, kernel.reshape(kh * kw * cin, cout)), (p, kernel, x.shape)


def _im2col_conv_bwd(padding, res, dy):
    p, kernel, xshape = res
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = dy.shape
    dy2 = dy.reshape(n * ho * wo, cout)
    # dL/dW = patches^T @ dL/dy: one (kh*kw*cin, n*ho*wo) @ (n*ho*wo, cout) matmul.
    dk = jnp.matmul(p.reshape(n * ho * wo, kh * kw * cin).T, dy2).reshape(kernel.shape)
    # dL/dx = col2im(dL/dy @ W^T), then crop the SAME padding away.
    dp = jnp.matmul(dy, kernel.reshape(kh * kw * cin, cout).T)
    hp, wp = ho + kh - 1, wo + kw - 1
    dxp = _col2im(dp, kh, kw, cin, hp, wp)
    if padding == "SAME":
        (ht, _), (wl, _) = _same_pads(kh), _same_pads(kw)
        dxp = lax.slice(dxp, (0, ht, wl, 0), (n, ht + xshape[1], wl + xshape[2], cin))
    return dxp, dk


_im2col_conv.defvjp(_im2col_conv_fwd, _im2col_conv_bwd)


def conv2d_im2col(x, kernel, bias=None, *, padding="VALID"):
    """Convolution as im2col + one matmul, with a matmul backward (``jax.custom_vjp``)."""
    y = _im2col_conv(x, kernel, padding)
    if bias is not None:
        y = y + bias[None, None, None, :]
    return y


def conv2d(x, kernel, bias=None, *, padding="VALID", impl="auto"):
    """2-D convolution (cross-correlation, as in every DL framework), stride 1.

    ``y[b, p, q, o] = sum_{i, j, c} xpad[b, p + i, q + j, c] * kernel[i, j, c, o] + bias[o]``

    Args:
      x: ``(n, h, w, cin)`` float images, NHWC.
      kernel: ``(kh, kw, cin, cout)`` float, HWIO.
      bias: optional ``(cout,)``.
      padding: ``"VALID"`` (output ``(h-kh+1, w-kw+1)``) or ``"SAME"`` (output ``(h, w)``,
        zero padding split as ``lax`` does: the smaller half before).
      impl: ``"auto"`` | ``"xla"`` | ``"im2col"`` (see the module docstring).

    Returns:
      ``(n, h', w', cout)``, the same values and gradients (to rounding) for every ``impl``.
    """
    _check_conv_args(x, kernel, bias, padding, impl)
    if resolve_impl(impl, "conv") == "xla":
        return conv2d_xla(x, kernel, bias, padding=padding)
    return conv2d_im2col(x, kernel, bias, padding=padding)


# --------------------------------------------------------------------------- pooling
def max_pool_xla(x, window=2):
    """``lax.reduce_window(max)``, stride = window, VALID (the reference formulation)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, window, window, 1), "VALID")


def _crop_windows(x, window):
    n, h, w, c = x.shape
    ho, wo = h // window, w // window
    xc = x[:, :ho * window, :wo * window, :] if (h % window or w % window) else x
    return xc.reshape(n, ho, window, wo, window, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _reshape_pool(x, window):
    return jnp.max(_crop_windows(x, window), axis=(2, 4))


def _reshape_pool_fwd(x, window):
    xw = _crop_windows(x, window)
    y = jnp.max(xw, axis=(2, 4))
    return y, (xw, y, x.shape)


def _reshape_pool_bwd(window, res, dy):
    xw, y, xshape = res
    n, h, w, c = xshape
    ho, wo = y.shape[1], y.shape[2]
    hit = xw == y[:, :, None, :, None, :]  # (n, ho, p, wo, p, c)
    # Route dy to the FIRST maximum of each window in row-major order, as XLA's
    # select_and_scatter (the backward of reduce_window max) does: identical on ties too.
    flat = [hit[:, :, a, :, b, :] for a in range(window) for b in range(window)]
    seen = jnp.zeros_like(flat[0])
    first = []
    for m in flat:
        first.append(m & ~seen)
        seen = seen | m
    zero = jnp.zeros((), dy.dtype)
    parts = [jnp.where(f, dy, zero) for f in first]
    dxw = jnp.stack(parts, axis=-2).reshape(n, ho, wo, window, window, c)
    dx = dxw.transpose(0, 1, 3, 2, 4, 5).reshape(n, ho * window, wo * window, c)
    if (h, w) != (ho * window, wo * window):
        dx = jnp.pad(dx, ((0, 0), (0, h - ho * window), (0, w - wo * window), (0, 0)))
    return (dx,)


_reshape_pool.defvjp(_reshape_pool_fwd, _reshape_pool_bwd)


def max_pool_reshape(x, window=2):
    """Max pooling as a reshape + max over the window axes, with a mask backward.

    The backward sends each output's cotangent to the first maximal element of its
    window (row-major), exactly as ``reduce_window``'s backward (``select_and_scatter``)
    does; plain ``jax.grad`` of ``jnp.max`` would instead split it evenly among ties.
    """
    return _reshape_pool(x, window)


def max_pool(x, window=2, *, impl="auto"):
    """Max pooling over non-overlapping ``window x window`` blocks (stride = window), VALID.

    Rows/columns that do not fill a whole window are dropped (like ``flax.nnx.max_pool``
    and ``lax.reduce_window(..., "VALID")``): a 7x7 image pools to 3x3 with ``window=2``.

    Args:
      x: ``(n, h, w, c)`` float, NHWC.
      window: the window side and the stride.
      impl: ``"auto"`` | ``"xla"`` | ``"reshape"`` (see the module docstring).

    Returns:
      ``(n, h // window, w // window, c)``. Gradients equal ``reduce_window``'s, ties included.
    """
    _check_pool_args(x, window, impl)
    if resolve_impl(impl, "pool") == "xla":
        return max_pool_xla(x, window)
    return max_pool_reshape(x, window)
