"""Convolution and max-pooling for the CNN, in two formulations each.

``conv2d`` and ``max_pool`` compute exactly what ``lax.conv_general_dilated`` and
``lax.reduce_window(max)`` compute (the outputs and the gradients), in one of two ways:

- ``impl="xla"``: the XLA primitives themselves (``lax.conv_general_dilated``,
  ``lax.reduce_window``). On GPU/TPU these map to cuDNN / the MXU and are the fast path.
- ``impl="im2col"`` (conv) / ``impl="reshape"`` (pool): the convolution as *im2col*
  (the ``kh*kw`` shifted views of the input stacked on the channel axis) followed by
  ONE matrix multiply, and pooling as a reshape to ``(n, h/p, p, w/p, p, c)`` followed
  by a max over the two window axes. Their derivatives are matmuls and elementwise
  selects only: JAX's own derivative of the im2col program (``dW = patches^T @ dy``,
  col2im for ``dx``), and a ``jax.custom_jvp`` for the pooling that routes each gradient
  to the first maximum of its window, as ``reduce_window`` does. On CPU, XLA's
  convolution and the backward of ``reduce_window`` are slow (12-17 GFLOP/s for the
  article's first layer, against a ~300 GFLOP/s float32 matmul peak, as measured for
  issue 5), while a matmul runs near peak: that is the reason for the second formulation.
- ``impl="auto"``: ``"xla"`` on GPU/TPU (cuDNN and the TPU convolution units beat an
  im2col matmul there, and they avoid materialising the ``kh*kw``-times larger patch
  matrix in accelerator memory); the im2col/reshape path on CPU, where it was
  measured faster (``benchmarks/bench_cnn.py``).
- ``conv2d_relu_max_pool``: the CNN's whole first block as one op, processed in batch
  chunks that stay in cache, with a backward that never materialises the conv output:
  the fastest CPU formulation measured (about 1.5x the separate ops' training-step throughput).

Layouts follow flax/TensorFlow: images NHWC ``(n, h, w, c)``, kernels HWIO
``(kh, kw, cin, cout)``; stride 1 for the convolution; pooling stride = window.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxcalc._validate import check_floating, shape_of

__all__ = [
    "conv2d",
    "conv2d_im2col",
    "conv2d_relu_max_pool",
    "conv2d_xla",
    "max_pool",
    "max_pool_reshape",
    "max_pool_xla",
    "resolve_impl",
]

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


def conv2d_im2col(x, kernel, bias=None, *, padding="VALID"):
    """Convolution as im2col + one matmul: ``patches (n, ho, wo, kh*kw*cin) @ kernel (kh*kw*cin, cout)``.

    No custom derivative rule is needed: JAX's derivative of this program already is the
    matmul backward (``dW = patches^T @ dy``, ``dpatches = dy @ W^T`` scattered back by the
    transpose of the slices, i.e. col2im), and it supports forward mode too.
    """
    kh, kw, cin, cout = kernel.shape
    p = _patches(_pad_input(x, kh, kw, padding), kh, kw)
    y = jnp.matmul(p, kernel.reshape(kh * kw * cin, cout))
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


def _idx_dtype(window):
    return jnp.int8 if window * window <= 127 else jnp.int32


def _window_codes(window):
    """``(window, window)`` array ``a * window + b``: each window position's index, row-major."""
    r = jnp.arange(window, dtype=_idx_dtype(window))
    return r[:, None] * window + r[None, :]


def _first_argmax(xw):
    """Max and FIRST argmax (row-major, int8) of each window of ``xw (n, ho, p, wo, p, c)``."""
    p = xw.shape[2]
    best = xw[:, :, 0, :, 0, :]
    dt = _idx_dtype(p)
    idx = jnp.zeros(best.shape, dt)
    for a in range(p):
        for b in range(p):
            if a == b == 0:
                continue
            v = xw[:, :, a, :, b, :]
            better = v > best  # strict: an equal later value never displaces the first maximum
            idx = jnp.where(better, jnp.asarray(a * p + b, dt), idx)
            best = jnp.maximum(best, v)
    return best, idx


def _onehot_windows(idx, window):
    """``(n, ho, 1, wo, 1, c) int8 -> (n, ho, p, wo, p, c) bool``: True at each window's chosen element."""
    return idx[:, :, None, :, None, :] == _window_codes(window)[None, None, :, None, :, None]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _reshape_pool(x, window):
    return _first_argmax(_crop_windows(x, window))[0]


@_reshape_pool.defjvp
def _reshape_pool_jvp(window, primals, tangents):
    # The tangent picks, in each window, the tangent of the FIRST maximal element: the rule
    # XLA uses for reduce_window max (select_and_gather_add with `>=`). Linear in the tangent,
    # so reverse mode is its transpose: the cotangent is broadcast back to that element.
    (x,), (t,) = primals, tangents
    xw = _crop_windows(x, window)
    y, idx = _first_argmax(xw)
    hit = _onehot_windows(idx, window)
    dy = jnp.sum(jnp.where(hit, _crop_windows(t, window), jnp.zeros((), t.dtype)), axis=(2, 4))
    return y, dy


def max_pool_reshape(x, window=2):
    """Max pooling as a reshape to ``(n, h/p, p, w/p, p, c)`` + a max over the window axes.

    Its derivative (``jax.custom_jvp``, so forward and reverse mode) sends each output's
    cotangent to the FIRST maximal element of its window (row-major), exactly as
    ``reduce_window``'s backward (``select_and_scatter``) does, ties included. Plain
    ``jax.grad`` of ``jnp.max`` would instead split it evenly among tied elements (equal
    away from ties, which have probability 0 on continuous inputs; not after a relu, where
    all-negative windows tie at 0 -- harmless there since relu's derivative is 0 too).
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


# --------------------------------------------------------------------------- fused conv + relu + pool
_FUSED_IMPLS = ("auto", "xla", "im2col")


def _split_batch(a, chunk):
    """``(n, ...) -> ((n // chunk, chunk, ...), (n % chunk, ...))``: whole chunks and the rest."""
    nf = a.shape[0] // chunk
    return a[:nf * chunk].reshape((nf, chunk, *a.shape[1:])), a[nf * chunk:]


def _map_chunks(fn, chunk, *arrays):
    """``fn`` over batch chunks of ``arrays`` with ``lax.map``, the remainder in one more call."""
    mains, rests = zip(*(_split_batch(a, chunk) for a in arrays), strict=True)
    outs = []
    if mains[0].shape[0]:
        outs.append(jax.tree.map(lambda o: o.reshape((-1, *o.shape[2:])), lax.map(lambda a: fn(*a), mains)))
    if rests[0].shape[0]:
        outs.append(fn(*rests))
    return jax.tree.map(lambda *o: o[0] if len(o) == 1 else jnp.concatenate(o), *outs)


def _crp_chunk_fwd(xc, w2, bias, kh, kw, window):
    """One chunk, VALID: ``(c, hp, wp, cin) -> pooled relu (c, hq, wq, cout)`` and the window index
    of each output's source (-1 where the relu output is 0, i.e. no gradient flows)."""
    z = jnp.matmul(_patches(xc, kh, kw), w2)  # (c, ho, wo, cout), stays in cache
    best, idx = _first_argmax(_crop_windows(z, window))
    y = best + bias[None, None, None, :]
    alive = y > 0
    return jnp.where(alive, y, jnp.zeros((), y.dtype)), jnp.where(alive, idx, jnp.asarray(-1, idx.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_relu_pool(xp, kernel, bias, window, chunk):
    return _conv_relu_pool_fwd(xp, kernel, bias, window, chunk)[0]


def _conv_relu_pool_fwd(xp, kernel, bias, window, chunk):
    kh, kw, cin, cout = kernel.shape
    w2 = kernel.reshape(kh * kw * cin, cout)
    y, idx = _map_chunks(lambda xc: _crp_chunk_fwd(xc, w2, bias, kh, kw, window), chunk, xp)
    # Residuals: the (small) input, the kernel and one int8 per output -- never the conv output.
    return y, (xp, kernel, idx)


def _conv_relu_pool_bwd(window, chunk, res, g):
    xp, kernel, idx = res
    kh, kw, cin, cout = kernel.shape
    k = kh * kw * cin
    w2 = kernel.reshape(k, cout)
    _, hp, wp, _ = xp.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    hq, wq = ho // window, wo // window
    zero = jnp.zeros((), g.dtype)

    def chunk_grads(xc, ic, gc):
        c = xc.shape[0]
        p = _patches(xc, kh, kw).reshape(c * ho * wo, k)  # recomputed: cheaper than storing it
        # dL/dz: each pooled cotangent goes to its window's chosen element (the first maximum).
        dz = jnp.where(_onehot_windows(ic, window), gc[:, :, None, :, None, :], zero)
        dz = dz.reshape(c, hq * window, wq * window, cout)
        if (ho, wo) != (hq * window, wq * window):
            dz = jnp.pad(dz, ((0, 0), (0, ho - hq * window), (0, wo - wq * window), (0, 0)))
        dw = jnp.matmul(p.T, dz.reshape(c * ho * wo, cout))  # patches^T @ dz
        dxc = _col2im(jnp.matmul(dz, w2.T), kh, kw, cin, hp, wp)  # dropped by XLA when unused
        return dw, dxc

    def step(acc, inputs):
        dw, dxc = chunk_grads(*inputs)
        return acc + dw, dxc

    (xm, xr), (im, ir), (gm, gr) = (_split_batch(a, chunk) for a in (xp, idx, g))
    dw = jnp.zeros((k, cout), g.dtype)
    dxs = []
    if xm.shape[0]:
        dw, dxm = lax.scan(step, dw, (xm, im, gm))
        dxs.append(dxm.reshape((-1, *dxm.shape[2:])))
    if xr.shape[0]:
        dwr, dxr = chunk_grads(xr, ir, gr)
        dw = dw + dwr
        dxs.append(dxr)
    dx = dxs[0] if len(dxs) == 1 else jnp.concatenate(dxs)
    db = jnp.sum(jnp.where(idx >= 0, g, zero), axis=(0, 1, 2))
    return dx, dw.reshape(kernel.shape), db


_conv_relu_pool.defvjp(_conv_relu_pool_fwd, _conv_relu_pool_bwd)


def conv2d_relu_max_pool(x, kernel, bias=None, *, window=2, padding="VALID", impl="auto", chunk=16):
    """``max_pool(relu(conv2d(x, kernel, bias)), window)`` as one op: the CNN's first block.

    With ``impl="im2col"`` (the CPU default) the batch is processed in chunks of ``chunk``
    images (``lax.map`` forward, ``lax.scan`` backward), so the im2col patches and the conv
    output of a chunk stay in cache and are never written out for the whole batch; the
    backward keeps only the input and one int8 per pooled output (which window element won,
    or -1 where the relu is 0), recomputes each chunk's patches and accumulates
    ``dW += patches^T @ dz``. On CPU the article's CNN trains about 1.5x faster with it than
    with the separate ``conv2d`` + ``max_pool`` ops (``benchmarks/bench_cnn.py``: 7,858 vs 5,178
    images/s at batch 128 on 2 cores), with ~3x less temporary memory (16 vs 49 MB at batch 128). The derivative is a
    ``jax.custom_vjp`` (reverse mode
    only); ``impl="xla"`` composes the XLA primitives and supports every transformation.

    Pooling the pre-activation and then applying relu gives the same values and gradients
    (relu is monotone; where the window maximum is <= 0 both give 0 and a 0 gradient), and
    gradients follow ``reduce_window``'s rule: the first maximum of each window, ties included.

    Args:
      x: ``(n, h, w, cin)`` float images, NHWC.
      kernel: ``(kh, kw, cin, cout)`` float, HWIO.
      bias: optional ``(cout,)``.
      window: pooling window side and stride (rows/cols that do not fill a window are dropped).
      padding: ``"VALID"`` or ``"SAME"`` for the convolution (stride 1).
      impl: ``"auto"`` (``"im2col"`` on CPU, ``"xla"`` on GPU/TPU) | ``"xla"`` | ``"im2col"``.
      chunk: images per chunk for ``"im2col"`` (16 keeps a chunk's 30x30x27 patches and
        30x30x32 outputs near a 2 MB L2 cache); any batch size works, the last chunk may be smaller.

    Returns:
      ``(n, h' // window, w' // window, cout)`` with ``h', w'`` the conv output size.
    """
    if impl not in _FUSED_IMPLS:
        raise ValueError(f"conv2d_relu_max_pool: impl must be one of {_FUSED_IMPLS}, got {impl!r}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"conv2d_relu_max_pool: chunk must be a positive int, got {chunk!r}")
    _check_conv_args(x, kernel, bias, padding, "xla")
    kh, kw = shape_of(kernel)[:2]
    xs = shape_of(x)
    ho, wo = (xs[1], xs[2]) if padding == "SAME" else (xs[1] - kh + 1, xs[2] - kw + 1)
    _check_pool_args(jax.ShapeDtypeStruct((xs[0], ho, wo, shape_of(kernel)[3]), jnp.result_type(x)),
                     window, "xla")
    if resolve_impl(impl, "conv") == "xla":
        return max_pool_xla(jax.nn.relu(conv2d_xla(x, kernel, bias, padding=padding)), window)
    if bias is None:
        bias = jnp.zeros((shape_of(kernel)[3],), jnp.result_type(x, kernel))
    return _conv_relu_pool(_pad_input(x, kh, kw, padding), kernel, bias, window, chunk)
