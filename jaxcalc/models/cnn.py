"""The article's image classifier as a flax NNX module, crossed into pure JAX once.

Architecture (the article's Keras model, CIFAR-10 sizes)::

    (n, 32, 32, 3) -> Conv(32, 3x3, VALID) + relu -> (n, 30, 30, 32)
                   -> MaxPool(2x2)                  -> (n, 15, 15, 32)
                   -> Flatten                       -> (n, 7200)
                   -> Dense(64) + relu -> Dropout(0.5)
                   -> Dense(10)                     -> (n, 10) logits

Parameters for 32x32x3 input: 896 + 460,864 + 650 = 462,410.

The model returns *logits*, and the loss is softmax cross-entropy on them with integer labels
(:func:`jaxcalc.losses.cross_entropy`, which uses ``logsumexp``). The article compiles Keras'
``loss='categorical_crossentropy'`` on a final ``Dense(10)`` with no softmax and without
``from_logits=True``: Keras then reads the raw scores as probabilities (divides them by their
sum and clips them to ``[1e-7, 1 - 1e-7]`` before the log), which is not the cross-entropy of
any softmax and can be undefined for negative scores. The fix is a softmax layer or
``from_logits=True``; and since CIFAR-10 labels are integers, the matching Keras loss is
``sparse_categorical_crossentropy``. Here the loss takes logits and integer labels by construction.

Flax is used only to build and hold the parameters: :func:`init_cnn` calls ``nnx.split`` once
and returns a pure ``apply(params, x, *, key=None, train=False)`` (``nnx.merge`` inside), so
training is plain JAX: ``jax.value_and_grad`` of ``loss(params, batch, key)`` and optax.
The convolution and pooling go through :mod:`jaxcalc.ops`, which picks the fastest exact
formulation for the device.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcalc import losses, ops


@dataclasses.dataclass(frozen=True)
class CNNSpec:
    """Static shape of the network: input ``(height, width, channels)`` and layer widths."""

    height: int = 32
    width: int = 32
    channels: int = 3
    num_classes: int = 10
    filters: int = 32
    kernel_size: int = 3
    pool: int = 2
    hidden: int = 64
    dropout: float = 0.5

    def __post_init__(self):
        for name in ("height", "width", "channels", "num_classes", "filters", "kernel_size", "pool", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"CNNSpec.{name} must be a positive int, got {v!r}")
        if self.num_classes < 2:
            raise ValueError(f"CNNSpec.num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CNNSpec.dropout must be in [0, 1), got {self.dropout}")
        if self.pooled_height < 1 or self.pooled_width < 1:
            raise ValueError(
                f"input {self.height}x{self.width} is too small for a {self.kernel_size}x{self.kernel_size} "
                f"VALID convolution followed by {self.pool}x{self.pool} pooling"
            )

    @property
    def pooled_height(self) -> int:
        return (self.height - self.kernel_size + 1) // self.pool

    @property
    def pooled_width(self) -> int:
        return (self.width - self.kernel_size + 1) // self.pool

    @property
    def flat_features(self) -> int:
        return self.pooled_height * self.pooled_width * self.filters

    @property
    def param_count(self) -> int:
        """Closed form: conv ``k*k*c*f + f``, dense ``flat*h + h``, output ``h*classes + classes``."""
        k, c, f, h = self.kernel_size, self.channels, self.filters, self.hidden
        return (k * k * c * f + f) + (self.flat_features * h + h) + (h * self.num_classes + self.num_classes)


class CNN(nnx.Module):
    """Conv -> relu -> max-pool -> flatten -> dense -> relu -> dropout -> dense (logits).

    Args:
      spec: the :class:`CNNSpec` (input size, channels, classes, widths).
      rngs: ``nnx.Rngs`` for parameter initialisation. Dropout does not keep an RNG stream:
        its key is passed explicitly to ``__call__``.
    """

    def __init__(self, spec: CNNSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        k = spec.kernel_size
        # Same initialisers as nnx.Conv (LeCun normal kernel, zero bias); HWIO layout.
        self.conv_kernel = nnx.Param(
            nnx.initializers.lecun_normal()(rngs.params(), (k, k, spec.channels, spec.filters), jnp.float32)
        )
        self.conv_bias = nnx.Param(jnp.zeros((spec.filters,), jnp.float32))
        self.dense = nnx.Linear(spec.flat_features, spec.hidden, rngs=rngs)
        self.dropout = nnx.Dropout(spec.dropout)
        self.out = nnx.Linear(spec.hidden, spec.num_classes, rngs=rngs)

    def __call__(self, x, *, key=None, train: bool = False):
        """Logits for a batch of images.

        Args:
          x: ``(n, height, width, channels)`` float images (NHWC), values in ``[0, 1]``.
          key: a ``jax.random.key`` for the dropout mask; required when ``train=True``.
          train: apply dropout (training) or not (evaluation).

        Returns:
          ``(n, num_classes)`` float logits.
        """
        s = self.spec
        expected = (s.height, s.width, s.channels)
        if jnp.ndim(x) != 4 or tuple(jnp.shape(x)[1:]) != expected:
            raise ValueError(
                f"CNN input must have shape (n, {s.height}, {s.width}, {s.channels}) (NHWC), "
                f"got {tuple(jnp.shape(x))}"
            )
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise TypeError(f"CNN input must be floating point (scale uint8 images first), got {jnp.result_type(x)}")
        if train and key is None:
            raise ValueError("train=True needs a dropout key: apply(params, x, key=key, train=True)")
        # conv -> relu -> max-pool as one op: on CPU a chunked im2col matmul whose backward keeps only
        # the argmax per pooled output (jaxcalc.ops); on GPU/TPU lax.conv + reduce_window.
        h = ops.conv2d_relu_max_pool(x, self.conv_kernel[...], self.conv_bias[...], window=s.pool)
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(self.dense(h))
        h = self.dropout(h, deterministic=not train, rngs=key)
        return self.out(h)


def init_cnn(key, spec: CNNSpec = CNNSpec()):
    """Build the module, split it once, return ``(apply, params)``.

    Args:
      key: ``jax.random.key`` for initialisation.
      spec: the network's shape.

    Returns:
      ``apply(params, x, *, key=None, train=False) -> (n, classes) logits``, a pure function
      (``nnx.merge`` of the fixed graph definition with ``params``), and ``params``, an
      ``nnx.State`` pytree of ``nnx.Param`` arrays.
    """
    model = CNN(spec, rngs=nnx.Rngs(params=key))
    graphdef, params = nnx.split(model, nnx.Param)
    return make_apply(graphdef), params


def abstract_params(spec: CNNSpec):
    """``(apply, params)`` with ``params`` as ``jax.ShapeDtypeStruct`` leaves (no initialisation run)."""
    model = nnx.eval_shape(lambda: CNN(spec, rngs=nnx.Rngs(params=0)))
    graphdef, params = nnx.split(model, nnx.Param)
    return make_apply(graphdef), params


def make_apply(graphdef) -> Callable:
    """The pure forward function for a split :class:`CNN` (see :func:`init_cnn`)."""

    def apply(params, x, *, key=None, train: bool = False):
        return nnx.merge(graphdef, params)(x, key=key, train=train)

    return apply


def make_loss(apply: Callable) -> Callable:
    """``loss(params, batch, key, *, train=True) -> (scalar, logits)``: mean softmax cross-entropy.

    ``batch`` is ``{"x": (n, h, w, c) float, "y": (n,) int}``; ``key`` drives dropout (``None``
    with ``train=False``). The loss is :func:`jaxcalc.losses.cross_entropy` on the logits
    (logsumexp of the logits minus the true logit); the ``(n, classes)`` logits come back as
    auxiliary output for metrics, so use ``jax.value_and_grad(loss, has_aux=True)``.
    """

    def loss(params, batch, key, *, train: bool = True):
        logits = apply(params, batch["x"], key=key, train=train)
        return losses.cross_entropy(logits, batch["y"]), logits

    return loss


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(math.prod(jnp.shape(p)) for p in jax.tree.leaves(params)))
