"""Backpropagation by hand: a forward pass that keeps a cache, a backward pass that applies
the chain rule layer by layer, for the MLPs of :mod:`jaxcalc.models.mlp`.

Every layer is a pair of functions, written next to each other:

* ``<layer>_forward(inputs) -> (out, cache)`` computes the layer and keeps what its
  derivative needs;
* ``<layer>_backward(cache, dout) -> d<inputs>`` takes the gradient of the loss with respect
  to the layer's output (``dout = ∂L/∂out``, same shape as ``out``) and returns the gradient
  with respect to its inputs: the chain rule ``∂L/∂in = (∂out/∂in)ᵀ · ∂L/∂out``, with the
  local Jacobian ``∂out/∂in`` written out by hand.

:func:`backprop_grads` runs the layers forward (keeping the caches) and then backward in
reverse order, which is exactly what reverse-mode automatic differentiation does.
:func:`vjp_backprop_grads` makes that link explicit: it is the same loop, but each layer's
hand-written ``backward`` is replaced by the vector-Jacobian product (VJP) that
``jax.vjp`` derives from the layer's forward rule. ``jax.grad`` of the whole loss is the same
thing again with the per-layer split done by JAX, so all three agree to rounding error
(tests: relative difference <= 1e-10 in float64).

Shapes: ``x`` is ``(n, d_in)``; layer ``l`` has ``W: (d_{l-1}, d_l)``, ``b: (d_l,)``;
hidden layers apply an activation, the last layer is linear (regression outputs or logits).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcalc import losses
from jaxcalc._validate import check_floating
from jaxcalc.models.mlp import ACTIVATIONS, check_mlp_params, mlp_loss

__all__ = [
    "LOSSES",
    "autodiff_grads",
    "backprop_grads",
    "backprop_loss",
    "backprop_value_and_grads",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dense_backward",
    "dense_forward",
    "identity_backward",
    "identity_forward",
    "max_relative_difference",
    "mlp_backward",
    "mlp_forward",
    "mse_backward",
    "mse_forward",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "tanh_backward",
    "tanh_forward",
    "vjp_backprop_grads",
]


# --------------------------------------------------------------------------- dense layer
def dense_forward(x, w, b):
    """Affine layer ``z = x W + b``.

    Args:
      x: ``(n, d_in)`` inputs.
      w: ``(d_in, d_out)`` weights.
      b: ``(d_out,)`` bias.

    Returns:
      ``(z, cache)`` with ``z: (n, d_out)`` and ``cache = (x, w)``.
    """
    return x @ w + b[None, :], (x, w)


def dense_backward(cache, dz):
    """Local derivatives of ``z = x W + b``: ``∂z/∂x = W``, ``∂z/∂W = x``, ``∂z/∂b = 1``.

    Args:
      cache: ``(x, w)`` from :func:`dense_forward`.
      dz: ``(n, d_out)``, ``∂L/∂z``.

    Returns:
      ``(dx, dw, db)``: ``dx = dz Wᵀ`` ``(n, d_in)``, ``dw = xᵀ dz`` ``(d_in, d_out)``,
      ``db = Σ_i dz_i`` ``(d_out,)`` (the bias is shared by every example, so its gradient
      sums over the batch).
    """
    x, w = cache
    return dz @ w.T, x.T @ dz, jnp.sum(dz, axis=0)


# --------------------------------------------------------------------------- activations
def relu_forward(z):
    """``relu(z) = max(z, 0)``; ``cache = z``."""
    return jnp.maximum(z, 0), z


def relu_backward(cache, dout):
    """``relu'(z) = 1 if z > 0 else 0`` (0 at the kink, as ``jax.nn.relu``'s derivative)."""
    z = cache
    return jnp.where(z > 0, dout, jnp.zeros_like(dout))


def tanh_forward(z):
    """``tanh(z)``; ``cache = tanh(z)`` (the derivative needs only the output)."""
    t = jnp.tanh(z)
    return t, t


def tanh_backward(cache, dout):
    """``tanh'(z) = 1 − tanh(z)²``."""
    t = cache
    return dout * (1 - t * t)


def sigmoid_forward(z):
    """``σ(z) = 1 / (1 + e^{−z})``; ``cache = σ(z)``."""
    s = jax.nn.sigmoid(z)
    return s, s


def sigmoid_backward(cache, dout):
    """``σ'(z) = σ(z)(1 − σ(z))``, at most 1/4: the reason deep sigmoid nets' gradients vanish."""
    s = cache
    return dout * s * (1 - s)


def identity_forward(z):
    """``z`` unchanged; no cache."""
    return z, None


def identity_backward(cache, dout):
    """Derivative 1."""
    del cache
    return dout


_ACTIVATION_RULES: dict[str, tuple[Callable, Callable]] = {
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "identity": (identity_forward, identity_backward),
}


# --------------------------------------------------------------------------- loss heads
def mse_forward(predictions, targets):
    """Mean squared error head, the value from :func:`jaxcalc.losses.mse`.

    Args:
      predictions: ``(n, k)`` outputs of the last layer.
      targets: same shape (no broadcasting: ``y`` of shape ``(n,)`` must be written ``y[:, None]``).

    Returns:
      ``(loss, cache)``: scalar ``mean((ŷ − y)²)`` over all ``n·k`` entries; ``cache = (ŷ, y)``.
    """
    loss = losses.mse(predictions, targets)
    return loss, (predictions, jnp.asarray(targets, jnp.result_type(predictions)))


def mse_backward(cache, dloss=1.0):
    """``∂ mean((ŷ − y)²) / ∂ŷ = 2 (ŷ − y) / N`` with ``N = ŷ.size``; times ``dloss``."""
    pred, y = cache
    return (2.0 / pred.size) * (pred - y) * dloss


def cross_entropy_forward(logits, labels):
    """Softmax cross-entropy head, the value from :func:`jaxcalc.losses.cross_entropy`.

    Args:
      logits: ``(n, k)`` scores of the last layer.
      labels: ``(n,)`` integer classes in ``[0, k)``.

    Returns:
      ``(loss, cache)``: scalar ``mean(logsumexp(z) − z_y)``; ``cache = (logits, labels)``.
    """
    loss = losses.cross_entropy(logits, labels)
    return loss, (logits, labels)


def cross_entropy_backward(cache, dloss=1.0):
    """``∂ mean(CE) / ∂z = (softmax(z) − one_hot(y)) / n``; times ``dloss``."""
    logits, labels = cache
    n, k = logits.shape
    p = jax.nn.softmax(logits, axis=-1)
    return (p - jax.nn.one_hot(labels, k, dtype=logits.dtype)) * (dloss / n)


LOSSES: dict[str, tuple[Callable, Callable]] = {
    "mse": (mse_forward, mse_backward),
    "cross_entropy": (cross_entropy_forward, cross_entropy_backward),
}


# --------------------------------------------------------------------------- whole network
class LayerCache(NamedTuple):
    dense: Any  # (x, W) of the affine map
    act: Any  # activation cache (None for the linear last layer)


def _check_params(params, x) -> None:
    check_mlp_params(params)
    check_floating(x, "x")
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must be a batch of shape (n, d_in), got {tuple(jnp.shape(x))}")
    d_in = jnp.shape(params[0][0])[0]
    if jnp.shape(x)[1] != d_in:
        raise ValueError(f"x has {jnp.shape(x)[1]} features but params[0] W expects {d_in}")
    for i in range(1, len(params)):
        if jnp.shape(params[i][0])[0] != jnp.shape(params[i - 1][0])[1]:
            raise ValueError(
                f"params[{i}] W {tuple(jnp.shape(params[i][0]))} does not follow "
                f"params[{i - 1}] W {tuple(jnp.shape(params[i - 1][0]))}"
            )


def _rules(activation: str, loss: str):
    if activation not in _ACTIVATION_RULES:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(_ACTIVATION_RULES)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {tuple(LOSSES)}")
    return _ACTIVATION_RULES[activation], LOSSES[loss]


def mlp_forward(params, x, *, activation: str = "relu"):
    """Forward pass of :func:`jaxcalc.models.mlp.mlp_apply`, keeping each layer's cache.

    Args:
      params: ``[(W1, b1), ..., (WL, bL)]``.
      x: ``(n, d_in)``.
      activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"identity"`` (hidden layers).

    Returns:
      ``(out, caches)``: ``out`` of shape ``(n, d_L)`` and one :class:`LayerCache` per layer.
    """
    (act_fwd, _), _ = _rules(activation, "mse")
    _check_params(params, x)
    caches = []
    h = x
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        z, dense_cache = dense_forward(h, w, b)
        if i < last:
            h, act_cache = act_fwd(z)
        else:
            h, act_cache = z, None
        caches.append(LayerCache(dense_cache, act_cache))
    return h, caches


def mlp_backward(caches, dout, *, activation: str = "relu", input_grad: bool = False):
    """Backward pass: the chain rule from the last layer to the first.

    Args:
      caches: from :func:`mlp_forward`.
      dout: ``(n, d_L)``, ``∂L/∂out``.
      activation: the hidden activation used in the forward pass.
      input_grad: also return ``∂L/∂x`` ``(n, d_in)``.

    Returns:
      ``[(dW1, db1), ..., (dWL, dbL)]``, the shapes of params (and ``∂L/∂x`` when
      ``input_grad``).
    """
    (_, act_bwd), _ = _rules(activation, "mse")
    grads = []
    dh = dout
    for i in reversed(range(len(caches))):
        cache = caches[i]
        dz = dh if i == len(caches) - 1 else act_bwd(cache.act, dh)  # last layer is linear
        dh, dw, db = dense_backward(cache.dense, dz)
        grads.append((dw, db))
    return (grads[::-1], dh) if input_grad else grads[::-1]


def _like(params, grads):
    """Put ``[(dW, db), ...]`` into the pytree structure of ``params`` (list or tuple)."""
    leaves = [g for pair in grads for g in pair]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


def backprop_value_and_grads(params, x, y, *, loss: str = "mse", activation: str = "relu"):
    """Loss value and its gradient, by the hand-written forward and backward passes.

    Args:
      params: ``[(W1, b1), ..., (WL, bL)]``.
      x: ``(n, d_in)`` float inputs.
      y: ``(n, d_L)`` float targets for ``loss="mse"``; ``(n,)`` integer labels for
        ``loss="cross_entropy"``.
      loss: ``"mse"`` (:func:`jaxcalc.losses.mse`) or ``"cross_entropy"``
        (:func:`jaxcalc.losses.cross_entropy`).
      activation: hidden activation.

    Returns:
      ``(loss_value, grads)``, ``grads`` with the pytree structure of ``params``.
    """
    _, (loss_fwd, loss_bwd) = _rules(activation, loss)
    out, caches = mlp_forward(params, x, activation=activation)
    value, loss_cache = loss_fwd(out, y)
    dout = loss_bwd(loss_cache, jnp.ones((), out.dtype))
    return value, _like(params, mlp_backward(caches, dout, activation=activation))


def backprop_grads(params, x, y, *, loss: str = "mse", activation: str = "relu"):
    """Gradient of ``loss(mlp_apply(params, x), y)`` with respect to ``params``, by hand.

    The same value as ``jax.grad(jaxcalc.models.mlp.mlp_loss)(params, {"x": x, "y": y})``
    (see :func:`backprop_value_and_grads` for the arguments).

    >>> import jax, jax.numpy as jnp
    >>> from jaxcalc.models.mlp import init_mlp
    >>> params = init_mlp(jax.random.key(0), (2, 10, 10, 1), init="glorot_uniform")
    >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]]); y = jnp.array([[2.0], [6.0]])
    >>> [tuple(g.shape) for g, _ in backprop_grads(params, x, y)]
    [(2, 10), (10, 10), (10, 1)]
    """
    return backprop_value_and_grads(params, x, y, loss=loss, activation=activation)[1]


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _backprop_loss(params, x, y, loss, activation):
    return backprop_value_and_grads(params, x, y, loss=loss, activation=activation)[0]


def _backprop_loss_fwd(params, x, y, loss, activation):
    _, (loss_fwd, _loss_bwd) = _rules(activation, loss)
    out, caches = mlp_forward(params, x, activation=activation)
    value, loss_cache = loss_fwd(out, y)
    return value, (params, caches, loss_cache)


def _backprop_loss_bwd(loss, activation, residuals, g):
    params, caches, loss_cache = residuals
    _, (_, loss_bwd) = _rules(activation, loss)
    dout = loss_bwd(loss_cache, g)
    grads, dx = mlp_backward(caches, dout, activation=activation, input_grad=True)
    dy = -dout if loss == "mse" else None  # ∂ mean((ŷ − y)²)/∂y = −∂/∂ŷ; integer labels: none
    return _like(params, grads), dx, dy


_backprop_loss.defvjp(_backprop_loss_fwd, _backprop_loss_bwd)


def backprop_loss(params, x, y, *, loss: str = "mse", activation: str = "relu"):
    """The MLP loss as a function whose ``jax.grad`` *is* the hand-written backward pass.

    A ``jax.custom_vjp``: the forward rule is :func:`mlp_forward` + the loss head, the
    backward rule is :func:`mlp_backward`. So ``jax.grad(backprop_loss)`` trains with manual
    backprop inside any JAX program (jit, scan, optax), and ``jax.test_util.check_grads``
    checks the hand-written derivatives against finite differences. Differentiable in
    ``params``, ``x`` and (for ``"mse"``) ``y``. Arguments as :func:`backprop_grads`.
    """
    _rules(activation, loss)
    return _backprop_loss(params, x, y, loss, activation)


def vjp_backprop_grads(params, x, y, *, loss: str = "mse", activation: str = "relu"):
    """Backpropagation with ``jax.vjp`` standing in for each hand-written ``backward``.

    Reverse-mode autodiff *is* backpropagation: for each layer ``out = f(in)``,
    ``jax.vjp(f, in)`` returns ``out`` and a function ``v ↦ vᵀ ∂f/∂in`` (a vector-Jacobian
    product), exactly what ``<layer>_backward(cache, v)`` computes by hand; the closure plays
    the part of the cache. Running the layers forward while keeping the VJP closures, then
    calling them in reverse order starting from ``∂L/∂L = 1``, is the loop of
    :func:`backprop_grads` with the local derivatives derived by JAX instead of by hand;
    ``jax.grad`` of the whole loss does the same with the per-layer split left to JAX.

    Arguments and result as :func:`backprop_grads`.
    """
    _rules(activation, loss)
    _check_params(params, x)
    act = ACTIVATIONS[activation]
    loss_fn = losses.mse if loss == "mse" else losses.cross_entropy

    def dense(h, w, b):
        return h @ w + b[None, :]

    vjps = []
    h = x
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        z, dense_vjp = jax.vjp(dense, h, w, b)
        if i < last:
            h, act_vjp = jax.vjp(act, z)
        else:
            h, act_vjp = z, None
        vjps.append((dense_vjp, act_vjp))
    value, loss_vjp = jax.vjp(lambda out: loss_fn(out, y), h)
    (dh,) = loss_vjp(jnp.ones_like(value))
    grads = []
    for dense_vjp, act_vjp in reversed(vjps):
        dz = dh if act_vjp is None else act_vjp(dh)[0]
        dh, dw, db = dense_vjp(dz)
        grads.append((dw, db))
    return _like(params, grads[::-1])


def autodiff_grads(params, x, y, *, loss: str = "mse", activation: str = "relu"):
    """``jax.grad`` of the same loss (the reference the hand-written pass is tested against)."""
    _rules(activation, loss)
    return jax.grad(mlp_loss)(params, {"x": x, "y": y}, loss=loss, activation=activation)


def max_relative_difference(a, b) -> jax.Array:
    """Largest leafwise relative difference ``max|a − b| / max|b|`` between two pytrees.

    Normalised per leaf by the reference leaf's largest magnitude (not elementwise, where
    entries that are zero up to rounding would make any relative error unbounded); a
    reference leaf that is all zeros is compared absolutely.
    """
    diffs = jax.tree_util.tree_map(
        lambda u, v: jnp.max(jnp.abs(u - v)) / jnp.where(jnp.max(jnp.abs(v)) > 0, jnp.max(jnp.abs(v)), 1.0),
        a,
        b,
    )
    return jnp.max(jnp.stack(jax.tree_util.tree_leaves(diffs)))
