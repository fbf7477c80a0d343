"""Per-example gradients, their norms, DP-SGD style clipping, and the gradient noise scale.

Two paths compute the same things:

* the general one, for any ``loss_fn(params, batch) -> scalar``: every example's gradient
  via ``jax.vmap(jax.grad(single), in_axes=(None, 0))``. It materialises a
  ``(batch, *param.shape)`` array per parameter, i.e. batch × params memory;
* the "ghost norm" path for MLPs (``params = [(W, b), ...]`` from :mod:`jaxcalc.models.mlp`):
  a dense layer's per-example weight gradient is the outer product ``a_i δ_iᵀ`` of the
  layer's input ``a_i`` and the loss gradient with respect to its pre-activation ``δ_i``, so
  ``‖∂ℓ_i/∂W‖² = ‖a_i‖²·‖δ_i‖²`` and ``‖∂ℓ_i/∂b‖² = ‖δ_i‖²`` without forming the outer
  product (Goodfellow, 2015, "Efficient per-example gradient computations"; Li et al.,
  2022, "ghost clipping"). The clipped sum ``Σ_i s_i a_i δ_iᵀ`` is then one matmul
  ``Aᵀ (s ⊙ Δ)`` per layer.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc.models.mlp import ACTIVATIONS, check_mlp_params

__all__ = [
    "clip_and_aggregate",
    "clipped_mean_grad",
    "gradient_noise_scale",
    "mlp_clipped_mean_grad",
    "mlp_ghost_norms",
    "per_example_grad_norms",
    "per_example_grads",
    "tree_norms",
]


# --------------------------------------------------------------------------- checks


def _batch_size(batch, what: str = "batch") -> int:
    """Common leading length of all leaves of ``batch``; ValueError naming leaves otherwise."""
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError(f"{what} has no array leaves")
    lengths = {}
    for path, leaf in leaves:
        shape = np.shape(leaf)
        name = jax.tree_util.keystr(path) or "<root>"
        if len(shape) == 0:
            raise ValueError(f"{what} leaf {name} is a scalar; every leaf needs a leading example axis")
        lengths[name] = shape[0]
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise ValueError(f"{what} leaves have different leading (example) lengths: {detail}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{what} is empty (0 examples)")
    return int(n)


def _check_clip(clip_norm, noise_multiplier, key) -> None:
    if not isinstance(clip_norm, jax.core.Tracer) and not float(clip_norm) > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    if not isinstance(noise_multiplier, jax.core.Tracer) and not float(noise_multiplier) >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if key is None and (isinstance(noise_multiplier, jax.core.Tracer) or float(noise_multiplier) > 0):
        raise ValueError("noise_multiplier > 0 needs a key: clipped_mean_grad(..., key=jax.random.key(seed))")


# --------------------------------------------------------------------------- general (vmap) path


def per_example_grads(loss_fn: Callable, params, batch):
    """Gradient of the loss of each example separately.

    ``loss_fn(params, batch)`` is the ordinary batch loss; example ``i``'s loss is taken to be
    ``loss_fn(params, batch_i)`` on the one-example batch ``batch_i`` (each leaf sliced to a
    leading axis of length 1), which is the example's own loss whenever the batch loss is a
    mean or sum of per-example losses. The gradients are computed with
    ``jax.vmap(jax.grad(single), in_axes=(None, 0))``.

    Args:
      loss_fn: ``(params, batch) -> scalar``.
      params: a pytree of arrays.
      batch: a pytree of arrays sharing a leading example axis of length ``n``.

    Returns:
      A pytree like ``params`` whose leaves have shape ``(n, *leaf.shape)``: leaf ``[i]`` is
      ``∂ loss_fn(params, batch_i) / ∂ params``.
    """
    _batch_size(batch)

    def single(p, example):
        return loss_fn(p, jax.tree.map(lambda x: x[None], example))

    return jax.vmap(jax.grad(single), in_axes=(None, 0))(params, batch)


def tree_norms(per_ex_grads):
    """Global L2 norm of each example's gradient over all leaves.

    Args:
      per_ex_grads: a pytree whose leaves have shape ``(n, ...)``.

    Returns:
      ``(n,)``: ``sqrt(Σ_leaves Σ_entries g_i²)``.
    """
    leaves = jax.tree.leaves(per_ex_grads)
    sq = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in leaves)
    return jnp.sqrt(sq)


def per_example_grad_norms(loss_fn: Callable, params, batch):
    """``(n,)`` global L2 norm of each example's gradient (see :func:`per_example_grads`)."""
    return tree_norms(per_example_grads(loss_fn, params, batch))


def _clip_factors(norms, clip_norm):
    """``s_i = min(1, C / ‖g_i‖)`` written as ``1 / max(‖g_i‖ / C, 1)`` (no division by 0)."""
    return 1.0 / jnp.maximum(norms / clip_norm, 1.0)


def _add_noise(tree, key, std):
    """``tree + std·ξ``, ``ξ ~ N(0, I)`` over all leaves; a no-op without a key.

    One normal draw of the total size, split across the leaves in leaf order, so two paths
    that produce the same tree structure get the same noise from the same key.
    """
    if key is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    sizes = [g.size for g in leaves]
    xi = jax.random.normal(key, (sum(sizes),), leaves[0].dtype)
    offsets = np.cumsum([0, *sizes])
    noisy = [g + std * jnp.reshape(xi[o : o + g.size], g.shape).astype(g.dtype)
             for g, o in zip(leaves, offsets[:-1], strict=True)]
    return jax.tree.unflatten(treedef, noisy)


def clip_and_aggregate(per_ex_grads, *, clip_norm, noise_multiplier=0.0, key=None):
    """DP-SGD aggregation of given per-example gradients (Abadi et al., 2016).

    .. math::
        \\tilde g = \\frac{1}{n}\\Big(\\sum_i g_i \\min(1, C/\\|g_i\\|) + σ C\\, ξ\\Big),\\quad ξ \\sim N(0, I)

    Args:
      per_ex_grads: pytree with leaves ``(n, ...)``.
      clip_norm: ``C > 0``.
      noise_multiplier: ``σ >= 0``; the noise added to the mean has std ``σ C / n``.
      key: a ``jax.random.key``, required when ``σ > 0``.

    Returns:
      ``(grad, aux)``: ``grad`` like one example's gradient; ``aux`` a dict with ``norms``
      ``(n,)`` (before clipping), ``clip_factors`` ``(n,)`` and ``clipped_fraction`` ``()``.
    """
    _check_clip(clip_norm, noise_multiplier, key)
    norms = tree_norms(per_ex_grads)
    n = norms.shape[0]
    s = _clip_factors(norms, clip_norm)
    grad = jax.tree.map(lambda g: jnp.tensordot(s.astype(g.dtype), g, axes=1) / n, per_ex_grads)
    grad = _add_noise(grad, key, noise_multiplier * clip_norm / n)
    aux = {"norms": norms, "clip_factors": s, "clipped_fraction": jnp.mean(s < 1.0)}
    return grad, aux


def clipped_mean_grad(loss_fn: Callable, params, batch, *, clip_norm, noise_multiplier=0.0, key=None):
    """Clipped (optionally noised) mean of per-example gradients, as in DP-SGD.

    Each example's gradient is scaled to norm at most ``C`` (``g_i · min(1, C/‖g_i‖)``), the
    scaled gradients are averaged over the ``n`` examples, and with ``noise_multiplier σ > 0``
    Gaussian noise of std ``σ·C/n`` is added to each coordinate of the mean. With
    ``C = ∞`` this is the ordinary mean gradient.

    Args:
      loss_fn: ``(params, batch) -> scalar``, a mean (or sum) of per-example losses.
      params: pytree.
      batch: pytree with a shared leading example axis ``n``.
      clip_norm: ``C > 0``.
      noise_multiplier: ``σ >= 0``.
      key: ``jax.random.key``, needed when ``σ > 0``.

    Returns:
      ``(grad, aux)``, see :func:`clip_and_aggregate`. Materialises batch × params memory;
      for MLPs :func:`mlp_clipped_mean_grad` does not.
    """
    _check_clip(clip_norm, noise_multiplier, key)
    return clip_and_aggregate(
        per_example_grads(loss_fn, params, batch), clip_norm=clip_norm, noise_multiplier=noise_multiplier, key=key
    )


def gradient_noise_scale(per_ex_grads, *, return_parts: bool = False):
    """The "simple" gradient noise scale ``B_simple = tr(Σ) / |G|²`` (McCandlish et al., 2018).

    ``G`` is the true (expected) gradient and ``Σ`` the covariance of one example's gradient;
    ``B_simple`` estimates the batch size beyond which larger batches stop paying off. From
    ``n >= 2`` per-example gradients ``g_i`` with mean ``ḡ``, the unbiased estimators are

    .. math::
        \\widehat{\\mathrm{tr}\\,Σ} = \\frac{1}{n-1}\\sum_i \\|g_i − ḡ\\|^2, \\qquad
        \\widehat{|G|^2} = \\|ḡ\\|^2 − \\widehat{\\mathrm{tr}\\,Σ}/n

    (``E‖ḡ‖² = |G|² + tr(Σ)/n``). Their ratio is consistent but not unbiased, and when noise
    dominates the ``|G|²`` estimate can be <= 0: the returned ``B_simple`` is then negative or
    infinite, meaning "larger than this batch can resolve".

    Args:
      per_ex_grads: pytree with leaves ``(n, ...)``, ``n >= 2``.
      return_parts: also return the two estimates.

    Returns:
      ``()`` scalar ``B_simple``, or with ``return_parts`` a dict with ``b_simple``,
      ``trace_sigma`` and ``grad_sq_norm``.
    """
    leaves = [jnp.reshape(g, (g.shape[0], -1)) for g in jax.tree.leaves(per_ex_grads)]
    if not leaves:
        raise ValueError("per_ex_grads has no leaves")
    n = leaves[0].shape[0]
    if any(g.shape[0] != n for g in leaves):
        raise ValueError(f"per_ex_grads leaves have different leading lengths: {[g.shape[0] for g in leaves]}")
    if n < 2:
        raise ValueError(f"gradient_noise_scale needs at least 2 per-example gradients, got {n}")
    means = [jnp.mean(g, axis=0) for g in leaves]
    trace_sigma = sum(jnp.sum((g - m[None, :]) ** 2) for g, m in zip(leaves, means, strict=True)) / (n - 1)
    grad_sq = sum(jnp.sum(m**2) for m in means) - trace_sigma / n
    b_simple = trace_sigma / grad_sq
    if return_parts:
        return {"b_simple": b_simple, "trace_sigma": trace_sigma, "grad_sq_norm": grad_sq}
    return b_simple


# --------------------------------------------------------------------------- ghost-norm path (MLPs)


def _per_example_values(per_example_loss, outputs, targets):
    """``(n,)`` per-example losses: the loss's non-leading axes are averaged."""
    values = per_example_loss(outputs, targets)
    if jnp.ndim(values) == 0 or values.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"per_example_loss must return one value per example (leading axis {outputs.shape[0]}), "
            f"got shape {jnp.shape(values)}"
        )
    return jnp.mean(jnp.reshape(values, (values.shape[0], -1)), axis=1)


def _mlp_activations_and_deltas(params, x, y, per_example_loss, activation):
    """Layer inputs ``a_{l-1}`` ``(n, m_l)`` and pre-activation gradients ``δ_l`` ``(n, k_l)``.

    ``δ_l[i] = ∂ℓ_i/∂z_l[i]`` with ``z_l = a_{l-1} W_l + b_l``: the gradient of the *sum* of
    per-example losses with respect to zero perturbations added to each ``z_l``. Example
    ``i``'s loss depends only on row ``i``, so row ``i`` is its own gradient. No weight
    gradient is formed.
    """
    act = ACTIVATIONS[activation]
    n = x.shape[0]

    def summed_loss(perturbations):
        inputs = []
        h = x
        for layer, (w, b) in enumerate(params):
            inputs.append(h)
            z = h @ w + b[None, :] + perturbations[layer]
            h = act(z) if layer < len(params) - 1 else z
        return jnp.sum(_per_example_values(per_example_loss, h, y)), inputs

    zeros = [jnp.zeros((n, w.shape[1]), x.dtype) for w, _ in params]
    deltas, inputs = jax.grad(summed_loss, has_aux=True)(zeros)
    return inputs, deltas


def _mlp_batch(batch):
    if not (isinstance(batch, dict) and "x" in batch and "y" in batch):
        raise TypeError("batch must be a dict with 'x' (n, d_in) and 'y' (targets with leading axis n)")
    _batch_size(batch)
    if np.ndim(batch["x"]) != 2:
        raise ValueError(f"batch['x'] must have shape (n, d_in), got {np.shape(batch['x'])}")
    return jnp.asarray(batch["x"]), batch["y"]


def mlp_ghost_norms(params, batch, *, per_example_loss: Callable, activation: str = "relu"):
    """Per-example gradient norms of an MLP without materialising per-example gradients.

    .. math::  \\|g_i\\|^2 = \\sum_l \\|a_{l-1,i}\\|^2\\,\\|δ_{l,i}\\|^2 + \\|δ_{l,i}\\|^2

    Requirement: the batch loss must be the **mean of per-example losses**
    ``ℓ_i = per_example_loss(outputs, targets)[i]`` (averaged over any trailing axes, as
    :func:`jaxcalc.losses.mse` does). Then example ``i``'s gradient is ``∂ℓ_i/∂θ``, the same
    as :func:`per_example_grads` gives for ``loss_fn = mean(per_example_loss(mlp_apply(...)))``.
    A loss that couples examples (batch norm, a sum normalised differently, contrastive
    losses) breaks the identity.

    Args:
      params: ``[(W1, b1), ..., (WL, bL)]``, ``Wl: (m_l, k_l)``, as ``init_mlp`` returns.
      batch: ``{"x": (n, d_in), "y": targets with leading axis n}``.
      per_example_loss: ``(outputs (n, d_out), targets) -> (n, ...)``, e.g.
        ``losses.softmax_cross_entropy_with_integer_labels`` or ``losses.squared_error``.
      activation: hidden activation name, as in ``mlp_apply``.

    Returns:
      ``(n,)`` global L2 norms over all parameters.
    """
    check_mlp_params(params)
    x, y = _mlp_batch(batch)
    inputs, deltas = _mlp_activations_and_deltas(params, x, y, per_example_loss, activation)
    return _ghost_norms(inputs, deltas)


def _ghost_norms(inputs, deltas):
    sq = 0.0
    for a, d in zip(inputs, deltas, strict=True):
        d_sq = jnp.sum(d * d, axis=1)
        sq = sq + jnp.sum(a * a, axis=1) * d_sq + d_sq
    return jnp.sqrt(sq)


def mlp_clipped_mean_grad(
    params,
    batch,
    *,
    per_example_loss: Callable,
    clip_norm,
    noise_multiplier=0.0,
    key=None,
    activation: str = "relu",
):
    """DP-SGD clipped mean gradient of an MLP via ghost norms: batch-gradient cost, no n × params memory.

    Same result as ``clipped_mean_grad(loss_fn, params, batch, ...)`` with
    ``loss_fn(p, b) = mean(per_example_loss(mlp_apply(p, b["x"]), b["y"]))`` (same key, same
    noise), computed as: one forward pass keeping each layer's input ``A_{l-1}``, one
    backward pass to the pre-activation gradients ``Δ_l``, norms from
    :func:`mlp_ghost_norms`, factors ``s_i = min(1, C/‖g_i‖)``, then per layer

    .. math::  \\tilde g_{W_l} = A_{l-1}^T (s ⊙ Δ_l) / n, \\qquad \\tilde g_{b_l} = (s ⊙ Δ_l)^T 1 / n

    plus optional Gaussian noise of std ``σ C / n``. The batch loss must be the mean of
    per-example losses (see :func:`mlp_ghost_norms`).

    Args:
      params, batch, per_example_loss, activation: as :func:`mlp_ghost_norms`.
      clip_norm: ``C > 0``.
      noise_multiplier: ``σ >= 0``.
      key: ``jax.random.key``, required when ``σ > 0``.

    Returns:
      ``(grad, aux)``: ``grad`` a list of ``(gW, gb)`` like ``params``; ``aux`` with ``norms``
      ``(n,)``, ``clip_factors`` ``(n,)`` and ``clipped_fraction``.
    """
    check_mlp_params(params)
    _check_clip(clip_norm, noise_multiplier, key)
    x, y = _mlp_batch(batch)
    n = x.shape[0]
    inputs, deltas = _mlp_activations_and_deltas(params, x, y, per_example_loss, activation)
    norms = _ghost_norms(inputs, deltas)
    s = _clip_factors(norms, clip_norm)
    grad = []
    for a, d in zip(inputs, deltas, strict=True):
        sd = d * s[:, None].astype(d.dtype)
        grad.append((a.T @ sd / n, jnp.sum(sd, axis=0) / n))
    grad = _add_noise(grad, key, noise_multiplier * clip_norm / n)
    aux = {"norms": norms, "clip_factors": s, "clipped_fraction": jnp.mean(s < 1.0)}
    return grad, aux
