"""Multi-layer perceptron: plain functions over a list of ``(W, b)`` pairs, and the same
network as a flax NNX module that crosses into pure JAX with ``nnx.split`` / ``nnx.merge``.

Pure side::

    params = init_mlp(key, (2, 10, 10, 1), init="glorot_uniform")   # [(W, b), ...]
    out = mlp_apply(params, x)                                       # (n, 1)
    loss = mlp_loss(params, {"x": x, "y": y})                        # scalar, jax.grad-able

NNX side (one boundary crossing, then plain pytrees)::

    model = MLP((2, 10, 10, 1), init="glorot_uniform", rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)          # state: a pytree of nnx.Param arrays
    loss = nnx_mlp_loss(state, graphdef, batch) # pure in ``state``: jax.grad, optax, lax.scan
    model = nnx.merge(graphdef, state)          # back to a module

``mlp_to_params`` / ``mlp_from_params`` convert between the two with the same numbers, so
both sides give the same outputs and losses.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcalc import losses

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}

INITS = ("he", "glorot", "glorot_uniform", "normal")


def _weight_scale(fan_in, fan_out, init):
    """``(distribution, scale)`` of one layer's weights: ``scale · N(0, 1)`` or ``scale · U(−1, 1)``."""
    if init == "he":  # He/Kaiming normal: Var = 2 / fan_in, for ReLU
        return "normal", math.sqrt(2.0 / fan_in)
    if init == "glorot":  # Glorot normal: Var = 2 / (fan_in + fan_out)
        return "normal", math.sqrt(2.0 / (fan_in + fan_out))
    if init == "glorot_uniform":  # Keras' default: U(-l, l), l = sqrt(6 / (fan_in + fan_out))
        return "uniform", math.sqrt(6.0 / (fan_in + fan_out))
    if init == "normal":  # N(0, 1): the naive init, for showing vanishing gradients
        return "normal", 1.0
    raise ValueError(f"unknown init {init!r}; choose one of {INITS}")


def _standard_draw(key, kind, shape, dtype):
    if kind == "normal":
        return jax.random.normal(key, shape, dtype)
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


def _init_weight(key, fan_in, fan_out, init, dtype):
    kind, scale = _weight_scale(fan_in, fan_out, init)
    return _standard_draw(key, kind, (fan_in, fan_out), dtype) * scale


def init_mlp(key, sizes: Sequence[int], *, init: str = "he", dtype=jnp.float32):
    """Parameters ``[(W1, b1), ..., (WL, bL)]`` with ``Wl: (sizes[l-1], sizes[l])``, zero biases.

    All weights come from one draw of ``sum(fan_in·fan_out)`` standard normal (or uniform)
    numbers, cut into layers and scaled per layer: one random kernel to compile instead of one
    per layer shape (compiling JAX's threefry PRNG is the slow part of a small net's init).

    Args:
      key: a ``jax.random.key``.
      sizes: layer widths including input and output, e.g. ``(784, 256, 10)``.
      init: ``"he"`` (ReLU: ``N(0, 2/fan_in)``), ``"glorot"`` (``N(0, 2/(fan_in+fan_out))``),
        ``"glorot_uniform"`` (Keras' default: ``U(−l, l)``, ``l = sqrt(6/(fan_in+fan_out))``) or
        ``"normal"`` (``N(0, 1)``, the naive init).
      dtype: float dtype of the parameters.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least input and output widths >= 1, got {sizes}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    shapes = list(itertools.pairwise(sizes))
    kind, _ = _weight_scale(*shapes[0], init)
    flat = _standard_draw(key, kind, (sum(m * n for m, n in shapes),), dtype)
    params, start = [], 0
    for m, n in shapes:
        _, scale = _weight_scale(m, n, init)
        w = flat[start:start + m * n].reshape(m, n) * jnp.asarray(scale, dtype)
        params.append((w, jnp.zeros((n,), dtype)))
        start += m * n
    return params


def check_mlp_params(params) -> None:
    """Validate ``[(W1, b1), ...]``: ``TypeError`` unless a non-empty list/tuple, ``ValueError``
    naming the layer when an entry is not a ``(W, b)`` pair with ``W (d_in, d_out)``, ``b (d_out,)``."""
    if not isinstance(params, (list, tuple)) or not params:
        raise TypeError("params must be a non-empty list of (W, b) pairs, as jaxcalc.models.mlp.init_mlp returns")
    for i, layer in enumerate(params):
        if not (isinstance(layer, (list, tuple)) and len(layer) == 2):
            raise ValueError(f"params[{i}] must be a (W, b) pair, got {type(layer).__name__}")
        w, b = layer
        if jnp.ndim(w) != 2 or jnp.ndim(b) != 1 or jnp.shape(b)[0] != jnp.shape(w)[1]:
            raise ValueError(f"params[{i}]: need W (d_in, d_out) and b (d_out,), got W {tuple(jnp.shape(w))}, "
                             f"b {tuple(jnp.shape(b))}")


def mlp_apply(params, x, *, activation: str = "relu"):
    """Forward pass: hidden layers ``act(h W + b)``, a linear last layer (logits or regression).

    Args:
      params: list of ``(W, b)``.
      x: ``(n, d_in)`` (or ``(d_in,)`` for one example).

    Returns:
      ``(n, d_out)`` (or ``(d_out,)``).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    h = x
    for w, b in params[:-1]:
        h = act(_affine(h, w, b))
    w, b = params[-1]
    return _affine(h, w, b)


def _affine(h, w, b):
    """``h @ w + b`` with the bias broadcast written out (rank promotion is an error in tests)."""
    return h @ w + jnp.reshape(b, (1,) * (jnp.ndim(h) - 1) + jnp.shape(b))


LOSS_NAMES = ("mse", "cross_entropy")


def mlp_loss(params, batch, *, loss: str = "mse", activation: str = "relu"):
    """``loss(params, batch) -> scalar`` for training: :func:`jaxcalc.losses.mse` (regression head)
    or :func:`jaxcalc.losses.cross_entropy` (classification head, integer labels).

    Args:
      params: list of ``(W, b)``.
      batch: ``{"x": (n, d_in), "y": ...}`` with ``y`` of shape ``(n, d_out)`` float for
        ``"mse"`` (a target vector ``(n,)`` must be reshaped explicitly, ``y[:, None]``) or
        ``(n,)`` integer labels for ``"cross_entropy"``.
    """
    out = mlp_apply(params, batch["x"], activation=activation)
    if loss == "mse":
        return losses.mse(out, batch["y"])
    if loss == "cross_entropy":
        return losses.cross_entropy(out, batch["y"])
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSS_NAMES}")


def param_count(params) -> int:
    """Number of scalars in a parameter pytree (pure params or an ``nnx.State``)."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


# --------------------------------------------------------------------------- flax NNX twin
class MLP(nnx.Module):
    """The MLP of :func:`mlp_apply` as a flax NNX module.

    Hidden layers ``act(h W + b)``, a linear last layer; the weights are
    ``init_mlp(rngs.params(), sizes, init=init)`` (one PRNG draw), held by ``nnx.Linear`` layers.
    :func:`mlp_from_params` builds one around given weights instead.

    Args:
      sizes: layer widths including input and output, e.g. ``(64, 128, 10)``.
      activation: hidden activation, a key of ``ACTIVATIONS``.
      init: weight init, one of ``INITS``; biases start at zero.
      rngs: ``nnx.Rngs`` that supplies the ``params`` stream.
    """

    def __init__(self, sizes: Sequence[int], *, activation: str = "relu", init: str = "he",
                 dtype=jnp.float32, rngs: nnx.Rngs):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least input and output widths >= 1, got {sizes}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")

        params = init_mlp(rngs.params(), sizes, init=init, dtype=dtype)

        def given(array):  # an nnx initializer that returns ``array``
            return lambda key, shape, dtype=dtype: array

        self.activation = activation
        self.layers = nnx.List([
            nnx.Linear(w.shape[0], w.shape[1], kernel_init=given(w), bias_init=given(b), param_dtype=dtype,
                       rngs=rngs)
            for w, b in params
        ])

    def __call__(self, x):
        """``x``: ``(n, d_in)`` -> ``(n, d_out)``."""
        act = ACTIVATIONS[self.activation]
        h = x
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.layers[-1](h)


def mlp_to_params(model: MLP):
    """The module's weights as pure params ``[(W, b), ...]`` (the same arrays)."""
    return [(layer.kernel[...], layer.bias[...]) for layer in model.layers]


def mlp_from_params(params, *, activation: str = "relu") -> MLP:
    """An :class:`MLP` holding exactly ``params`` (a list of ``(W, b)``).

    The layers' initializers return the given arrays, so no random weights are drawn (and no
    PRNG kernel compiled) only to be overwritten.
    """
    sizes = [params[0][0].shape[0]] + [w.shape[1] for w, _ in params]
    dtype = jnp.result_type(params[0][0])
    model = nnx.eval_shape(lambda: MLP(sizes, activation=activation, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    for i, (w, b) in enumerate(params):
        layer_state = state["layers"][i]
        layer_state["kernel"].set_value(jnp.asarray(w, dtype))
        layer_state["bias"].set_value(jnp.asarray(b, dtype))
    return nnx.merge(graphdef, state)


def nnx_mlp_apply(state, graphdef, x):
    """Pure forward pass of a split module: ``nnx.merge(graphdef, state)(x)``."""
    return nnx.merge(graphdef, state)(x)


def nnx_mlp_loss(state, graphdef, batch, *, loss: str = "mse"):
    """``loss(state, batch)`` of a split :class:`MLP`, pure in ``state`` (an ``nnx.State``).

    Same heads and shape rules as :func:`mlp_loss`; differentiate with ``jax.grad`` and
    update with optax like any pytree, then ``nnx.merge(graphdef, state)`` rebuilds the module.
    """
    out = nnx_mlp_apply(state, graphdef, batch["x"])
    if loss == "mse":
        return losses.mse(out, batch["y"])
    if loss == "cross_entropy":
        return losses.cross_entropy(out, batch["y"])
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSS_NAMES}")
